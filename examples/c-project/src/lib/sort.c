#include <stdlib.h>
#include <string.h>
#include "sort.h"

static void merge_sort(int *xs, int *tmp, size_t n) {
    if (n < 2) return;
    size_t mid = n / 2;
    merge_sort(xs, tmp, mid);
    merge_sort(xs + mid, tmp, n - mid);
    size_t i = 0, j = mid, k = 0;
    while (i < mid && j < n) tmp[k++] = xs[j] < xs[i] ? xs[j++] : xs[i++];
    while (i < mid) tmp[k++] = xs[i++];
    while (j < n) tmp[k++] = xs[j++];
    memcpy(xs, tmp, n * sizeof *xs);
}

int sort_ints(int *xs, size_t n) {
    int *tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!tmp) return -1;
    merge_sort(xs, tmp, n);
    free(tmp);
    return 0;
}

int is_sorted_ints(const int *xs, size_t n) {
    for (size_t i = 1; i < n; i++)
        if (xs[i - 1] > xs[i]) return 0;
    return 1;
}
