/* Staging expert matrices for upload (ops/upload_staging.c): experts stored in different dtypes
 * (a BF16 and an F16 expert in one layer, which DESIGN.md §5 allows) must reach the device
 * exactly. Issue 20: every expert was converted to the first one's dtype, rounding the F16 expert
 * to BF16, and `moira run` reported its own device DISAGREED. Values here are exact in their own
 * dtype, so the expected device values are known exactly. */
#include <stdlib.h>
#include <string.h>

#include "ops/upload_staging.h"
#include "runtime/dtype.h"
#include "testing.h"

#define ROWS 4
#define COLS 8

/* Lays out and fills a staging image for `mats`, as moira_staging_upload does before copying. */
static unsigned char *stage(const moira_tensor_t *const *mats, int64_t count,
                            moira_dtensor_t *out) {
    moira_staging_t measure = {.weight_dtype = -1};
    CHECK_OK(moira_staging_place_matrices(&measure, mats, count, true, out));
    unsigned char *image = calloc(1, measure.used + 64);
    moira_staging_t fill = {.image = image, .weight_dtype = -1};
    CHECK_OK(moira_staging_place_matrices(&fill, mats, count, true, out));
    return image;
}

int main(void) {
    int64_t shape[2] = {ROWS, COLS};
    uint16_t bf16[ROWS * COLS], f16[ROWS * COLS];
    float want_bf16[ROWS * COLS], want_f16[ROWS * COLS];
    for (int i = 0; i < ROWS * COLS; i++) {
        /* 1 + i/1024 needs 10 mantissa bits: exact in f16, rounded in bf16 (7 bits). */
        want_f16[i] = 1.0f + (float)i / 1024.0f;
        f16[i] = moira_f32_to_f16(want_f16[i]);
        want_bf16[i] = (float)(i - 16) * 0.5f; /* exact in bf16 */
        bf16[i] = moira_f32_to_bf16(want_bf16[i]);
    }
    moira_tensor_t a = moira_tensor_view(MOIRA_DTYPE_BF16, 2, shape, bf16);
    moira_tensor_t b = moira_tensor_view(MOIRA_DTYPE_F16, 2, shape, f16);

    /* Mixed: both land as f32, each value exactly. */
    const moira_tensor_t *mixed[2] = {&a, &b};
    moira_dtensor_t out;
    unsigned char *image = stage(mixed, 2, &out);
    CHECK_MSG(out.dtype == MOIRA_DTYPE_F32, "mixed experts staged as %s, expected F32",
              moira_dtype_name(out.dtype));
    if (out.dtype == MOIRA_DTYPE_F32) {
        const float *got = (const float *)(image + out.offset);
        CHECK(memcmp(got, want_bf16, sizeof(want_bf16)) == 0);
        CHECK(memcmp(got + ROWS * COLS, want_f16, sizeof(want_f16)) == 0);
    }
    free(image);

    /* Agreeing dtypes stay as stored (no doubling of the bytes). */
    const moira_tensor_t *same[2] = {&b, &b};
    image = stage(same, 2, &out);
    CHECK(out.dtype == MOIRA_DTYPE_F16);
    if (out.dtype == MOIRA_DTYPE_F16)
        CHECK(memcmp(image + out.offset + sizeof(f16), f16, sizeof(f16)) == 0);
    free(image);
    return moira_test_finish("test_upload_staging");
}
