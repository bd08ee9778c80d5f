#include <string.h>
#include "roman.h"

static const int VALUES[] = {1000, 900, 500, 400, 100, 90, 50, 40, 10, 9, 5, 4, 1};
static const char *const SYMBOLS[] = {"M", "CM", "D", "CD", "C", "XC", "L", "XL", "X", "IX", "V", "IV", "I"};

int to_roman(int n, char *out) {
    if (n < 1 || n > 3999) return 0;
    out[0] = '\0';
    for (int i = 0; n; i++)
        while (n >= VALUES[i]) {
            strcat(out, SYMBOLS[i]);
            n -= VALUES[i];
        }
    return 1;
}

static int digit(char c) {
    switch (c) {
    case 'I': return 1;
    case 'V': return 5;
    case 'X': return 10;
    case 'L': return 50;
    case 'C': return 100;
    case 'D': return 500;
    case 'M': return 1000;
    default: return 0;
    }
}

int from_roman(const char *s) {
    int total = 0;
    for (; *s; s++) {
        int v = digit(s[0]);
        if (!v) return 0;
        total += v < digit(s[1]) ? -v : v; /* IV: a smaller digit before a larger one subtracts */
    }
    return total;
}
