#include "geom.h"

double polygon_area(const vec2 *pts, size_t n) {
    double twice = 0;
    for (size_t i = 0; i < n; i++) {
        vec2 a = pts[i], b = pts[(i + 1) % n];
        twice += a.x * b.y - b.x * a.y;
    }
    return twice / 2;
}

double polygon_perimeter(const vec2 *pts, size_t n) {
    double total = 0;
    for (size_t i = 0; i < n; i++) total += vec_norm(vec_add(pts[(i + 1) % n], vec_scale(pts[i], -1)));
    return total;
}

vec2 polygon_centroid(const vec2 *pts, size_t n) {
    double area = polygon_area(pts, n), cx = 0, cy = 0;
    for (size_t i = 0; i < n; i++) {
        vec2 a = pts[i], b = pts[(i + 1) % n];
        double cross = a.x * b.y - b.x * a.y;
        cx += (a.x + b.x) * cross;
        cy += (a.y + b.y) * cross;
    }
    return (vec2){cx / (6 * area), cy / (6 * area)};
}
