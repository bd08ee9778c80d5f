#include "rng.h"

void rng_seed(rng *r, uint64_t seed) { r->state = seed ? seed : 0x9E3779B97F4A7C15ull; }

uint64_t rng_next(rng *r) {
    uint64_t x = r->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->state = x;
    return x * 2685821657736338717ull;
}

uint64_t rng_below(rng *r, uint64_t bound) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound; /* reject the uneven tail */
    uint64_t x;
    do x = rng_next(r); while (x >= limit);
    return x % bound;
}
