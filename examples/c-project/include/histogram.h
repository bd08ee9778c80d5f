#ifndef HISTOGRAM_H
#define HISTOGRAM_H
#include <stddef.h>

/* Counts xs into nbins equal bins over [lo, hi); values outside are clamped to the end bins. */
void histogram(const double *xs, size_t n, double lo, double hi, size_t *bins, size_t nbins);
#endif
