#include <math.h>
#include <stdio.h>
#include "stats.h"
#include "vec.h"

static int failures = 0;
#define CHECK(cond) do { if (!(cond)) { printf("FAIL %s:%d %s\n", __FILE__, __LINE__, #cond); failures++; } } while (0)

int main(void) {
    CHECK(fabs(vec_norm((vec2){3, 4}) - 5.0) < 1e-12);
    CHECK(vec_dot((vec2){1, 0}, (vec2){0, 1}) == 0.0);
    double xs[] = {2, 4, 4, 4, 5, 5, 7, 9};
    CHECK(stats_mean(xs, 8) == 5.0);
    CHECK(stats_var(xs, 8) == 4.0);
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "ok", failures);
    return failures != 0;
}
