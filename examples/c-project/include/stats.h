#ifndef STATS_H
#define STATS_H
#include <stddef.h>

double stats_mean(const double *xs, size_t n);
double stats_var(const double *xs, size_t n);
/* Sorts a copy; returns 0 for n == 0 or if it could not allocate. */
double stats_median(const double *xs, size_t n);
#endif
