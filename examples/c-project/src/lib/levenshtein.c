#include <stdlib.h>
#include <string.h>
#include "strutil.h"

long levenshtein(const char *a, const char *b) {
    size_t n = strlen(a), m = strlen(b);
    long *row = malloc((m + 1) * sizeof *row); /* one row of the DP table is enough */
    if (!row) return -1;
    for (size_t j = 0; j <= m; j++) row[j] = (long)j;
    for (size_t i = 1; i <= n; i++) {
        long diag = row[0];
        row[0] = (long)i;
        for (size_t j = 1; j <= m; j++) {
            long up = row[j];
            long best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    long d = row[m];
    free(row);
    return d;
}
