#ifndef RNG_H
#define RNG_H
#include <stdint.h>

/* xorshift64*: a small, fast, reproducible generator (not for cryptography). */
typedef struct { uint64_t state; } rng;

void rng_seed(rng *r, uint64_t seed);
uint64_t rng_next(rng *r);
/* Uniform in [0, bound) without modulo bias; bound > 0. */
uint64_t rng_below(rng *r, uint64_t bound);
#endif
