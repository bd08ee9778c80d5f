#ifndef POLY_H
#define POLY_H
#include <stddef.h>

/* Polynomials as coefficient arrays, constant term first: c[0] + c[1] x + ... */
double poly_eval(const double *c, size_t n, double x);
/* Writes the n - 1 coefficients of the derivative into d; returns n - 1 (0 for a constant). */
size_t poly_derivative(const double *c, size_t n, double *d);
/* A root by Newton's method from x0, or NAN if it does not converge. */
double poly_newton(const double *c, size_t n, double x0);
#endif
