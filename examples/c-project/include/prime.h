#ifndef PRIME_H
#define PRIME_H

int is_prime(unsigned long n);
/* The n-th prime, counting from nth_prime(1) == 2. */
unsigned long nth_prime(unsigned n);
/* How many primes are <= n (sieve of Eratosthenes); -1 if out of memory. */
long count_primes(unsigned long n);
#endif
