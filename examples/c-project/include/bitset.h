#ifndef BITSET_H
#define BITSET_H
#include <stddef.h>
#include <stdint.h>

/* A fixed-size set of small integers, one bit each. */
#define BITSET_WORDS(bits) (((bits) + 63) / 64)

void bitset_set(uint64_t *words, size_t bit);
void bitset_clear(uint64_t *words, size_t bit);
int bitset_test(const uint64_t *words, size_t bit);
size_t bitset_count(const uint64_t *words, size_t nwords);
#endif
