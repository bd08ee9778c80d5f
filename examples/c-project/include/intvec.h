#ifndef INTVEC_H
#define INTVEC_H
#include <stddef.h>

/* A growable array of ints. Zero-initialise; iv_free when done. */
typedef struct {
    int *items;
    size_t len, cap;
} intvec;

int iv_push(intvec *v, int x);
int iv_sum(const intvec *v);
void iv_free(intvec *v);
#endif
