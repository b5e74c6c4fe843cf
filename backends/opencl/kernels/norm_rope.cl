/* RMSNORM and ROPE. */

#define NORM_GROUP 64

/* One work-group per row: squares summed in a local-memory tree, then the row scaled. x is fully
 * read before y is written, so y may be x. */
__kernel __attribute__((reqd_work_group_size(NORM_GROUP, 1, 1))) void
moira_rmsnorm(__global const float *x, long x_off, long x_stride, __global const float *w,
              long w_off, __global float *y, long y_off, long y_stride, int cols, float eps) {
    __local float partial[NORM_GROUP];
    int lid = get_local_id(0);
    long t = get_group_id(1);
    __global const float *row = x + x_off + t * x_stride;
    float sum = 0.0f;
    for (int i = lid; i < cols; i += NORM_GROUP)
        sum += row[i] * row[i];
    partial[lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int half_width = NORM_GROUP / 2; half_width > 0; half_width /= 2) {
        if (lid < half_width) partial[lid] += partial[lid + half_width];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float inv_rms = rsqrt(partial[0] / (float)cols + eps);
    __global float *out = y + y_off + t * y_stride;
    for (int i = lid; i < cols; i += NORM_GROUP)
        out[i] = row[i] * inv_rms * w[w_off + i];
}

/* Copies rows when rope writes to a different tensor than it reads. */
__kernel void moira_copy_rows(__global const float *x, long x_off, long x_stride, __global float *y,
                              long y_off, long y_stride, int cols) {
    int c = get_global_id(0);
    long t = get_global_id(1);
    if (c < cols) y[y_off + t * y_stride + c] = x[x_off + t * x_stride + c];
}

/* 2 pi in three parts: 6.28125 (8 significant bits, so n * part1 subtracts exactly with fma),
 * then the f32 nearest to the rest, then what is left. */
#define TWO_PI_1 6.28125f
#define TWO_PI_2 0x1.fb5444p-10f
#define TWO_PI_3 0x1.68c234p-37f

/* Angles are pos * inv_freq with positions up to millions, where a plain f32 product is already
 * off by more than the tolerance: inv_freq comes as a (hi, lo) f32 pair, the product is formed
 * exactly with fma and reduced modulo 2 pi Cody-Waite style, so cos and sin see an argument
 * accurate to a few f32 ulps of pi, without needing fp64 on the device. */
__kernel void moira_rope(__global float *y, long y_off, long y_stride,
                         __global const int *positions, long positions_off,
                         __global const float *freqs, int n_heads, int head_stride, int rope_offset,
                         int pairs, float cos_sin_scale) {
    int i = get_global_id(0);
    int h = get_global_id(1);
    long t = get_global_id(2);
    if (i >= pairs || h >= n_heads) return;
    float p = (float)positions[positions_off + t];
    float hi = freqs[2 * i], lo = freqs[2 * i + 1];
    float product = p * hi;
    float product_error = fma(p, hi, -product);
    float n = rint(product * 0.15915494309189535f);
    float r = fma(-n, TWO_PI_1, product);
    r = fma(-n, TWO_PI_2, r);
    r = fma(-n, TWO_PI_3, r);
    r += product_error + p * lo;
    float c = cos(r) * cos_sin_scale, s = sin(r) * cos_sin_scale;
    __global float *slice = y + y_off + t * y_stride + (long)h * head_stride + rope_offset;
    float even = slice[2 * i], odd = slice[2 * i + 1];
    slice[2 * i] = even * c - odd * s;
    slice[2 * i + 1] = even * s + odd * c;
}
