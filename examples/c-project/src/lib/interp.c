#include "interp.h"

double lerp(double a, double b, double t) { return a + (b - a) * t; }

double interp_table(const double *xs, const double *ys, size_t n, double x) {
    if (x <= xs[0]) return ys[0];
    if (x >= xs[n - 1]) return ys[n - 1];
    size_t i = 1;
    while (xs[i] < x) i++;
    return lerp(ys[i - 1], ys[i], (x - xs[i - 1]) / (xs[i] - xs[i - 1]));
}
