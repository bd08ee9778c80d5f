#include "fib.h"

uint64_t fib(unsigned n) {
    uint64_t a = 0, b = 1;
    while (n--) {
        uint64_t t = a + b;
        a = b;
        b = t;
    }
    return a;
}
