/* Weight formats: the descriptor and row-bytes helper, MXFP4 and int8 encoding against bytes
 * worked out by hand here (nibble order, E2M1 rounding, E8M0 including 0 and 255, int8 scale
 * rounding), and the safetensors reader pairing quantised weights with their scales, hostile
 * layouts included. */
#include "runtime/int8_weights.h"
#include "runtime/mxfp4.h"
#include "runtime/safetensors.h"
#include "runtime/weight_format.h"
#include "tests/unit/testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Sizes: bits times elements, and each format's scales per matrix. */
static void test_descriptor(void) {
    CHECK(moira_weight_row_bytes(MOIRA_DTYPE_F32, 64) == 256);
    CHECK(moira_weight_row_bytes(MOIRA_DTYPE_BF16, 64) == 128);
    CHECK(moira_weight_row_bytes(MOIRA_DTYPE_F8_E4M3, 64) == 64);
    CHECK(moira_weight_row_bytes(MOIRA_DTYPE_MXFP4, 64) == 32);
    CHECK(moira_weight_row_bytes(MOIRA_DTYPE_INT8, 64) == 64);
    CHECK(moira_weight_row_bytes(MOIRA_DTYPE_MXFP4, 33) == 0); /* half a byte is no row */
    CHECK(moira_weight_row_bytes(MOIRA_DTYPE_I32, 4) == 0);    /* not a weight */
    CHECK(moira_weight_scale_bytes(MOIRA_DTYPE_BF16, 4, 64) == 0);
    CHECK(moira_weight_scale_bytes(MOIRA_DTYPE_MXFP4, 4, 64) == 8);       /* 4 rows x 2 blocks */
    CHECK(moira_weight_scale_bytes(MOIRA_DTYPE_INT8, 4, 64) == 16);       /* 4 f32 */
    CHECK(moira_weight_scale_bytes(MOIRA_DTYPE_F8_E4M3, 200, 300) == 24); /* 2 x 3 f32 */
    CHECK(moira_weight_shape_fits(MOIRA_DTYPE_MXFP4, 3, 64));
    CHECK(!moira_weight_shape_fits(MOIRA_DTYPE_MXFP4, 3, 48));
    CHECK(moira_weight_shape_fits(MOIRA_DTYPE_INT8, 3, 47));
    const moira_weight_format_t *mx = moira_weight_format(MOIRA_DTYPE_MXFP4);
    CHECK(mx && mx->bits == 4 && mx->scale == MOIRA_SCALE_BLOCK_E8M0 && mx->block_cols == 32);
    CHECK(moira_weight_format_named("int8") == moira_weight_format(MOIRA_DTYPE_INT8));
    CHECK(moira_weight_format_named("int4") == NULL);
}

/* E2M1: the eight magnitudes, the sign bit, and rounding at every midpoint (ties go to the code
 * with an even mantissa bit: 0, 2, 4, 6). */
static void test_e2m1(void) {
    static const float magnitudes[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    for (int c = 0; c < 8; c++) {
        CHECK_MSG(moira_e2m1_to_f32((uint8_t)c) == magnitudes[c], "code %d", c);
        CHECK_MSG(moira_e2m1_to_f32((uint8_t)(c | 8)) == -magnitudes[c], "code %d", c | 8);
        CHECK_MSG(moira_f32_to_e2m1(magnitudes[c]) == c, "encode %g", magnitudes[c]);
    }
    CHECK(signbit(moira_e2m1_to_f32(8)));
    static const struct {
        float value;
        uint8_t code;
    } cases[] = {{0.25f, 0}, {0.26f, 1}, {0.75f, 2},  {1.25f, 2}, {1.75f, 4},
                 {2.5f, 4},  {2.51f, 5}, {3.5f, 6},   {5.0f, 6},  {5.01f, 7},
                 {100, 7},   {-0.3f, 9}, {-5.0f, 14}, {-0.0f, 8}, {0.1f, 0}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        CHECK_MSG(moira_f32_to_e2m1(cases[i].value) == cases[i].code, "encode %g: got %d want %d",
                  cases[i].value, moira_f32_to_e2m1(cases[i].value), cases[i].code);
}

/* E8M0: a bare exponent, 0 is 2^-127 (an f32 subnormal), 255 NaN; the OCP scale of a block is
 * floor(log2(amax)) - 2. */
static void test_e8m0(void) {
    CHECK(moira_e8m0_to_f32(127) == 1.0f);
    CHECK(moira_e8m0_to_f32(128) == 2.0f);
    CHECK(moira_e8m0_to_f32(126) == 0.5f);
    CHECK(moira_e8m0_to_f32(0) == (float)ldexp(1.0, -127));
    CHECK(moira_e8m0_to_f32(0) > 0);
    CHECK(moira_e8m0_to_f32(254) == (float)ldexp(1.0, 127));
    CHECK(isnan(moira_e8m0_to_f32(255)));
    CHECK(moira_e8m0_for_amax(6.0f) == 127); /* floor(log2 6) = 2 */
    CHECK(moira_e8m0_for_amax(7.9f) == 127);
    CHECK(moira_e8m0_for_amax(8.0f) == 128);
    CHECK(moira_e8m0_for_amax(1.0f) == 125);
    CHECK(moira_e8m0_for_amax(0.0f) == 127); /* a block of zeros: scale 1 */
    CHECK(moira_e8m0_for_amax(1e-40f) == 0); /* 2^-133 clamps to the smallest scale */
    CHECK(moira_e8m0_for_amax(NAN) == 255);
}

/* One row of 64: block 0 has amax 6 (scale 127), block 1 amax 12 (scale 128). Bytes by hand:
 * x0 = 1 -> code 2, x1 = -0.5 -> 9, so byte 0 = 0x92 (x0 in the low nibble); x2 = 6 -> 7, x3 = 0
 * -> byte 1 = 0x07. Block 1: x32 = 12 / 2 = 6 -> 7, x33 = 3 / 2 = 1.5 -> 3: byte 16 = 0x37;
 * x34 = -1 / 2 = -0.5 -> 9, x35 = 0.7 / 2 = 0.35 -> 1 (0.5): byte 17 = 0x19. */
static void test_mxfp4_row(void) {
    float x[64] = {0};
    x[0] = 1, x[1] = -0.5f, x[2] = 6;
    x[32] = 12, x[33] = 3, x[34] = -1, x[35] = 0.7f;
    uint8_t packed[32], scales[2];
    moira_mxfp4_quantize_row(x, 64, packed, scales);
    CHECK(scales[0] == 127 && scales[1] == 128);
    CHECK_MSG(packed[0] == 0x92, "byte 0 = 0x%02x", packed[0]);
    CHECK_MSG(packed[1] == 0x07, "byte 1 = 0x%02x", packed[1]);
    CHECK_MSG(packed[16] == 0x37, "byte 16 = 0x%02x", packed[16]);
    CHECK_MSG(packed[17] == 0x19, "byte 17 = 0x%02x", packed[17]);
    CHECK(packed[2] == 0 && packed[18] == 0);
    float back[64];
    moira_mxfp4_dequantize_row(packed, scales, 64, back);
    CHECK(back[0] == 1 && back[1] == -0.5f && back[2] == 6 && back[3] == 0);
    CHECK(back[32] == 12 && back[33] == 3 && back[34] == -1 && back[35] == 1.0f);
    /* Through the format's row reader, row 1 of a 2-row matrix. */
    uint8_t two[64], two_scales[4];
    memset(two, 0, sizeof(two));
    memcpy(two + 32, packed, 32);
    two_scales[0] = two_scales[1] = 127;
    memcpy(two_scales + 2, scales, 2);
    float row[64];
    moira_weight_row_to_f32(MOIRA_DTYPE_MXFP4, two, two_scales, 2, 64, 1, row);
    CHECK(memcmp(row, back, sizeof(row)) == 0);
}

/* int8: scale amax / 127 in f32, values rounded to nearest even. A row with amax 127 has scale 1,
 * so 0.5 -> 0 and -2.5 -> -2 (ties even), 1.5 -> 2. amax 1.27 gives scale 1.27f / 127. */
static void test_int8_row(void) {
    float x[4] = {127, 0.5f, 1.5f, -2.5f};
    int8_t q[4];
    CHECK(moira_int8_quantize_row(x, 4, q) == 1.0f);
    CHECK(q[0] == 127 && q[1] == 0 && q[2] == 2 && q[3] == -2);
    float y[3] = {-1.27f, 0.635f, 0};
    float scale = moira_int8_quantize_row(y, 3, q);
    CHECK(scale == 1.27f / 127.0f);
    CHECK(q[0] == -127 && q[2] == 0);
    CHECK(q[1] == (int8_t)rintf(0.635f / scale));
    float zeros[2] = {0, 0};
    CHECK(moira_int8_quantize_row(zeros, 2, q) == 1.0f && q[0] == 0);
    float back[3];
    int8_t stored[3] = {-127, 64, 1};
    moira_int8_dequantize_row(stored, 0.5f, 3, back);
    CHECK(back[0] == -63.5f && back[1] == 32 && back[2] == 0.5f);
}

/* A whole tensor through moira_tensor_convert and back: the dequantised values are the ones the
 * row codecs give, and a row that is not a multiple of 32 is an input error for MXFP4. */
static void test_tensor_convert(void) {
    moira_tensor_t src, q, scale, back;
    CHECK_OK(moira_tensor_alloc_f32(3, 64, &src));
    moira_test_fill_uniform(src.data, 3 * 64, 7, -2, 2);
    CHECK_OK(moira_tensor_convert(&src, MOIRA_DTYPE_MXFP4, &q, &scale));
    CHECK(moira_tensor_nbytes(&q) == 3 * 32 && scale.dtype == MOIRA_DTYPE_E8M0);
    CHECK_OK(moira_tensor_to_f32(&q, &back));
    for (int r = 0; r < 3; r++) {
        uint8_t packed[32], s[2];
        float want[64];
        moira_mxfp4_quantize_row((const float *)src.data + r * 64, 64, packed, s);
        moira_mxfp4_dequantize_row(packed, s, 64, want);
        CHECK_MSG(memcmp(want, (float *)back.data + r * 64, sizeof(want)) == 0, "mxfp4 row %d", r);
    }
    moira_tensor_release(&q);
    moira_tensor_release(&scale);
    moira_tensor_release(&back);
    CHECK_OK(moira_tensor_convert(&src, MOIRA_DTYPE_INT8, &q, &scale));
    CHECK(scale.rank == 1 && scale.shape[0] == 3 && moira_tensor_nbytes(&q) == 3 * 64);
    CHECK_OK(moira_tensor_to_f32(&q, &back));
    const float *x = src.data;
    for (int r = 0; r < 3; r++) {
        float amax = 0;
        for (int c = 0; c < 64; c++)
            amax = fmaxf(amax, fabsf(x[r * 64 + c]));
        float s = amax / 127.0f;
        for (int c = 0; c < 64; c++)
            CHECK_MSG(((float *)back.data)[r * 64 + c] == rintf(x[r * 64 + c] / s) * s,
                      "int8 [%d, %d]", r, c);
    }
    moira_tensor_release(&q);
    moira_tensor_release(&scale);
    moira_tensor_release(&back);
    moira_tensor_release(&src);
    CHECK_OK(moira_tensor_alloc_f32(2, 48, &src));
    CHECK_CODE(moira_tensor_convert(&src, MOIRA_DTYPE_MXFP4, &q, &scale), MOIRA_CODE_INVALID_INPUT);
    moira_tensor_release(&src);
}

/* A safetensors file in memory: header JSON padded to 8 bytes, then `data`. */
static moira_status_t open_bytes(const char *header, const void *data, size_t data_bytes,
                                 moira_safetensors_t **out) {
    size_t hlen = strlen(header), padded = (hlen + 7) / 8 * 8;
    unsigned char *bytes = calloc(1, 8 + padded + data_bytes);
    uint64_t n = padded;
    memcpy(bytes, &n, 8);
    memset(bytes + 8, ' ', padded);
    memcpy(bytes + 8, header, hlen);
    if (data_bytes) memcpy(bytes + 8 + padded, data, data_bytes);
    moira_status_t status =
        moira_safetensors_open_memory("q.safetensors", bytes, 8 + padded + data_bytes, out);
    free(bytes);
    return status;
}

/* Checks that opening fails with INVALID_INPUT and a message naming the file and `needle`. */
static void check_hostile(const char *header, size_t data_bytes, const char *needle) {
    unsigned char data[4096] = {0};
    moira_safetensors_t *f = NULL;
    moira_status_t status = open_bytes(header, data, data_bytes, &f);
    const char *message = moira_status_message(status);
    CHECK_MSG(moira_status_code(status) == MOIRA_CODE_INVALID_INPUT &&
                  strstr(message, "q.safetensors") && strstr(message, needle),
              "hostile %s: %s", needle, status ? message : "opened");
    moira_status_free(status);
    moira_safetensors_close(f);
}

/* Written by Moira's writer and read back: the reader pairs X.weight with X.scale (MXFP4) or
 * X.weight_scale (int8); the hostile layouts are refused naming the file. */
static void test_safetensors(void) {
    moira_tensor_t src, mx, mx_scale, i8, i8_scale;
    CHECK_OK(moira_tensor_alloc_f32(4, 64, &src));
    moira_test_fill_uniform(src.data, 4 * 64, 3, -1, 1);
    CHECK_OK(moira_tensor_convert(&src, MOIRA_DTYPE_MXFP4, &mx, &mx_scale));
    CHECK_OK(moira_tensor_convert(&src, MOIRA_DTYPE_INT8, &i8, &i8_scale));
    char path[] = "/tmp/moira_wf_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    moira_named_tensor_t named[] = {{"a.weight", &mx},
                                    {"a.scale", &mx_scale},
                                    {"b.weight", &i8},
                                    {"b.weight_scale", &i8_scale},
                                    {"plain.bias", &src}};
    CHECK_OK(moira_safetensors_write(path, named, 5));
    moira_safetensors_t *f = NULL;
    CHECK_OK(moira_safetensors_open(path, &f));
    const moira_tensor_t *a = NULL, *b = NULL;
    if (f) {
        CHECK_OK(moira_safetensors_find(f, "a.weight", &a));
        CHECK_OK(moira_safetensors_find(f, "b.weight", &b));
        CHECK(moira_safetensors_has(f, "a.weight"));
    }
    if (a && b) {
        CHECK(a->dtype == MOIRA_DTYPE_MXFP4 && a->shape[0] == 4 && a->shape[1] == 64 && a->scale);
        CHECK(b->dtype == MOIRA_DTYPE_INT8 && b->shape[1] == 64 && b->scale);
        CHECK(memcmp(a->data, mx.data, 4 * 32) == 0 &&
              memcmp(a->scale->data, mx_scale.data, 8) == 0);
        float want[64], got[64];
        for (int r = 0; r < 4; r++) {
            moira_tensor_row_to_f32(&i8, r, want);
            moira_tensor_row_to_f32(b, r, got);
            CHECK_MSG(memcmp(want, got, sizeof(want)) == 0, "int8 row %d", r);
            moira_tensor_row_to_f32(&mx, r, want);
            moira_tensor_row_to_f32(a, r, got);
            CHECK_MSG(memcmp(want, got, sizeof(want)) == 0, "mxfp4 row %d", r);
        }
    }
    moira_safetensors_close(f);
    remove(path);
    moira_tensor_release(&mx);
    moira_tensor_release(&mx_scale);
    moira_tensor_release(&i8);
    moira_tensor_release(&i8_scale);
    moira_tensor_release(&src);

    /* An unpaired U8 weight stays a tensor Moira does not compute with. */
    moira_safetensors_t *g = NULL;
    unsigned char zeros[64] = {0};
    CHECK_OK(
        open_bytes("{\"w.weight\":{\"dtype\":\"U8\",\"shape\":[2,16],\"data_offsets\":[0,32]}}",
                   zeros, 32, &g));
    const moira_tensor_t *w = NULL;
    if (g) CHECK_CODE(moira_safetensors_find(g, "w.weight", &w), MOIRA_CODE_UNSUPPORTED);
    moira_safetensors_close(g);

    check_hostile("{\"w.weight\":{\"dtype\":\"U8\",\"shape\":[2,16],\"data_offsets\":[0,32]},"
                  "\"w.scale\":{\"dtype\":\"F8_E8M0\",\"shape\":[2,2],\"data_offsets\":[32,36]}}",
                  36, "do not match");
    check_hostile("{\"w.weight\":{\"dtype\":\"U8\",\"shape\":[2,24],\"data_offsets\":[0,48]},"
                  "\"w.scale\":{\"dtype\":\"F8_E8M0\",\"shape\":[2,1],\"data_offsets\":[48,50]}}",
                  50, "not a multiple of 32");
    check_hostile("{\"w.weight\":{\"dtype\":\"U8\",\"shape\":[2,16],\"data_offsets\":[0,32]},"
                  "\"w.scale\":{\"dtype\":\"F32\",\"shape\":[2,1],\"data_offsets\":[32,40]}}",
                  40, "must be F8_E8M0 or U8");
    check_hostile("{\"w.weight\":{\"dtype\":\"I8\",\"shape\":[2,16],\"data_offsets\":[0,32]},"
                  "\"w.weight_scale\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[32,44]}}",
                  44, "one per output row");
    check_hostile("{\"w.weight\":{\"dtype\":\"U8\",\"shape\":[2,16],\"data_offsets\":[0,32]},"
                  "\"w.weight_scale\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[32,40]}}",
                  40, "must be I8");
    check_hostile("{\"w.weight\":{\"dtype\":\"U8\",\"shape\":[2,16],\"data_offsets\":[0,32]},"
                  "\"w.scale\":{\"dtype\":\"U8\",\"shape\":[2,1],\"data_offsets\":[32,34]},"
                  "\"w.weight_scale\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[36,44]}}",
                  44, "both");
}

int main(void) {
    test_descriptor();
    test_e2m1();
    test_e8m0();
    test_mxfp4_row();
    test_int8_row();
    test_tensor_convert();
    test_safetensors();
    return moira_test_finish("test_weight_format");
}
