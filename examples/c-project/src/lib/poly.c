#include <math.h>
#include "poly.h"

double poly_eval(const double *c, size_t n, double x) {
    double y = 0;
    while (n--) y = y * x + c[n]; /* Horner */
    return y;
}

size_t poly_derivative(const double *c, size_t n, double *d) {
    for (size_t i = 1; i < n; i++) d[i - 1] = c[i] * (double)i;
    return n ? n - 1 : 0;
}

double poly_newton(const double *c, size_t n, double x0) {
    double d[32];
    if (n < 2 || n > 33) return NAN;
    size_t m = poly_derivative(c, n, d);
    double x = x0;
    for (int i = 0; i < 100; i++) {
        double fx = poly_eval(c, n, x), dfx = poly_eval(d, m, x);
        if (fabs(fx) < 1e-12) return x;
        if (dfx == 0) break;
        x -= fx / dfx;
    }
    return NAN;
}
