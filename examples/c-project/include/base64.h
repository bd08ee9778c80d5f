#ifndef BASE64_H
#define BASE64_H
#include <stddef.h>

/* Standard alphabet with '=' padding. out must hold base64_len(n) + 1 bytes; returns its length. */
#define base64_len(n) (((n) + 2) / 3 * 4)
size_t base64_encode(const unsigned char *in, size_t n, char *out);
/* Returns the decoded length, or -1 on a character outside the alphabet. */
long base64_decode(const char *in, unsigned char *out);
#endif
