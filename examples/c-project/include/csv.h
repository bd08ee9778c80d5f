#ifndef CSV_H
#define CSV_H
#include <stddef.h>

/* Splits a line at commas in place (no quoting); returns the number of fields, at most max. */
size_t csv_split(char *line, char **fields, size_t max);
#endif
