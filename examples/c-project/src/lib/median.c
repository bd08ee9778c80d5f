#include <stdlib.h>
#include <string.h>
#include "stats.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double stats_median(const double *xs, size_t n) {
    if (!n) return 0.0;
    double *copy = malloc(n * sizeof *copy);
    if (!copy) return 0.0;
    memcpy(copy, xs, n * sizeof *copy);
    qsort(copy, n, sizeof *copy, cmp_double);
    double m = n % 2 ? copy[n / 2] : (copy[n / 2 - 1] + copy[n / 2]) / 2;
    free(copy);
    return m;
}
