#include "csv.h"

size_t csv_split(char *line, char **fields, size_t max) {
    size_t n = 0;
    if (!max) return 0;
    fields[n++] = line;
    for (char *p = line; *p; p++) {
        if (*p == '\n' || *p == '\r') { *p = '\0'; break; }
        if (*p == ',' && n < max) {
            *p = '\0';
            fields[n++] = p + 1;
        }
    }
    return n;
}
