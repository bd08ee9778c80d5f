#include "search.h"

size_t lower_bound_int(const int *xs, size_t n, int x) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (xs[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

long bsearch_int(const int *xs, size_t n, int x) {
    size_t i = lower_bound_int(xs, n, x);
    return i < n && xs[i] == x ? (long)i : -1;
}
