/* MXFP4 encoding and decoding (mxfp4.h). */
#include "runtime/mxfp4.h"

#include <math.h>
#include <string.h>

const float moira_e2m1_values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* Midpoints between consecutive magnitudes: a value exactly on one goes to the code with the even
 * mantissa bit (codes 0, 2, 4, 6), which is the lower neighbour at 0.25, 1.25, 2.5 and 5 and the
 * upper one at 0.75, 1.75 and 3.5. */
uint8_t moira_f32_to_e2m1(float value) {
    if (isnan(value)) return 0;
    uint8_t sign = signbit(value) ? 8 : 0;
    float m = fabsf(value);
    static const float mid[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    uint8_t code = 7;
    for (uint8_t c = 0; c < 7; c++) {
        if (m < mid[c] || (m == mid[c] && (c & 1) == 0)) {
            code = c;
            break;
        }
    }
    return sign | code;
}

/* ldexpf builds the power of two exactly, down to 2^-127, which is subnormal in f32. */
float moira_e8m0_to_f32(uint8_t bits) {
    if (bits == 255) return NAN;
    return ldexpf(1.0f, (int)bits - 127);
}

/* OCP MX v1.0 §6.3: X = 2^(floor(log2(amax)) - emax_elem), emax_elem = 2 for E2M1. frexpf gives
 * amax = f * 2^e with f in [0.5, 1), so floor(log2(amax)) = e - 1 exactly, subnormals included. */
uint8_t moira_e8m0_for_amax(float amax) {
    if (isnan(amax)) return 255;
    if (amax == 0 || isinf(amax)) return amax == 0 ? 127 : 254;
    int e = 0;
    frexpf(amax, &e);
    int biased = (e - 1) - 2 + 127;
    return (uint8_t)(biased < 0 ? 0 : biased > 254 ? 254 : biased);
}

/* Each 32-input block gets its scale from its own amax, then every element is rounded to E2M1
 * after division by that power of two (exact), so the only error is E2M1's rounding. */
void moira_mxfp4_quantize_row(const float *src, int64_t cols, uint8_t *packed, uint8_t *scales) {
    memset(packed, 0, (size_t)(cols / 2));
    for (int64_t b = 0; b < cols / MOIRA_MXFP4_BLOCK; b++) {
        const float *x = src + b * MOIRA_MXFP4_BLOCK;
        float amax = 0;
        for (int i = 0; i < MOIRA_MXFP4_BLOCK; i++)
            amax = isnan(x[i]) || isnan(amax) ? NAN : fmaxf(amax, fabsf(x[i]));
        uint8_t scale = moira_e8m0_for_amax(amax);
        scales[b] = scale;
        int exponent = scale == 255 ? 0 : (int)scale - 127;
        for (int i = 0; i < MOIRA_MXFP4_BLOCK; i++) {
            uint8_t code = moira_f32_to_e2m1(ldexpf(x[i], -exponent));
            int64_t k = b * MOIRA_MXFP4_BLOCK + i;
            packed[k / 2] |= (uint8_t)(k & 1 ? code << 4 : code);
        }
    }
}

void moira_mxfp4_dequantize_row(const uint8_t *packed, const uint8_t *scales, int64_t cols,
                                float *dst) {
    for (int64_t k = 0; k < cols; k++) {
        uint8_t byte = packed[k / 2];
        float scale = scales ? moira_e8m0_to_f32(scales[k / MOIRA_MXFP4_BLOCK]) : 1.0f;
        dst[k] = moira_e2m1_to_f32(k & 1 ? byte >> 4 : byte) * scale;
    }
}
