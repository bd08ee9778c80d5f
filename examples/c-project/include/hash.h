#ifndef HASH_H
#define HASH_H
#include <stddef.h>
#include <stdint.h>

/* FNV-1a: small, fast, good enough for hash tables (not for anything adversarial). */
uint32_t fnv1a32(const void *data, size_t n);
uint64_t fnv1a64(const void *data, size_t n);
#endif
