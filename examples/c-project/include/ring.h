#ifndef RING_H
#define RING_H
#include <stddef.h>

/* A bounded FIFO of ints over caller-provided storage. */
typedef struct {
    int *buf;
    size_t cap, head, len;
} ring;

void ring_init(ring *r, int *storage, size_t cap);
int ring_push(ring *r, int x); /* 0 when full */
int ring_pop(ring *r, int *x); /* 0 when empty */
#endif
