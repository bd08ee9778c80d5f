#ifndef SEARCH_H
#define SEARCH_H
#include <stddef.h>

/* On an ascending array: the first index whose value is >= x (n if none). */
size_t lower_bound_int(const int *xs, size_t n, int x);
/* The index of x, or -1. */
long bsearch_int(const int *xs, size_t n, int x);
#endif
