/* Packing quantised weights and quantising activations for the int8 tiles (quant_panels.h). */
#include "backends/cpu/quant_panels.h"

#include <math.h>
#include <string.h>

#include "backends/cpu/cpu_isa.h"
#include "runtime/mxfp4.h"

size_t moira_cpu_quant_panel_bytes(moira_dtype_t dtype, int64_t cols) {
    size_t blocks = (size_t)moira_cpu_quant_blocks(cols);
    /* Whole cache lines, so every panel (and every 64-byte load of one) starts on one. */
    return dtype == MOIRA_DTYPE_MXFP4 ? blocks * 256 + (blocks * 16 + 63) / 64 * 64
                                      : blocks * 512 + 64;
}

int32_t moira_cpu_quant_offset(moira_dtype_t dtype) {
    return dtype == MOIRA_DTYPE_MXFP4 ? 12 : 128;
}

/* The E2M1 code of input k of a stored MXFP4 row (low nibble = even input). */
static uint8_t nibble(const unsigned char *row, int64_t k) {
    return (uint8_t)(k & 1 ? row[k / 2] >> 4 : row[k / 2] & 15);
}

/* Rows past the matrix and inputs past cols are zero weights: MXFP4 code 0, INT8 0 (0x80 stored),
 * scale bytes 127 (1.0) and f32 scales 0. */
void moira_cpu_quant_pack_panel(moira_dtype_t dtype, const unsigned char *data,
                                const unsigned char *scales, int64_t rows, int64_t cols,
                                int64_t panel, unsigned char *dst) {
    int64_t blocks = moira_cpu_quant_blocks(cols);
    if (dtype == MOIRA_DTYPE_MXFP4) {
        memset(dst, 0, (size_t)blocks * 256);
        memset(dst + blocks * 256, 127, (size_t)blocks * 16);
    } else {
        memset(dst, 0x80, (size_t)blocks * 512);
        memset(dst + blocks * 512, 0, 64);
    }
    for (int j = 0; j < 16; j++) {
        int64_t row = panel * 16 + j;
        if (row >= rows) break;
        if (dtype == MOIRA_DTYPE_MXFP4) {
            const unsigned char *src = data + (size_t)row * (size_t)(cols / 2);
            for (int64_t k = 0; k < cols; k++) {
                int64_t b = k / 32, within = k % 32, c = within / 8, i = within % 4;
                int high = (within % 8) >= 4;
                dst[b * 256 + c * 64 + 4 * j + i] |= (uint8_t)(nibble(src, k) << (high ? 4 : 0));
            }
            for (int64_t b = 0; b < cols / 32; b++)
                dst[blocks * 256 + b * 16 + j] = scales[row * (cols / 32) + b];
        } else {
            const int8_t *src = (const int8_t *)data + row * cols;
            for (int64_t k = 0; k < cols; k++) {
                int64_t b = k / 32, q = (k % 32) / 4, i = k % 4;
                dst[b * 512 + q * 64 + 4 * j + i] = (uint8_t)(src[k] ^ (int8_t)0x80);
            }
            memcpy(dst + blocks * 512 + 4 * j, scales + 4 * row, sizeof(float));
        }
    }
}

/* Round to nearest even (rintf), so q is within half a step of x / scale; a block of zeros gets
 * scale 0 and contributes nothing. */
void moira_cpu_quantize_row(const float *x, int64_t n, int64_t blocks, int32_t offset,
                            float scale_factor, int8_t *q, float *scale, int32_t *corr) {
    for (int64_t b = 0; b < blocks; b++) {
        int64_t first = b * MOIRA_CPU_QBLOCK, last = first + MOIRA_CPU_QBLOCK;
        if (last > n) last = n;
        float amax = 0;
        for (int64_t k = first; k < last; k++)
            amax = fmaxf(amax, fabsf(x[k]));
        float step = amax / 127.0f, inverse = amax > 0 ? 127.0f / amax : 0;
        int32_t sum = 0;
        for (int64_t k = first; k < first + MOIRA_CPU_QBLOCK; k++) {
            int8_t v = k < last ? (int8_t)rintf(x[k] * inverse) : 0;
            q[k] = v;
            sum += v;
        }
        scale[b] = step * scale_factor;
        corr[b] = offset * sum;
    }
}

/* One pass over the scales at packing time, so tiles know before they run. */
bool moira_cpu_quant_extreme(moira_dtype_t dtype, const unsigned char *scales, size_t bytes) {
    if (dtype != MOIRA_DTYPE_MXFP4) return false;
    for (size_t i = 0; i < bytes; i++)
        if (scales[i] == 0 || scales[i] == 255) return true;
    return false;
}

moira_cpu_qtile_fn moira_cpu_qtile_kernel(moira_dtype_t dtype) {
    __builtin_cpu_init();
    if (moira_cpu_isa_best() < MOIRA_CPU_ISA_AVX512 || !__builtin_cpu_supports("avx512vnni") ||
        !__builtin_cpu_supports("avx512vbmi"))
        return NULL;
    return dtype == MOIRA_DTYPE_MXFP4  ? moira_cpu_qtile_avx512_vnni_mxfp4
           : dtype == MOIRA_DTYPE_INT8 ? moira_cpu_qtile_avx512_vnni_int8
                                       : NULL;
}
