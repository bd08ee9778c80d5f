#include <stdio.h>
#include "stats.h"
#include "vec.h"

int main(void) {
    vec2 a = {3, 4};
    double xs[] = {1, 2, 3, 4};
    printf("norm=%.1f mean=%.2f var=%.2f\n", vec_norm(a), stats_mean(xs, 4), stats_var(xs, 4));
    return 0;
}
