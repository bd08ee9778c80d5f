/* app: a tour of the library. Prints one line per module family. */
#include <stdio.h>
#include <string.h>
#include "base64.h"
#include "checksum.h"
#include "date.h"
#include "fib.h"
#include "geom.h"
#include "prime.h"
#include "rational.h"
#include "roman.h"
#include "stats.h"
#include "strbuf.h"
#include "vec.h"

int main(void) {
    vec2 square[] = {{0, 0}, {2, 0}, {2, 2}, {0, 2}};
    double xs[] = {1, 2, 3, 4};
    printf("geometry: norm=%.1f area=%.1f\n", vec_norm((vec2){3, 4}), polygon_area(square, 4));
    printf("stats: mean=%.2f var=%.2f median=%.2f\n", stats_mean(xs, 4), stats_var(xs, 4), stats_median(xs, 4));

    rational r = rat_add(rat_make(1, 3), rat_make(1, 6));
    char roman[16];
    to_roman(2024, roman);
    printf("numbers: 1/3+1/6=%ld/%ld fib(50)=%llu prime(100)=%lu %s\n", r.num, r.den,
           (unsigned long long)fib(50), nth_prime(100), roman);

    static const char *const DAYS[] = {"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"};
    printf("calendar: 2024-02-29 is a %s\n", DAYS[day_of_week(2024, 2, 29)]);

    const char *msg = "ComputePods";
    char b64[base64_len(11) + 1];
    base64_encode((const unsigned char *)msg, strlen(msg), b64);
    strbuf sb = {0};
    sb_appendf(&sb, "encoding: %s crc32=%08x", b64, (unsigned)crc32_bytes(msg, strlen(msg)));
    puts(sb.data);
    sb_free(&sb);
    return 0;
}
