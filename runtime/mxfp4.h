/* MXFP4 (OCP Microscaling, DeepSeek-V4's expert format): E2M1 elements, two per byte with the
 * even input in the low nibble, and one E8M0 scale byte per 32 consecutive inputs of a row:
 * w = e2m1 * 2^(scale - 127). E2M1 is sign, 2 exponent bits, 1 mantissa bit: the magnitudes
 * 0, 0.5, 1, 1.5, 2, 3, 4, 6. E8M0 is a bare biased exponent; 255 is NaN. */
#ifndef MOIRA_RUNTIME_MXFP4_H
#define MOIRA_RUNTIME_MXFP4_H

#include <stdint.h>

#define MOIRA_MXFP4_BLOCK 32

/* The 16 E2M1 codes as floats, code 8 being -0. */
extern const float moira_e2m1_values[16];

/* A nibble's value. Only the low 4 bits of `code` are read. */
static inline float moira_e2m1_to_f32(uint8_t code) {
    return moira_e2m1_values[code & 15];
}

/* The nearest E2M1 code to `value` (ties to the even mantissa), saturating at +-6. E2M1 has no
 * NaN: a NaN gives code 0, and its block's scale (moira_e8m0_for_amax) carries the NaN. */
uint8_t moira_f32_to_e2m1(float value);

/* 2^(bits - 127); NaN for 255. Exact in f32 (2^-127 is an f32 subnormal). */
float moira_e8m0_to_f32(uint8_t bits);

/* The OCP MX shared scale of a block whose largest magnitude is `amax`: the exponent
 * floor(log2(amax)) - 2 (E2M1's largest exponent), biased by 127 and clamped to [0, 254]; a block
 * of zeros gets 127 (scale 1). A NaN amax gives 255. */
uint8_t moira_e8m0_for_amax(float amax);

/* Quantises one row of `cols` (a multiple of 32) floats: `packed` gets cols / 2 bytes, `scales`
 * cols / 32 E8M0 bytes. */
void moira_mxfp4_quantize_row(const float *src, int64_t cols, uint8_t *packed, uint8_t *scales);

/* The inverse: cols floats from a packed row and its scales (NULL: every scale 1). */
void moira_mxfp4_dequantize_row(const uint8_t *packed, const uint8_t *scales, int64_t cols,
                                float *dst);

#endif
