#include <math.h>
#include "vec.h"

vec2 vec_add(vec2 a, vec2 b) { return (vec2){a.x + b.x, a.y + b.y}; }
vec2 vec_scale(vec2 a, double k) { return (vec2){a.x * k, a.y * k}; }
double vec_dot(vec2 a, vec2 b) { return a.x * b.x + a.y * b.y; }
double vec_norm(vec2 a) { return sqrt(vec_dot(a, a)); }
