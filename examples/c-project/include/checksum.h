#ifndef CHECKSUM_H
#define CHECKSUM_H
#include <stddef.h>
#include <stdint.h>

/* CRC-32 (IEEE 802.3, as zlib and PNG) and Adler-32 (as zlib). */
uint32_t crc32_bytes(const void *data, size_t n);
uint32_t adler32_bytes(const void *data, size_t n);
#endif
