#ifndef SORT_H
#define SORT_H
#include <stddef.h>

/* Stable merge sort of ints, ascending. Returns -1 if it could not allocate scratch space. */
int sort_ints(int *xs, size_t n);
int is_sorted_ints(const int *xs, size_t n);
#endif
