#ifndef CPLX_H
#define CPLX_H

/* Complex numbers without <complex.h>, so the library builds with any C compiler. */
typedef struct { double re, im; } cplx;

cplx cplx_add(cplx a, cplx b);
cplx cplx_mul(cplx a, cplx b);
double cplx_abs(cplx a);
#endif
