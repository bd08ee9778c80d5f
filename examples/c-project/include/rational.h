#ifndef RATIONAL_H
#define RATIONAL_H

/* Fractions in lowest terms with a positive denominator. */
typedef struct { long num, den; } rational;

long gcd_long(long a, long b);
rational rat_make(long num, long den);
rational rat_add(rational x, rational y);
rational rat_mul(rational x, rational y);
#endif
