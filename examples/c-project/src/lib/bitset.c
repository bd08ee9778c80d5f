#include "bitset.h"

void bitset_set(uint64_t *words, size_t bit) { words[bit / 64] |= (uint64_t)1 << (bit % 64); }
void bitset_clear(uint64_t *words, size_t bit) { words[bit / 64] &= ~((uint64_t)1 << (bit % 64)); }
int bitset_test(const uint64_t *words, size_t bit) { return (words[bit / 64] >> (bit % 64)) & 1; }

size_t bitset_count(const uint64_t *words, size_t nwords) {
    size_t n = 0;
    for (size_t i = 0; i < nwords; i++)
        for (uint64_t w = words[i]; w; w &= w - 1) n++; /* clears the lowest set bit */
    return n;
}
