#ifndef STRUTIL_H
#define STRUTIL_H
#include <stddef.h>

int starts_with(const char *s, const char *prefix);
int ends_with(const char *s, const char *suffix);
/* Removes leading and trailing ASCII whitespace in place; returns s. */
char *trim(char *s);
/* Edit distance (insertions, deletions, substitutions); -1 if out of memory. */
long levenshtein(const char *a, const char *b);
#endif
