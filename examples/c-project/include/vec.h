#ifndef VEC_H
#define VEC_H
#include <stddef.h>

typedef struct { double x, y; } vec2;

vec2 vec_add(vec2 a, vec2 b);
vec2 vec_scale(vec2 a, double k);
double vec_dot(vec2 a, vec2 b);
double vec_norm(vec2 a);
#endif
