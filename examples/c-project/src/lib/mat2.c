#include <math.h>
#include "mat2.h"

mat2 mat2_mul(mat2 m, mat2 n) {
    return (mat2){m.a * n.a + m.b * n.c, m.a * n.b + m.b * n.d,
                  m.c * n.a + m.d * n.c, m.c * n.b + m.d * n.d};
}

double mat2_det(mat2 m) { return m.a * m.d - m.b * m.c; }

int mat2_inverse(mat2 m, mat2 *out) {
    double det = mat2_det(m);
    if (fabs(det) < 1e-300) return 0;
    *out = (mat2){m.d / det, -m.b / det, -m.c / det, m.a / det};
    return 1;
}
