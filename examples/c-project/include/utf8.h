#ifndef UTF8_H
#define UTF8_H
#include <stddef.h>

/* Code points in a NUL-terminated UTF-8 string, or -1 if it is not valid UTF-8. */
long utf8_length(const char *s);
/* Encodes one code point; returns the bytes written (1-4), or 0 for an invalid code point. */
int utf8_encode(unsigned long cp, char out[4]);
#endif
