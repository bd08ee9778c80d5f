#include "ring.h"

void ring_init(ring *r, int *storage, size_t cap) { *r = (ring){storage, cap, 0, 0}; }

int ring_push(ring *r, int x) {
    if (r->len == r->cap) return 0;
    r->buf[(r->head + r->len++) % r->cap] = x;
    return 1;
}

int ring_pop(ring *r, int *x) {
    if (!r->len) return 0;
    *x = r->buf[r->head];
    r->head = (r->head + 1) % r->cap;
    r->len--;
    return 1;
}
