#include "rational.h"

long gcd_long(long a, long b) {
    if (a < 0) a = -a;
    if (b < 0) b = -b;
    while (b) {
        long t = a % b;
        a = b;
        b = t;
    }
    return a;
}

rational rat_make(long num, long den) {
    if (den < 0) { num = -num; den = -den; }
    long g = gcd_long(num, den);
    return g ? (rational){num / g, den / g} : (rational){num, den};
}

rational rat_add(rational x, rational y) { return rat_make(x.num * y.den + y.num * x.den, x.den * y.den); }
rational rat_mul(rational x, rational y) { return rat_make(x.num * y.num, x.den * y.den); }
