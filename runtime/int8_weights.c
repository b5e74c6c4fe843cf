/* int8 weight rows (int8_weights.h). */
#include "runtime/int8_weights.h"

#include <math.h>

/* Division by the f32 scale, then rintf (round to nearest even in the default mode), clamped so
 * a rounding up of amax / scale past 127 can never wrap. */
float moira_int8_quantize_row(const float *src, int64_t cols, int8_t *q) {
    float amax = 0;
    for (int64_t c = 0; c < cols; c++)
        amax = fmaxf(amax, fabsf(src[c]));
    float scale = amax > 0 ? amax / 127.0f : 1.0f;
    for (int64_t c = 0; c < cols; c++) {
        float v = rintf(src[c] / scale);
        q[c] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
    }
    return scale;
}

void moira_int8_dequantize_row(const int8_t *q, float scale, int64_t cols, float *dst) {
    for (int64_t c = 0; c < cols; c++)
        dst[c] = (float)q[c] * scale;
}
