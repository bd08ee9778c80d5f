#include "heap.h"

void heap_init(heap *h, int *storage, size_t cap) { *h = (heap){storage, cap, 0}; }

static void swap(int *a, int *b) {
    int t = *a;
    *a = *b;
    *b = t;
}

int heap_push(heap *h, int x) {
    if (h->len == h->cap) return 0;
    size_t i = h->len++;
    h->items[i] = x;
    while (i && h->items[(i - 1) / 2] > h->items[i]) {
        swap(&h->items[(i - 1) / 2], &h->items[i]);
        i = (i - 1) / 2;
    }
    return 1;
}

int heap_pop(heap *h, int *x) {
    if (!h->len) return 0;
    *x = h->items[0];
    h->items[0] = h->items[--h->len];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->len && h->items[l] < h->items[m]) m = l;
        if (r < h->len && h->items[r] < h->items[m]) m = r;
        if (m == i) break;
        swap(&h->items[i], &h->items[m]);
        i = m;
    }
    return 1;
}
