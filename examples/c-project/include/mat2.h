#ifndef MAT2_H
#define MAT2_H

/* 2x2 matrices, row-major: {{a, b}, {c, d}}. */
typedef struct { double a, b, c, d; } mat2;

mat2 mat2_mul(mat2 m, mat2 n);
double mat2_det(mat2 m);
/* Returns 0 and leaves *out alone if m is singular. */
int mat2_inverse(mat2 m, mat2 *out);
#endif
