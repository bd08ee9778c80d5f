#ifndef INTERP_H
#define INTERP_H
#include <stddef.h>

double lerp(double a, double b, double t);
/* Piecewise-linear interpolation in a table with ascending xs; clamps outside [xs[0], xs[n-1]]. */
double interp_table(const double *xs, const double *ys, size_t n, double x);
#endif
