#include <stdlib.h>
#include "prime.h"

int is_prime(unsigned long n) {
    if (n < 2) return 0;
    if (n % 2 == 0) return n == 2;
    for (unsigned long d = 3; d <= n / d; d += 2)
        if (n % d == 0) return 0;
    return 1;
}

unsigned long nth_prime(unsigned n) {
    unsigned long p = 1;
    while (n) n -= is_prime(++p);
    return p;
}

long count_primes(unsigned long n) {
    if (n < 2) return 0;
    unsigned char *composite = calloc(n + 1, 1);
    if (!composite) return -1;
    long count = 0;
    for (unsigned long i = 2; i <= n; i++) {
        if (composite[i]) continue;
        count++;
        for (unsigned long j = i * i; j <= n && i <= n / i; j += i) composite[j] = 1;
    }
    free(composite);
    return count;
}
