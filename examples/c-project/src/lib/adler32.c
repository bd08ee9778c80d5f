#include "checksum.h"

uint32_t adler32_bytes(const void *data, size_t n) {
    const unsigned char *p = data;
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < n; i++) {
        a = (a + p[i]) % 65521u;
        b = (b + a) % 65521u;
    }
    return b << 16 | a;
}
