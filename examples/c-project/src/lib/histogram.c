#include <string.h>
#include "histogram.h"

void histogram(const double *xs, size_t n, double lo, double hi, size_t *bins, size_t nbins) {
    memset(bins, 0, nbins * sizeof *bins);
    for (size_t i = 0; i < n; i++) {
        double t = (xs[i] - lo) / (hi - lo) * (double)nbins;
        size_t b = t < 0 ? 0 : t >= (double)nbins ? nbins - 1 : (size_t)t;
        bins[b]++;
    }
}
