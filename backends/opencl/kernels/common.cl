/* Shared by every Moira OpenCL kernel: weight decoding and small helpers.
 *
 * Weights arrive in their stored dtype and are widened to f32 as they are read, so no dequantised
 * copy of a model is ever made. A weight operand is passed as six kernel arguments (WEIGHT_PARAMS):
 * the buffer, the byte offset of its first element, its dtype, the byte offset of its scales
 * (fp8: f32 [ceil(rows/128), ceil(cols/128)] per matrix; MXFP4 and INT8 below; same buffer) and
 * the rows and columns of one matrix. Arithmetic is f32 throughout. */

/* Lets the tests (and anyone checking their driver) see how a failed build is reported:
 * MOIRA_OPENCL_BUILD_OPTIONS=-DMOIRA_BUILD_SELFTEST_ERROR must fail with this in the build log. */
#ifdef MOIRA_BUILD_SELFTEST_ERROR
#error "MOIRA_BUILD_SELFTEST_ERROR: a deliberate build failure"
#endif

#define MOIRA_DT_F32 0
#define MOIRA_DT_F16 1
#define MOIRA_DT_BF16 2
#define MOIRA_DT_F8_E4M3 3
#define MOIRA_DT_MXFP4 4
#define MOIRA_DT_INT8 5
#define MOIRA_FP8_BLOCK 128

#define WEIGHT_PARAMS(w)                                                                           \
    __global const uchar *w, ulong w##_off, int w##_dtype, ulong w##_scale_off, long w##_rows,     \
        long w##_cols
#define WEIGHT_PASS(w) w, w##_off, w##_dtype, w##_scale_off, w##_rows, w##_cols

/* MXFP4 (E2M1 pairs, the even input in the low nibble, one E8M0 scale byte per 32 inputs of a
 * row, [rows, cols/32] per matrix) and INT8 (one f32 scale per row, [rows] per matrix): their
 * scales sit at the scale offset like fp8's. */
__constant float moira_e2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* 2^(bits - 127), NaN for 255. */
float moira_e8m0(uint bits) {
    return bits == 255u ? as_float(0x7FC00000u) : ldexp(1.0f, (int)bits - 127);
}

/* Element (row, col) of an MXFP4 weight. */
float moira_mxfp4_at(WEIGHT_PARAMS(w), long matrix, long row, long col) {
    long r = matrix * w_rows + row;
    uchar byte = w[w_off + r * (w_cols / 2) + col / 2];
    float scale = moira_e8m0(w[w_scale_off + r * (w_cols / 32) + col / 32]);
    return moira_e2m1[(col & 1) ? byte >> 4 : byte & 15] * scale;
}

/* Elements (row, col .. col+3) of an MXFP4 weight, col a multiple of 4: one block scale. */
float4 moira_mxfp4_at4(WEIGHT_PARAMS(w), long matrix, long row, long col) {
    long r = matrix * w_rows + row;
    uchar2 b = vload2(0, w + w_off + r * (w_cols / 2) + col / 2);
    float scale = moira_e8m0(w[w_scale_off + r * (w_cols / 32) + col / 32]);
    return (float4)(moira_e2m1[b.x & 15], moira_e2m1[b.x >> 4], moira_e2m1[b.y & 15],
                    moira_e2m1[b.y >> 4]) *
           scale;
}

/* Element (row, col) of an INT8 weight: the byte times its row's scale. */
float moira_int8_at(WEIGHT_PARAMS(w), long matrix, long row, long col) {
    long r = matrix * w_rows + row;
    return (float)((__global const char *)(w + w_off))[r * w_cols + col] *
           ((__global const float *)(w + w_scale_off))[r];
}

/* Elements (row, col .. col+3) of an INT8 weight. */
float4 moira_int8_at4(WEIGHT_PARAMS(w), long matrix, long row, long col) {
    long r = matrix * w_rows + row;
    return convert_float4(vload4(0, (__global const char *)(w + w_off) + r * w_cols + col)) *
           ((__global const float *)(w + w_scale_off))[r];
}

/* Element (row, col) of an MXFP4 or INT8 weight. */
float moira_quant_at(WEIGHT_PARAMS(w), long matrix, long row, long col) {
    return w_dtype == MOIRA_DT_INT8 ? moira_int8_at(WEIGHT_PASS(w), matrix, row, col)
                                    : moira_mxfp4_at(WEIGHT_PASS(w), matrix, row, col);
}

/* Elements (row, col .. col+3), col a multiple of 4. */
float4 moira_quant_at4(WEIGHT_PARAMS(w), long matrix, long row, long col) {
    return w_dtype == MOIRA_DT_INT8 ? moira_int8_at4(WEIGHT_PASS(w), matrix, row, col)
                                    : moira_mxfp4_at4(WEIGHT_PASS(w), matrix, row, col);
}

/* e4m3fn: no infinities; S.1111.111 is NaN; subnormals are mantissa * 2^-9. */
float moira_fp8_e4m3(uint bits) {
    uint sign = (bits & 0x80u) << 24;
    uint exponent = (bits >> 3) & 0xFu;
    uint mantissa = bits & 0x7u;
    if ((bits & 0x7Fu) == 0x7Fu) return as_float(sign | 0x7FC00000u);
    if (exponent == 0) return as_float(sign | as_uint((float)mantissa * 0x1p-9f));
    return as_float(sign | ((exponent + 120u) << 23) | (mantissa << 20));
}

/* Element (row, col) of matrix `matrix` of a weight operand, as f32. */
float moira_weight_at(WEIGHT_PARAMS(w), long matrix, long row, long col) {
    long index = (matrix * w_rows + row) * w_cols + col;
    __global const uchar *base = w + w_off;
    if (w_dtype == MOIRA_DT_F32) return ((__global const float *)base)[index];
    if (w_dtype == MOIRA_DT_F16) return vload_half((size_t)index, (__global const half *)base);
    if (w_dtype == MOIRA_DT_BF16)
        return as_float((uint)((__global const ushort *)base)[index] << 16);
    if (w_dtype >= MOIRA_DT_MXFP4) return moira_quant_at(WEIGHT_PASS(w), matrix, row, col);
    long scale_cols = (w_cols + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK;
    long scales_per_matrix = (w_rows + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK * scale_cols;
    __global const float *scales = (__global const float *)(w + w_scale_off);
    float scale = scales[matrix * scales_per_matrix + row / MOIRA_FP8_BLOCK * scale_cols +
                         col / MOIRA_FP8_BLOCK];
    return moira_fp8_e4m3(base[index]) * scale;
}

/* silu(z) = z / (1 + exp(-z)); exp overflowing for very negative z gives -0, the right limit. */
float moira_silu(float z) {
    return z / (1.0f + exp(-z));
}

/* Elements (row, col .. col+3) of a weight, widened: one vector load for f32/f16/bf16, four fp8
 * bytes sharing one block scale (col is a multiple of 4, so the four never straddle a block). */
float4 moira_weight_at4(WEIGHT_PARAMS(w), long matrix, long row, long col) {
    long index = (matrix * w_rows + row) * w_cols + col;
    __global const uchar *base = w + w_off;
    if (w_dtype == MOIRA_DT_F32) return vload4(0, (__global const float *)base + index);
    if (w_dtype == MOIRA_DT_F16) return vload_half4(0, (__global const half *)base + index);
    if (w_dtype == MOIRA_DT_BF16)
        return as_float4(convert_uint4(vload4(0, (__global const ushort *)base + index)) << 16);
    if (w_dtype >= MOIRA_DT_MXFP4) return moira_quant_at4(WEIGHT_PASS(w), matrix, row, col);
    long scale_cols = (w_cols + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK;
    long scales_per_matrix = (w_rows + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK * scale_cols;
    __global const float *scales = (__global const float *)(w + w_scale_off);
    float scale = scales[matrix * scales_per_matrix + row / MOIRA_FP8_BLOCK * scale_cols +
                         col / MOIRA_FP8_BLOCK];
    uchar4 bytes = vload4(0, base + index);
    return (float4)(moira_fp8_e4m3(bytes.x), moira_fp8_e4m3(bytes.y), moira_fp8_e4m3(bytes.z),
                    moira_fp8_e4m3(bytes.w)) *
           scale;
}
