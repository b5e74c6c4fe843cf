/* int8 weights: symmetric, one f32 scale per output row (`X.weight_scale` [out]), w = q * scale.
 * The scale is amax / 127 computed in f32, and q = round(w / scale) to nearest even, so the row's
 * largest magnitude is +-127 exactly and -128 is never used. */
#ifndef MOIRA_RUNTIME_INT8_WEIGHTS_H
#define MOIRA_RUNTIME_INT8_WEIGHTS_H

#include <stdint.h>

/* Quantises one row of `cols` floats into `q`; returns its scale (1 for a row of zeros). */
float moira_int8_quantize_row(const float *src, int64_t cols, int8_t *q);

/* cols floats q * scale. */
void moira_int8_dequantize_row(const int8_t *q, float scale, int64_t cols, float *dst);

#endif
