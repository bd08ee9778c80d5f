#include <math.h>
#include "cplx.h"

cplx cplx_add(cplx a, cplx b) { return (cplx){a.re + b.re, a.im + b.im}; }
cplx cplx_mul(cplx a, cplx b) { return (cplx){a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re}; }
double cplx_abs(cplx a) { return hypot(a.re, a.im); }
