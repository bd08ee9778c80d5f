#ifndef GEOM_H
#define GEOM_H
#include <stddef.h>
#include "vec.h"

/* Signed area of a simple polygon (positive when counter-clockwise), by the shoelace formula. */
double polygon_area(const vec2 *pts, size_t n);
double polygon_perimeter(const vec2 *pts, size_t n);
vec2 polygon_centroid(const vec2 *pts, size_t n);
#endif
