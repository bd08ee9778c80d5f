#ifndef HEX_H
#define HEX_H
#include <stddef.h>

/* Lower-case hex; out must hold 2n + 1 bytes. */
void hex_encode(const unsigned char *in, size_t n, char *out);
/* Returns the number of bytes written, or -1 on an odd length or a non-hex digit. */
long hex_decode(const char *in, unsigned char *out);
#endif
