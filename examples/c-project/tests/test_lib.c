/* The library's tests: one binary, a line per failed check, exit status 1 if any failed. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "base64.h"
#include "bitset.h"
#include "checksum.h"
#include "cplx.h"
#include "csv.h"
#include "date.h"
#include "fib.h"
#include "geom.h"
#include "hash.h"
#include "hashmap.h"
#include "heap.h"
#include "hex.h"
#include "histogram.h"
#include "interp.h"
#include "intvec.h"
#include "mat2.h"
#include "poly.h"
#include "prime.h"
#include "rational.h"
#include "ring.h"
#include "rng.h"
#include "roman.h"
#include "search.h"
#include "sort.h"
#include "stats.h"
#include "strbuf.h"
#include "strutil.h"
#include "utf8.h"
#include "vec.h"

static int checks = 0, failures = 0;
#define CHECK(cond)                                                              \
    do {                                                                         \
        checks++;                                                                \
        if (!(cond)) {                                                           \
            printf("FAIL %s:%d %s\n", __FILE__, __LINE__, #cond);                \
            failures++;                                                          \
        }                                                                        \
    } while (0)
#define NEAR(a, b) (fabs((a) - (b)) < 1e-9)

static void test_numbers(void) {
    CHECK(NEAR(vec_norm((vec2){3, 4}), 5.0));
    CHECK(vec_dot((vec2){1, 0}, (vec2){0, 1}) == 0.0);
    double xs[] = {2, 4, 4, 4, 5, 5, 7, 9};
    CHECK(stats_mean(xs, 8) == 5.0);
    CHECK(stats_var(xs, 8) == 4.0);
    CHECK(stats_median(xs, 8) == 4.5);
    mat2 m = {1, 2, 3, 4}, inv;
    CHECK(mat2_det(m) == -2.0);
    CHECK(mat2_inverse(m, &inv));
    mat2 id = mat2_mul(m, inv);
    CHECK(NEAR(id.a, 1) && NEAR(id.b, 0) && NEAR(id.c, 0) && NEAR(id.d, 1));
    CHECK(!mat2_inverse((mat2){1, 2, 2, 4}, &inv));
    cplx i = {0, 1};
    cplx minus_one = cplx_mul(i, i);
    CHECK(minus_one.re == -1.0 && minus_one.im == 0.0);
    CHECK(NEAR(cplx_abs(cplx_add((cplx){3, 0}, (cplx){0, 4})), 5.0));
    rational r = rat_add(rat_make(1, 3), rat_make(1, 6));
    CHECK(r.num == 1 && r.den == 2);
    r = rat_mul(rat_make(-2, 4), rat_make(2, -3));
    CHECK(r.num == 1 && r.den == 3);
    CHECK(gcd_long(84, -36) == 12);
    CHECK(is_prime(97) && !is_prime(91) && !is_prime(1) && is_prime(2));
    CHECK(nth_prime(1) == 2 && nth_prime(100) == 541);
    CHECK(count_primes(100) == 25);
    CHECK(fib(0) == 0 && fib(10) == 55 && fib(93) == 12200160415121876738ull);
    double c[] = {-2, 0, 1}; /* x^2 - 2 */
    CHECK(poly_eval(c, 3, 3) == 7.0);
    CHECK(NEAR(poly_newton(c, 3, 1.0), sqrt(2.0)));
    double tx[] = {0, 10, 20}, ty[] = {0, 100, 0};
    CHECK(interp_table(tx, ty, 3, 5) == 50.0 && interp_table(tx, ty, 3, 15) == 50.0);
    CHECK(interp_table(tx, ty, 3, -1) == 0.0 && lerp(1, 3, 0.5) == 2.0);
    size_t bins[4];
    double hs[] = {0.1, 0.3, 0.35, 0.9, 5.0, -1.0};
    histogram(hs, 6, 0, 1, bins, 4);
    CHECK(bins[0] == 2 && bins[1] == 2 && bins[2] == 0 && bins[3] == 2);
}

static void test_geometry(void) {
    vec2 square[] = {{0, 0}, {2, 0}, {2, 2}, {0, 2}};
    CHECK(polygon_area(square, 4) == 4.0);
    CHECK(polygon_perimeter(square, 4) == 8.0);
    vec2 centre = polygon_centroid(square, 4);
    CHECK(NEAR(centre.x, 1) && NEAR(centre.y, 1));
}

static void test_containers(void) {
    intvec v = {0};
    for (int k = 1; k <= 100; k++) iv_push(&v, k);
    CHECK(v.len == 100 && iv_sum(&v) == 5050);
    iv_free(&v);

    int xs[] = {5, 3, 9, 1, 3, 7, 0};
    CHECK(sort_ints(xs, 7) == 0 && is_sorted_ints(xs, 7));
    CHECK(bsearch_int(xs, 7, 7) == 5 && bsearch_int(xs, 7, 4) == -1 && lower_bound_int(xs, 7, 3) == 2);

    hashmap *m = hm_new();
    char key[16];
    for (long k = 0; k < 200; k++) {
        snprintf(key, sizeof key, "key%ld", k);
        hm_put(m, key, k * k);
    }
    long value = 0;
    CHECK(hm_size(m) == 200 && hm_get(m, "key12", &value) && value == 144);
    CHECK(!hm_get(m, "nope", NULL));
    hm_put(m, "key12", -1);
    CHECK(hm_size(m) == 200 && hm_get(m, "key12", &value) && value == -1);
    hm_free(m);

    int storage[3], out = 0;
    ring r;
    ring_init(&r, storage, 3);
    CHECK(ring_push(&r, 1) && ring_push(&r, 2) && ring_push(&r, 3) && !ring_push(&r, 4));
    CHECK(ring_pop(&r, &out) && out == 1 && ring_push(&r, 4));
    CHECK(ring_pop(&r, &out) && out == 2 && ring_pop(&r, &out) && out == 3 && ring_pop(&r, &out) && out == 4);
    CHECK(!ring_pop(&r, &out));

    int hs[8];
    heap h;
    heap_init(&h, hs, 8);
    int in[] = {7, 2, 9, 4, 1, 8};
    for (int k = 0; k < 6; k++) heap_push(&h, in[k]);
    int last = -1, ordered = 1;
    while (heap_pop(&h, &out)) {
        ordered &= out >= last;
        last = out;
    }
    CHECK(ordered && last == 9);

    uint64_t bits[BITSET_WORDS(130)] = {0};
    bitset_set(bits, 0);
    bitset_set(bits, 64);
    bitset_set(bits, 129);
    bitset_clear(bits, 64);
    CHECK(bitset_test(bits, 129) && !bitset_test(bits, 64) && bitset_count(bits, BITSET_WORDS(130)) == 2);
}

static void test_text(void) {
    strbuf sb = {0};
    sb_append(&sb, "answer");
    sb_appendf(&sb, "=%d", 42);
    CHECK(strcmp(sb.data, "answer=42") == 0 && sb.len == 9);
    sb_free(&sb);

    char buf[64];
    strcpy(buf, "  padded \t\n");
    CHECK(strcmp(trim(buf), "padded") == 0);
    CHECK(starts_with("majordomo", "major") && ends_with("chef.c", ".c") && !ends_with("c", "chef.c"));
    CHECK(levenshtein("kitten", "sitting") == 3 && levenshtein("", "abc") == 3);

    strcpy(buf, "a,bb,,ccc\n");
    char *fields[8];
    CHECK(csv_split(buf, fields, 8) == 4 && strcmp(fields[1], "bb") == 0 && fields[2][0] == '\0');
    CHECK(strcmp(fields[3], "ccc") == 0);

    CHECK(utf8_length("h\xc3\xa9llo \xe2\x82\xac") == 7 && utf8_length("\xc3") == -1);
    char enc[4];
    CHECK(utf8_encode(0x20AC, enc) == 3 && memcmp(enc, "\xe2\x82\xac", 3) == 0 && utf8_encode(0xD800, enc) == 0);

    char roman[16];
    CHECK(to_roman(1994, roman) && strcmp(roman, "MCMXCIV") == 0 && from_roman("MCMXCIV") == 1994);
    CHECK(!to_roman(0, roman) && from_roman("ABC") == 0);
}

static void test_encodings(void) {
    char b64[32];
    unsigned char raw[32];
    base64_encode((const unsigned char *)"Man", 3, b64);
    CHECK(strcmp(b64, "TWFu") == 0);
    base64_encode((const unsigned char *)"Ma", 2, b64);
    CHECK(strcmp(b64, "TWE=") == 0);
    CHECK(base64_decode("aGVsbG8=", raw) == 5 && memcmp(raw, "hello", 5) == 0);
    CHECK(base64_decode("a!", raw) == -1);

    char hex[16];
    hex_encode((const unsigned char *)"\x01\xab", 2, hex);
    CHECK(strcmp(hex, "01ab") == 0);
    CHECK(hex_decode("FF00", raw) == 2 && raw[0] == 0xFF && raw[1] == 0 && hex_decode("abc", raw) == -1);

    CHECK(crc32_bytes("123456789", 9) == 0xCBF43926u);
    CHECK(adler32_bytes("Wikipedia", 9) == 0x11E60398u);
    CHECK(fnv1a32("", 0) == 2166136261u && fnv1a32("a", 1) == 0xE40C292Cu);
    CHECK(fnv1a64("a", 1) == 0xAF63DC4C8601EC8Cull);
}

static void test_misc(void) {
    CHECK(is_leap_year(2000) && !is_leap_year(1900) && is_leap_year(2024));
    CHECK(days_in_month(2024, 2) == 29 && days_in_month(2023, 2) == 28 && days_in_month(2023, 12) == 31);
    CHECK(day_of_week(2024, 2, 29) == 4 && day_of_week(2000, 1, 1) == 6);

    rng a, b;
    rng_seed(&a, 42);
    rng_seed(&b, 42);
    int same = 1, in_range = 1;
    for (int k = 0; k < 1000; k++) {
        uint64_t x = rng_below(&a, 6);
        same &= x == rng_below(&b, 6);
        in_range &= x < 6;
    }
    CHECK(same && in_range);
}

int main(void) {
    test_numbers();
    test_geometry();
    test_containers();
    test_text();
    test_encodings();
    test_misc();
    printf("%s: %d checks, %d failure(s)\n", failures ? "FAILED" : "ok", checks, failures);
    return failures != 0;
}
