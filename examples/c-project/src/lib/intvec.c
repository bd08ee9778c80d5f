#include <stdlib.h>
#include "intvec.h"

int iv_push(intvec *v, int x) {
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 8;
        int *p = realloc(v->items, cap * sizeof *p);
        if (!p) return -1;
        v->items = p;
        v->cap = cap;
    }
    v->items[v->len++] = x;
    return 0;
}

int iv_sum(const intvec *v) {
    int s = 0;
    for (size_t i = 0; i < v->len; i++) s += v->items[i];
    return s;
}

void iv_free(intvec *v) {
    free(v->items);
    v->items = NULL;
    v->len = v->cap = 0;
}
