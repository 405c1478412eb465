/*
 * geo3d.rotations: float32 CPU kernels of the fused conversions (private).
 *
 * Why C: the conversions read and write interleaved components (rows of 3, 4, 6 or 9
 * floats). torch.compile's CPU backend (inductor) loads such strided data one scalar at
 * a time through a stack buffer, which makes its kernels 1.6-2.6x slower than a copy of
 * the same bytes. GCC vectorises the same loops with vector permutes (-O3, measured with
 * -fopt-info-vec), so these loops run at about the speed of memory.
 *
 * Every kernel maps n rows of `in` to n rows of `out` (contiguous float32) with the maths
 * of the fused Python formulations in _compiled.py (same branches; the trig functions
 * and atan2 are polynomial approximations accurate to ~1-2 float32 ulp). No libm calls:
 * only +, *, /, sqrt, min/max and selects, so that every row loop vectorises.
 *
 * Built on first use by geo3d/rotations/_native.py (cc -O3 -march=native) and loaded with
 * ctypes; the only exported symbols are geo3d_rot_f32 and geo3d_abi_version.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE__)
#include <immintrin.h>
#endif

#define GEO3D_ABI 1
#define INLINE static inline __attribute__((always_inline))
#define R restrict

enum {
    K_QUAT_TO_MATRIX = 0,
    K_MATRIX_TO_QUAT = 1,
    K_AXIS_ANGLE_TO_MATRIX = 2,
    K_MATRIX_TO_AXIS_ANGLE = 3,
    K_AXIS_ANGLE_TO_QUAT = 4,
    K_QUAT_TO_AXIS_ANGLE = 5,
    K_SIXD_TO_MATRIX = 6,
    K_QUAT_TO_MATRIX_NORMALIZE = 7,
    K_EULER_TO_MATRIX = 8,  /* + convention index 0..23 */
    K_MATRIX_TO_EULER = 32, /* + convention index 0..23 */
    K_COUNT = 56
};

static const int IN_W[K_EULER_TO_MATRIX] = {4, 9, 3, 9, 3, 4, 6, 4};
static const int OUT_W[K_EULER_TO_MATRIX] = {9, 4, 9, 3, 4, 3, 9, 9};

static int in_width(int kernel) {
    return kernel < K_EULER_TO_MATRIX ? IN_W[kernel] : (kernel < K_MATRIX_TO_EULER ? 3 : 9);
}
static int out_width(int kernel) {
    return kernel < K_EULER_TO_MATRIX ? OUT_W[kernel] : (kernel < K_MATRIX_TO_EULER ? 9 : 3);
}

#define PI_F 3.14159265358979323846f
#define HALF_PI_F 1.57079632679489661923f

/* ---------------------------------------------------------------------------------- */
/* elementwise maths                                                                   */
/* ---------------------------------------------------------------------------------- */

/* Quadrant reduction h = q pi/2 + r, |r| <= pi/4, by a three-part Cody-Waite split of
 * pi/2 (its first part has 8 significant bits, so q * part is exact for |q| < 2^16):
 * accurate for |h| up to ~1e5 rad, then minimax polynomials on r (Cephes sinf/cosf). */
INLINE void reduce_quadrant(float h, float *r, int *q) {
    float fq = __builtin_roundf(h * 0.63661977236758134f);
    float t = h - fq * 1.5703125f;
    t = t - fq * 4.837512969970703125e-4f;
    t = t - fq * 7.54978995489188216e-8f;
    *r = t;
    *q = (int)fq;
}

INLINE float sin_over_r_poly(float r2) { /* sin(r)/r */
    return 1.0f + r2 * ((-1.9515295891e-4f * r2 + 8.3321608736e-3f) * r2 - 1.6666654611e-1f);
}

INLINE float cos_poly(float r2) {
    float cp = (2.443315711809948e-5f * r2 - 1.388731625493765e-3f) * r2 +
               4.166664568298827e-2f;
    return 1.0f - 0.5f * r2 + (r2 * r2) * cp;
}

/* sin(h) and cos(h) */
INLINE void sin_cos(float h, float *s_out, float *c_out) {
    float r;
    int q;
    reduce_quadrant(h, &r, &q);
    float r2 = r * r;
    float s = r * sin_over_r_poly(r2), c = cos_poly(r2);
    float S = (q & 1) ? c : s;
    float C = (q & 1) ? s : c;
    *s_out = (q & 2) ? -S : S;         /* quadrants 2, 3: sin < 0 */
    *c_out = ((q + 1) & 2) ? -C : C;   /* quadrants 1, 2: cos < 0 */
}

/* sin(h)/h (exactly 1 at h = 0, no division for |h| <= pi/4) and cos(h) */
INLINE void sinc_cos(float h, float *s_over_h, float *c_out) {
    float r;
    int q;
    reduce_quadrant(h, &r, &q);
    float r2 = r * r;
    float sr = sin_over_r_poly(r2), c = cos_poly(r2);
    float s = r * sr;
    float S = (q & 1) ? c : s;
    float C = (q & 1) ? s : c;
    S = (q & 2) ? -S : S;
    *c_out = ((q + 1) & 2) ? -C : C;
    *s_over_h = (q == 0) ? sr : S / h; /* q != 0: |h| >= pi/4 */
}

/* x86's minps/maxps semantics (fminf/fmaxf would be library calls: NaN rules) */
INLINE float min_f(float a, float b) { return a < b ? a : b; }
INLINE float max_f(float a, float b) { return a > b ? a : b; }

/* atan(t) = t P(t^2) on [0, 1], max abs error 1.4e-8 (same fit as _fast_math._P).
 * Estrin's scheme: 4 dependent multiply-adds instead of Horner's 8. The conversions
 * that use it are bound by the latency of one row's chain (division, polynomial,
 * selects), not by throughput, so a shorter chain is a faster loop. */
INLINE float atan_poly(float z) {
    float z2 = z * z, z4 = z2 * z2;
    float p01 = 0.9999999863667087f - 0.33333093957073434f * z;
    float p23 = 0.1999305410479578f - 0.14207133644339076f * z;
    float p45 = 0.10654677364056798f - 0.07533676014310682f * z;
    float p67 = 0.0430393674480887f - 0.01628300779502918f * z;
    float q03 = p01 + p23 * z2;
    float q47 = p45 + p67 * z2;
    return q03 + (q47 + 0.0029035524794655885f * z4) * z4;
}

/* atan2(y, x) for y, x >= 0 (0 at (0, 0)) */
INLINE float atan2_nonneg(float ay, float ax) {
    int swap = ay > ax;
    float num = swap ? ax : ay;
    float den = swap ? ay : ax;
    float t = num / (den == 0.0f ? 1.0f : den);
    float r = t * atan_poly(t * t);
    return swap ? HALF_PI_F - r : r;
}

/* atan2(y, x) with torch's signed-zero conventions (finite inputs) */
INLINE float atan2_f(float y, float x) {
    float r = atan2_nonneg(fabsf(y), fabsf(x));
    r = signbit(x) ? PI_F - r : r;
    return copysignf(r, y);
}

/* 2 atan2(n, aw) / n for n, aw >= 0 (2 / aw at n = 0): _fast_math.half_angle_over_sin */
INLINE float half_angle_over_sin(float n, float aw) {
    int swap = n > aw;
    float inv = 1.0f / (swap ? n : aw);
    float t = (swap ? aw : n) * inv;
    float p = atan_poly(t * t);
    return (2.0f * inv) * (swap ? HALF_PI_F - t * p : p);
}

/* Shepperd / scipy branch selection: unnormalised quaternion (w, x, y, z) of a matrix,
 * up to sign and a positive scale (_quat._shepperd). */
INLINE void shepperd(const float *m, float *w, float *x, float *y, float *z) {
    float m00 = m[0], m01 = m[1], m02 = m[2];
    float m10 = m[3], m11 = m[4], m12 = m[5];
    float m20 = m[6], m21 = m[7], m22 = m[8];
    float tr = m00 + m11 + m22;
    float a = m21 - m12, b = m02 - m20, c = m10 - m01;
    float d = m01 + m10, e = m02 + m20, f = m12 + m21;
    int cw = (tr >= m00) & (tr >= m11) & (tr >= m22);
    int cx = (m00 >= m11) & (m00 >= m22);
    int cy = m11 >= m22;
    float dx = 1.0f + 2.0f * m00 - tr, dy = 1.0f + 2.0f * m11 - tr;
    float dz = 1.0f + 2.0f * m22 - tr;
    *w = cw ? 1.0f + tr : (cx ? a : (cy ? b : c));
    *x = cw ? a : (cx ? dx : (cy ? d : e));
    *y = cw ? b : (cx ? d : (cy ? dy : f));
    *z = cw ? c : (cx ? e : (cy ? f : dz));
}

INLINE void matrix_from_quat(float w, float x, float y, float z, float s, float *o) {
    float x2 = x * s, y2 = y * s, z2 = z * s;
    float xx = x * x2, yy = y * y2, zz = z * z2;
    float xy = x * y2, xz = x * z2, yz = y * z2;
    float wx = w * x2, wy = w * y2, wz = w * z2;
    o[0] = 1.0f - (yy + zz); o[1] = xy - wz;          o[2] = xz + wy;
    o[3] = xy + wz;          o[4] = 1.0f - (xx + zz); o[5] = yz - wx;
    o[6] = xz - wy;          o[7] = yz + wx;          o[8] = 1.0f - (xx + yy);
}

/* ---------------------------------------------------------------------------------- */
/* row functions: a = the input row's components, o = the output row's                */
/* ---------------------------------------------------------------------------------- */

/* unit quaternions (scale 2, quat_to_matrix's default) or any non-zero ones */
INLINE void r_quat_to_matrix(const float *a, float *o) {
    matrix_from_quat(a[0], a[1], a[2], a[3], 2.0f, o);
}

/* A scale-invariant row (a quaternion, a 6D column) rescaled so that its largest
 * |component| is about 1: its squared norm then neither overflows (|q| 1e20 in float32)
 * nor underflows (1e-20, subnormal 1e-40), as in the eager functions. One division per
 * row; the tiny rows are first multiplied by the exact power of two 2^64 so that the
 * reciprocal stays finite. Ternaries, not fmaxf, so that the loops still vectorise. A
 * zero row stays zero (scale 1). */
INLINE float max4(float a, float b, float c, float d) {
    a = fabsf(a); b = fabsf(b); c = fabsf(c); d = fabsf(d);
    float ab = a > b ? a : b, cd = c > d ? c : d;
    return ab > cd ? ab : cd;
}

INLINE void rescale4(float *a, float *b, float *c, float *d) {
    float m = max4(*a, *b, *c, *d);
    float pre = m < 0x1p-64f ? 0x1p64f : 1.0f;
    float mm = m * pre;
    float r = mm > 0.0f ? 1.0f / mm : 1.0f;
    *a = (*a * pre) * r; *b = (*b * pre) * r; *c = (*c * pre) * r; *d = (*d * pre) * r;
}

INLINE void r_quat_to_matrix_normalize(const float *a, float *o) {
    float w = a[0], x = a[1], y = a[2], z = a[3];
    rescale4(&w, &x, &y, &z);
    matrix_from_quat(w, x, y, z, 2.0f / ((w * w + x * x) + (y * y + z * z)), o);
}

INLINE void r_matrix_to_quat(const float *a, float *o) {
    float w, x, y, z;
    shepperd(a, &w, &x, &y, &z);
    float k = copysignf(1.0f / sqrtf((w * w + x * x) + (y * y + z * z)), w);
    o[0] = w * k; o[1] = x * k; o[2] = y * k; o[3] = z * k;
}

INLINE void r_axis_angle_to_matrix(const float *a, float *o) {
    float x = a[0], y = a[1], z = a[2];
    float t2 = x * x + y * y + z * z;
    float sh, ch; /* sin(θ/2)/(θ/2), cos(θ/2) */
    sinc_cos(0.5f * sqrtf(t2), &sh, &ch);
    float s = sh * ch;        /* sin θ / θ */
    float b = 0.5f * sh * sh; /* (1 - cos θ) / θ² */
    float c = 1.0f - b * t2;
    float bx = b * x, by = b * y, bz = b * z;
    float sx = s * x, sy = s * y, sz = s * z;
    float xy = bx * y, xz = bx * z, yz = by * z;
    o[0] = c + bx * x; o[1] = xy - sz;    o[2] = xz + sy;
    o[3] = xy + sz;    o[4] = c + by * y; o[5] = yz - sx;
    o[6] = xz - sy;    o[7] = yz + sx;    o[8] = c + bz * z;
}

INLINE void rotvec_from_quat(float w, float x, float y, float z, float *o) {
    float nrm = sqrtf(x * x + y * y + z * z);
    float f = copysignf(half_angle_over_sin(nrm, fabsf(w)), w);
    o[0] = x * f; o[1] = y * f; o[2] = z * f;
}

INLINE void r_matrix_to_axis_angle(const float *a, float *o) {
    float w, x, y, z;
    shepperd(a, &w, &x, &y, &z);
    rotvec_from_quat(w, x, y, z, o);
}

INLINE void r_axis_angle_to_quat(const float *a, float *o) {
    float x = a[0], y = a[1], z = a[2];
    float sh, ch;
    sinc_cos(0.5f * sqrtf(x * x + y * y + z * z), &sh, &ch);
    float k = 0.5f * sh;    /* sin(θ/2)/θ */
    k = ch < 0.0f ? -k : k; /* w >= 0: angles beyond π give the antipodal quaternion */
    o[0] = fabsf(ch); o[1] = x * k; o[2] = y * k; o[3] = z * k;
}

INLINE void r_quat_to_axis_angle(const float *a, float *o) {
    float w = a[0], x = a[1], y = a[2], z = a[3];
    rescale4(&w, &x, &y, &z);
    rotvec_from_quat(w, x, y, z, o);
}

INLINE void r_sixd_to_matrix(const float *a, float *o) {
    float ax = a[0], ay = a[1], az = a[2], cx = a[3], cy = a[4], cz = a[5], zero = 0.0f;
    rescale4(&ax, &ay, &az, &zero);
    rescale4(&cx, &cy, &cz, &zero);
    float r1 = 1.0f / sqrtf(ax * ax + ay * ay + az * az);
    float x1 = ax * r1, y1 = ay * r1, z1 = az * r1;
    float d = x1 * cx + y1 * cy + z1 * cz;
    float px = cx - d * x1, py = cy - d * y1, pz = cz - d * z1;
    float r2 = 1.0f / sqrtf(px * px + py * py + pz * pz);
    float x2 = px * r2, y2 = py * r2, z2 = pz * r2;
    o[0] = x1; o[1] = x2; o[2] = y1 * z2 - z1 * y2;
    o[3] = y1; o[4] = y2; o[5] = z1 * x2 - x1 * z2;
    o[6] = z1; o[7] = z2; o[8] = x1 * y2 - y1 * x2;
}

/* Euler angles. Each of the 24 conventions gets its own loop: the axes are compile-time
 * constants of always-inline bodies, so components are picked without arithmetic and
 * the loops do not branch on the convention (GCC would not vectorise that). Convention
 * index c = 2 s + intrinsic, s the position of the lowercase axis sequence in
 * xyz xzy yxz yzx zxy zyx xyx xzx yxy yzy zxz zyz (x, y, z = 0, 1, 2; _native.py has the
 * same table). */

/* p * e (right) or e * p, e = (c, s e_axis) an elementary rotation quaternion: the
 * general product with e's zero components left out. */
INLINE void qmul_elementary(const float *p, int axis, float c, float s, int right,
                            float *o) {
    const int j = (axis + 1) % 3, k = (axis + 2) % 3; /* (axis, j, k) is cyclic */
    const float sg = right ? s : -s;                  /* p⃗ × e_axis = -(e_axis × p⃗) */
    o[0] = p[0] * c - p[1 + axis] * s;
    o[1 + axis] = p[1 + axis] * c + p[0] * s;
    /* (p⃗ × e_axis)_j = p_k, (p⃗ × e_axis)_k = -p_j */
    o[1 + j] = p[1 + j] * c + sg * p[1 + k];
    o[1 + k] = p[1 + k] * c - sg * p[1 + j];
}

/* euler_to_matrix in two passes (fewer live values per loop): the sines and cosines of
 * the half angles, then the product of the three elementary quaternions as a matrix */
INLINE void half_sin_cos(const float *a, float *sc) {
    for (int k = 0; k < 3; k++) sin_cos(0.5f * a[k], &sc[2 * k], &sc[2 * k + 1]);
}

INLINE void euler_to_matrix_sc(const float *sc, float *o, const int ax0, const int ax1,
                               const int ax2, const int intrinsic) {
    float s0 = sc[0], c0 = sc[1], s1 = sc[2], c1 = sc[3], s2 = sc[4], c2 = sc[5];
    float p[4] = {c0, 0.0f, 0.0f, 0.0f}, t[4], q[4];
    p[1 + ax0] = s0;
    /* intrinsic: e0 e1 e2; extrinsic: e2 e1 e0 */
    qmul_elementary(p, ax1, c1, s1, intrinsic, t);
    qmul_elementary(t, ax2, c2, s2, intrinsic, q);
    matrix_from_quat(q[0], q[1], q[2], q[3], 2.0f, o);
}

INLINE float wrap_pi(float x) { /* x in [-2π, 2π] to [-π, π) */
    return x >= PI_F ? x - 2.0f * PI_F : (x < -PI_F ? x + 2.0f * PI_F : x);
}

#define GIMBAL_EPS 1e-7f

/* Bernardes & Viollet (2022) as in scipy and _euler.quat_to_euler */
/* quat_to_euler in two halves (less register pressure per loop): the three angles of
 * Bernardes & Viollet from the quaternion (h = half_sum, half_diff, mid), then the
 * gimbal-lock rule, signs and wrap. */
INLINE void quat_to_euler_angles(const float *q, float *h, const int ax0, const int ax1,
                                 const int ax2, const int intrinsic) {
    const int ii = intrinsic ? ax2 : ax0, jj = ax1;
    const int symmetric = ax0 == ax2;
    const int kk = symmetric ? 3 - ii - jj : (intrinsic ? ax0 : ax2);
    const float sign = (float)((ii - jj) * (jj - kk) * (kk - ii) / 2);
    /* q has w >= 0 (the caller's sign normalisation, as _f_matrix_to_euler's) */
    float w = q[0], qi = q[1 + ii], qj = q[1 + jj], qk = q[1 + kk];
    float a, b, c, d;
    if (symmetric) {
        a = w; b = qi; c = qj; d = qk * sign;
    } else {
        a = w - qj; b = qi + qk * sign; c = qj + w; d = qk * sign - qi;
    }
    h[0] = atan2_f(b, a);
    h[1] = atan2_f(d, c);
    /* mid = 2 atan2(hypot(c, d), hypot(a, b)) with one square root, off the critical
     * path: with u = c² + d², v = a² + b², t² = min(u, v) / max(u, v) feeds the
     * polynomial while t = sqrt(t²) is computed; then atan(t) or π/2 - atan(t) */
    float u = c * c + d * d, v = a * a + b * b;
    float t2 = min_f(u, v) / max_f(max_f(u, v), 1.17549435e-38f);
    float r = sqrtf(t2) * atan_poly(t2);
    h[2] = 2.0f * (u > v ? HALF_PI_F - r : r);
}

INLINE void euler_from_angles(const float *h, float *o, const int ax0, const int ax1,
                              const int ax2, const int intrinsic) {
    const int extrinsic = !intrinsic;
    const int ii = intrinsic ? ax2 : ax0, jj = ax1;
    const int symmetric = ax0 == ax2;
    const int kk = symmetric ? 3 - ii - jj : (intrinsic ? ax0 : ax2);
    const float sign = (float)((ii - jj) * (jj - kk) * (kk - ii) / 2);
    float half_sum = h[0], half_diff = h[1], mid = h[2];
    int case1 = mid <= GIMBAL_EPS; /* mid >= 0 */
    int case2 = fabsf(mid - PI_F) <= GIMBAL_EPS;
    int case0 = !(case1 | case2);
    float a0 = case1 ? 2.0f * half_sum : 2.0f * half_diff * (extrinsic ? -1.0f : 1.0f);
    float first = half_sum - half_diff;
    float third = half_sum + half_diff;
    float ang0, ang2;
    if (extrinsic) {
        ang0 = case0 ? first : a0;
        ang2 = case0 ? third : 0.0f;
        if (!symmetric) ang2 = ang2 * sign;
    } else {
        ang2 = case0 ? first : 0.0f;
        ang0 = case0 ? third : a0;
        if (!symmetric) ang0 = ang0 * sign;
    }
    /* mid is in [0, π]: only π itself wraps (to -π, as scipy) */
    float ang1 = symmetric ? (mid >= PI_F ? mid - 2.0f * PI_F : mid) : mid - HALF_PI_F;
    o[0] = wrap_pi(ang0); o[1] = ang1; o[2] = wrap_pi(ang2);
}

/* ---------------------------------------------------------------------------------- */
/* row loops                                                                           */
/* ---------------------------------------------------------------------------------- */

/* Two row loops (which one each kernel uses was measured, 1 thread, 1e6 rows):
 * DIRECT: one loop over the interleaved rows. GCC vectorises rows of 3 and 4 with
 *   permutes; best for a few light kernels with 3/4-wide input.
 * BLOCKED: blocks of BLOCK rows are split into component arrays (in L1), converted, and
 *   joined again (large outputs leave through non-temporal stores). GCC does not vectorise
 *   rows of 6 or 9 in one loop (it did not, and ran 3-13x slower than a copy); the split
 *   and join do them as 2 x 3 and 3 x 3. */
#define BLOCK 64

/* nt: write the output with non-temporal stores (large outputs only) */
typedef void (*kernel_fn)(const float *R, float *R, int64_t, int nt);

static void split(const float *src, int w, int n, float (*comp)[BLOCK], float *tmp);

static void join(float (*comp)[BLOCK], int w, int n, float *dst, float *tmp);
static void stream_out(float *dst, const float *src, int n, int nt);

#define DIRECT(NAME, IW, OW, ROW)                                                       \
    static void k_##NAME(const float *R in, float *R out, int64_t n, int nt) {          \
        (void)nt;                                                                       \
        for (int64_t i = 0; i < n; i++) {                                               \
            float a[IW], o[OW];                                                         \
            for (int c = 0; c < IW; c++) a[c] = in[(IW) * i + c];                       \
            ROW(a, o);                                                                  \
            for (int c = 0; c < OW; c++) out[(OW) * i + c] = o[c];                      \
        }                                                                               \
    }

/* one pass over a block: rows of SW components (SRC[c][i]) -> rows of DW (DST[c][i]) */
#define PASS(SRC, SW, DST, DW, ROW)                                                     \
    for (int i = 0; i < nb; i++) {                                                      \
        float a_[SW], o_[DW];                                                           \
        for (int c = 0; c < (SW); c++) a_[c] = SRC[c][i];                               \
        ROW(a_, o_);                                                                    \
        for (int c = 0; c < (DW); c++) DST[c][i] = o_[c];                               \
    }

/* the first pass, from the block's input. Rows of 9 are read half split: after one
 * stride-3 split into t_e = tmp + 3 e BLOCK, component 3h + e of row i is t_e[3i + h],
 * which the loop reads as a stride-3 group (GCC's permutes, as a second split would do,
 * without storing and reloading the nine component arrays) */
#define FIRST_PASS(IW, DST, DW, ROW)                                                    \
    if ((IW) == 9) {                                                                    \
        for (int i = 0; i < nb; i++) {                                                  \
            float a_[9], o_[DW];                                                        \
            for (int h = 0; h < 3; h++)                                                 \
                for (int e = 0; e < 3; e++) a_[3 * h + e] = tmp[3 * (e * BLOCK + i) + h]; \
            ROW(a_, o_);                                                                \
            for (int c = 0; c < (DW); c++) DST[c][i] = o_[c];                           \
        }                                                                               \
    } else {                                                                            \
        PASS(ic, IW, DST, DW, ROW)                                                      \
    }

/* the block loop: split the input block into ic, run BODY (ic -> oc), join and store */
#define BLOCKS(NAME, IW, OW, BODY)                                                      \
    static void k_##NAME(const float *R in, float *R out, int64_t n, int nt) {          \
        float ic[IW][BLOCK] __attribute__((aligned(64)));                               \
        float oc[OW][BLOCK] __attribute__((aligned(64)));                               \
        float tmp[9 * BLOCK] __attribute__((aligned(64)));                              \
        float ob[9 * BLOCK] __attribute__((aligned(64)));                               \
        for (int64_t lo = 0; lo < n; lo += BLOCK) {                                     \
            int nb = (int)(n - lo < BLOCK ? n - lo : BLOCK);                            \
            split(in + lo * (IW), IW, nb, ic, tmp);                                     \
            BODY                                                                        \
            join(oc, OW, nb, ob, tmp);                                                  \
            stream_out(out + lo * (OW), ob, nb * (OW), nt);                             \
        }                                                                               \
    }

#define BLOCKED(NAME, IW, OW, ROW) BLOCKS(NAME, IW, OW, FIRST_PASS(IW, oc, OW, ROW))

/* BLOCKED in two passes (rows of IW -> MW -> OW), for euler_to_matrix: loops with fewer
 * live values each (measured faster than one loop: less register pressure) */
#define BLOCKED2(NAME, IW, MW, OW, ROW1, ROW2)                                          \
    BLOCKS(NAME, IW, OW,                                                                \
           float mc[MW][BLOCK] __attribute__((aligned(64)));                            \
           FIRST_PASS(IW, mc, MW, ROW1) PASS(mc, MW, oc, OW, ROW2))

/* BLOCKED in three passes (rows of IW -> 4 -> 3 -> OW), for matrix_to_euler: the long
 * matrix -> quaternion -> angles chain split into loops of fewer live values each
 * (measured ~15% faster than one loop: less register pressure) */
#define BLOCKED3(NAME, IW, OW, ROW1, ROW2, ROW3)                                        \
    BLOCKS(NAME, IW, OW,                                                                \
           float mc[4][BLOCK] __attribute__((aligned(64)));                             \
           float hc[3][BLOCK] __attribute__((aligned(64)));                             \
           FIRST_PASS(IW, mc, 4, ROW1) PASS(mc, 4, hc, 3, ROW2) PASS(hc, 3, oc, OW, ROW3))

INLINE void r_shepperd(const float *a, float *q) {
    shepperd(a, &q[0], &q[1], &q[2], &q[3]);
    float k = copysignf(1.0f, q[0]);
    q[0] *= k; q[1] *= k; q[2] *= k; q[3] *= k;
}

DIRECT(quat_to_matrix, 4, 9, r_quat_to_matrix)
BLOCKED(matrix_to_quat, 9, 4, r_matrix_to_quat)
BLOCKED(axis_angle_to_matrix, 3, 9, r_axis_angle_to_matrix)
BLOCKED(matrix_to_axis_angle, 9, 3, r_matrix_to_axis_angle)
DIRECT(axis_angle_to_quat, 3, 4, r_axis_angle_to_quat)
BLOCKED(quat_to_axis_angle, 4, 3, r_quat_to_axis_angle)
BLOCKED(sixd_to_matrix, 6, 9, r_sixd_to_matrix)
DIRECT(quat_to_matrix_normalize, 4, 9, r_quat_to_matrix_normalize)

/* one convention: S the sequence's index, I intrinsic (0/1), A0-A2 its axes */
#define EULER_ONE(S, I, A0, A1, A2)                                                     \
    INLINE void r_e2m_##S##_##I(const float *sc, float *o) {                            \
        euler_to_matrix_sc(sc, o, A0, A1, A2, I);                                       \
    }                                                                                   \
    INLINE void r_q2a_##S##_##I(const float *q, float *h) {                             \
        quat_to_euler_angles(q, h, A0, A1, A2, I);                                      \
    }                                                                                   \
    INLINE void r_a2e_##S##_##I(const float *h, float *o) {                             \
        euler_from_angles(h, o, A0, A1, A2, I);                                         \
    }                                                                                   \
    BLOCKED2(e2m_##S##_##I, 3, 6, 9, half_sin_cos, r_e2m_##S##_##I)                    \
    BLOCKED3(m2e_##S##_##I, 9, 3, r_shepperd, r_q2a_##S##_##I, r_a2e_##S##_##I)

#define EULER(S, A0, A1, A2) EULER_ONE(S, 0, A0, A1, A2) EULER_ONE(S, 1, A0, A1, A2)

EULER(0, 0, 1, 2)
EULER(1, 0, 2, 1)
EULER(2, 1, 0, 2)
EULER(3, 1, 2, 0)
EULER(4, 2, 0, 1)
EULER(5, 2, 1, 0)
EULER(6, 0, 1, 0)
EULER(7, 0, 2, 0)
EULER(8, 1, 0, 1)
EULER(9, 1, 2, 1)
EULER(10, 2, 0, 2)
EULER(11, 2, 1, 2)

#define PAIR(P, S) P##_e2m_##S##_0, P##_e2m_##S##_1
#define PAIR2(P, S) P##_m2e_##S##_0, P##_m2e_##S##_1
#define TABLE(P)                                                                        \
    {                                                                                   \
        P##_quat_to_matrix, P##_matrix_to_quat, P##_axis_angle_to_matrix,               \
        P##_matrix_to_axis_angle, P##_axis_angle_to_quat, P##_quat_to_axis_angle,       \
        P##_sixd_to_matrix, P##_quat_to_matrix_normalize,                               \
        PAIR(P, 0), PAIR(P, 1), PAIR(P, 2), PAIR(P, 3), PAIR(P, 4), PAIR(P, 5),         \
        PAIR(P, 6), PAIR(P, 7), PAIR(P, 8), PAIR(P, 9), PAIR(P, 10), PAIR(P, 11),       \
        PAIR2(P, 0), PAIR2(P, 1), PAIR2(P, 2), PAIR2(P, 3), PAIR2(P, 4), PAIR2(P, 5),   \
        PAIR2(P, 6), PAIR2(P, 7), PAIR2(P, 8), PAIR2(P, 9), PAIR2(P, 10), PAIR2(P, 11), \
    }

static const kernel_fn KERNELS[K_COUNT] = TABLE(k);

/* ---------------------------------------------------------------------------------- */
/* (de)interleaving: rows of w floats <-> w arrays; each loop is stride 2, 3 or 4, which */
/* GCC vectorises with permutes; widths 6 and 9 are done as 3 x 2 and 3 x 3.            */
/* ---------------------------------------------------------------------------------- */

static void split2(const float *R s, int n, float *R a, float *R b) {
    for (int i = 0; i < n; i++) { a[i] = s[2 * i]; b[i] = s[2 * i + 1]; }
}
static void split3(const float *R s, int n, float *R a, float *R b, float *R c) {
    for (int i = 0; i < n; i++) { a[i] = s[3 * i]; b[i] = s[3 * i + 1]; c[i] = s[3 * i + 2]; }
}
static void split4(const float *R s, int n, float *R a, float *R b, float *R c, float *R d) {
    for (int i = 0; i < n; i++) {
        a[i] = s[4 * i]; b[i] = s[4 * i + 1]; c[i] = s[4 * i + 2]; d[i] = s[4 * i + 3];
    }
}
static void join3(const float *R a, const float *R b, const float *R c, int n, float *R s) {
    for (int i = 0; i < n; i++) { s[3 * i] = a[i]; s[3 * i + 1] = b[i]; s[3 * i + 2] = c[i]; }
}
static void join4(const float *R a, const float *R b, const float *R c, const float *R d,
                  int n, float *R s) {
    for (int i = 0; i < n; i++) {
        s[4 * i] = a[i]; s[4 * i + 1] = b[i]; s[4 * i + 2] = c[i]; s[4 * i + 3] = d[i];
    }
}

/* Output rows of 9 through vector registers (GCC >= 12, clang): 9 component vectors of
 * 16 rows are interleaved into 9 vectors of 16 floats by two rounds of stride-3 joins,
 * with no trip through memory in between (join() below stores and reloads the middle
 * round). Each stride-3 join of 3 vectors is 6 two-source shuffles (vpermt2ps with
 * AVX-512). */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define HAVE_SHUFFLE 1
typedef float v16f __attribute__((vector_size(64)));
#define SHUF __builtin_shufflevector

INLINE v16f load16(const float *p) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void store16(float *p, v16f v) { memcpy(p, &v, sizeof v); }

/* (a|b|c)[3k + e] = o_e[k] */
INLINE void join3v(v16f o0, v16f o1, v16f o2, v16f *a, v16f *b, v16f *c) {
    v16f t0 = SHUF(o0, o1, 0, 16, 0, 1, 17, 0, 2, 18, 0, 3, 19, 0, 4, 20, 0, 5);
    *a = SHUF(t0, o2, 0, 1, 16, 3, 4, 17, 6, 7, 18, 9, 10, 19, 12, 13, 20, 15);
    v16f t1 = SHUF(o0, o1, 21, 0, 6, 22, 0, 7, 23, 0, 8, 24, 0, 9, 25, 0, 10, 26);
    *b = SHUF(t1, o2, 0, 21, 2, 3, 22, 5, 6, 23, 8, 9, 24, 11, 12, 25, 14, 15);
    v16f t2 = SHUF(o0, o1, 0, 11, 27, 0, 12, 28, 0, 13, 29, 0, 14, 30, 0, 15, 31, 0);
    *c = SHUF(t2, o2, 26, 1, 2, 27, 4, 5, 28, 7, 8, 29, 10, 11, 30, 13, 14, 31);
}

/* comp[c][i0 .. i0 + 15] -> 16 rows of 9 floats at dst. Component c = 3h + e of a row
 * (row h, column e of the matrix) is element 3(3i + h) + e of the stream: the first
 * round joins over h, the second over e. */
static void join9x16(float (*comp)[BLOCK], int i0, float *dst) {
    v16f t[3][3], v[3];
    for (int e = 0; e < 3; e++)
        join3v(load16(&comp[e][i0]), load16(&comp[3 + e][i0]), load16(&comp[6 + e][i0]),
               &t[e][0], &t[e][1], &t[e][2]);
    for (int g = 0; g < 3; g++) {
        join3v(t[0][g], t[1][g], t[2][g], &v[0], &v[1], &v[2]);
        for (int r = 0; r < 3; r++) store16(dst + 48 * g + 16 * r, v[r]);
    }
}
#endif

/* rows of w floats at src -> comp[c][i] (w = 9: see below); tmp holds 9 * BLOCK floats */
static void split(const float *src, int w, int n, float (*comp)[BLOCK], float *tmp) {
    float *t0 = tmp, *t1 = tmp + 3 * BLOCK, *t2 = tmp + 6 * BLOCK;
    switch (w) {
    case 3: split3(src, n, comp[0], comp[1], comp[2]); break;
    case 4: split4(src, n, comp[0], comp[1], comp[2], comp[3]); break;
    case 6: /* (n, 6) = (2n, 3): component 3h + e of row i is t_e[2i + h] */
        split3(src, 2 * n, t0, t1, t2);
        split2(t0, n, comp[0], comp[3]);
        split2(t1, n, comp[1], comp[4]);
        split2(t2, n, comp[2], comp[5]);
        break;
    case 9: /* (n, 9) = (3n, 3): component 3h + e of row i is t_e[3i + h]. Only this
             * round: FIRST_PASS reads t_e with stride-3 loads (comp is not filled).
             * (Both rounds in registers, as join9x16, ran faster in L1 but slower on
             * data streaming from memory: matrix_to_quat 0.94 vs 0.74 of a copy.) */
        split3(src, 3 * n, t0, t1, t2);
        break;
    }
}

static void join(float (*comp)[BLOCK], int w, int n, float *dst, float *tmp) {
    float *t0 = tmp, *t1 = tmp + 3 * BLOCK, *t2 = tmp + 6 * BLOCK;
    switch (w) {
    case 3: join3(comp[0], comp[1], comp[2], n, dst); break;
    case 4: join4(comp[0], comp[1], comp[2], comp[3], n, dst); break;
    case 9:
#ifdef HAVE_SHUFFLE
        if (n == BLOCK) {
            for (int i0 = 0; i0 < BLOCK; i0 += 16) join9x16(comp, i0, dst + 9 * i0);
            break;
        }
#endif
        join3(comp[0], comp[3], comp[6], n, t0);
        join3(comp[1], comp[4], comp[7], n, t1);
        join3(comp[2], comp[5], comp[8], n, t2);
        join3(t0, t1, t2, 3 * n, dst);
        break;
    }
}

/* Copy n floats from the L1 buffer src (64-byte aligned) to dst. With nt, and where
 * dst is aligned, through non-temporal stores: the output then goes to memory without
 * first being read into the cache (as memcpy does for large copies), which saves a
 * third of the memory traffic of the wide outputs (matrices). Only for outputs too large
 * for the cache anyway: a small output is better left in the cache for its reader. */
static void stream_out(float *dst, const float *src, int n, int nt) {
    int k = 0;
    if (!nt) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
#if defined(__AVX512F__)
    if (((uintptr_t)dst & 63) == 0)
        for (; k + 16 <= n; k += 16) _mm512_stream_ps(dst + k, _mm512_load_ps(src + k));
#elif defined(__AVX__)
    if (((uintptr_t)dst & 31) == 0)
        for (; k + 8 <= n; k += 8) _mm256_stream_ps(dst + k, _mm256_load_ps(src + k));
#elif defined(__SSE__)
    if (((uintptr_t)dst & 15) == 0)
        for (; k + 4 <= n; k += 4) _mm_stream_ps(dst + k, _mm_load_ps(src + k));
#endif
    memcpy(dst + k, src + k, (size_t)(n - k) * sizeof(float));
}

static void stream_fence(void) {
#if defined(__SSE__)
    _mm_sfence();
#endif
}

/* ---------------------------------------------------------------------------------- */
/* threads                                                                             */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    kernel_fn fn;
    const float *in;
    float *out;
    int64_t n;
    int nt;
} job_t;

static void *run_job(void *arg) {
    job_t *j = (job_t *)arg;
    if (j->n > 0) j->fn(j->in, j->out, j->n, j->nt);
    stream_fence();
    return NULL;
}

#define MAX_THREADS 256
#define MIN_ROWS_PER_THREAD 8192
#define NT_MIN_BYTES (8 << 20) /* outputs from 8 MiB on bypass the cache (measured) */

int geo3d_abi_version(void) { return GEO3D_ABI; }

/* Run kernel `kernel` on n rows with up to `nthreads` threads (the caller's included).
 * Returns 0, or -1 for bad arguments. If a thread cannot be started, its rows are done
 * by the calling thread: the result is always complete. */
int geo3d_rot_f32(int kernel, const float *in, float *out, int64_t n, int nthreads) {
    if (kernel < 0 || kernel >= K_COUNT || n < 0) return -1;
    int64_t most = n / MIN_ROWS_PER_THREAD;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads > most) nthreads = (int)most;
    if (nthreads < 1) nthreads = 1;
    const int iw = in_width(kernel), ow = out_width(kernel);
    const kernel_fn fn = KERNELS[kernel];
    const int nt = (double)n * ow * sizeof(float) >= NT_MIN_BYTES;
    job_t jobs[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS];
    int64_t chunk = ((n + nthreads - 1) / nthreads + BLOCK - 1) / BLOCK * BLOCK;
    for (int t = 0; t < nthreads; t++) {
        int64_t lo = chunk * t, hi = lo + chunk;
        if (lo > n) lo = n;
        if (hi > n) hi = n;
        jobs[t] = (job_t){fn, in + lo * iw, out + lo * ow, hi - lo, nt};
        started[t] = 0;
    }
    for (int t = 1; t < nthreads; t++)
        started[t] = pthread_create(&tid[t], NULL, run_job, &jobs[t]) == 0;
    run_job(&jobs[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            run_job(&jobs[t]);
    }
    return 0;
}
