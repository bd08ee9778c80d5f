#ifndef STRBUF_H
#define STRBUF_H
#include <stddef.h>

/* A growable, always NUL-terminated string. Zero-initialise, then append; sb_free when done. */
typedef struct {
    char *data;
    size_t len, cap;
} strbuf;

int sb_append(strbuf *sb, const char *s);
int sb_appendf(strbuf *sb, const char *fmt, ...);
void sb_free(strbuf *sb);
#endif
