#ifndef HEAP_H
#define HEAP_H
#include <stddef.h>

/* A binary min-heap of ints over caller-provided storage. */
typedef struct {
    int *items;
    size_t cap, len;
} heap;

void heap_init(heap *h, int *storage, size_t cap);
int heap_push(heap *h, int x); /* 0 when full */
int heap_pop(heap *h, int *x); /* 0 when empty; else the smallest item */
#endif
