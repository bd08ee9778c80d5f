#include <ctype.h>
#include <string.h>
#include "strutil.h"

int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return m <= n && memcmp(s + n - m, suffix, m) == 0;
}

char *trim(char *s) {
    char *start = s;
    while (isspace((unsigned char)*start)) start++;
    size_t n = strlen(start);
    while (n && isspace((unsigned char)start[n - 1])) n--;
    memmove(s, start, n);
    s[n] = '\0';
    return s;
}
