#ifndef ROMAN_H
#define ROMAN_H

/* 1..3999; out must hold 16 bytes. Returns 0 if n is out of range. */
int to_roman(int n, char *out);
/* Returns 0 for an empty string or a character that is not a Roman digit. */
int from_roman(const char *s);
#endif
