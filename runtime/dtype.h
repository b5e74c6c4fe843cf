/* Element types and their conversions.
 *
 * Storage types follow safetensors' names. Conversions to the narrow float types round to nearest,
 * ties to even; fp8 e4m3 (the "fn" variant: no infinities, one NaN pattern per sign, max 448)
 * saturates finite values to +-448 and maps NaN to NaN. */
#ifndef MOIRA_RUNTIME_DTYPE_H
#define MOIRA_RUNTIME_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum moira_dtype {
    MOIRA_DTYPE_F32 = 0,
    MOIRA_DTYPE_F16,
    MOIRA_DTYPE_BF16,
    MOIRA_DTYPE_F8_E4M3,
    MOIRA_DTYPE_I32,
    MOIRA_DTYPE_I64,
    /* Quantised weight formats (runtime/weight_format.h). They are not safetensors dtypes: the
     * reader makes them from a U8/I8 `X.weight` and its scale tensor, and the writer stores them
     * back as those. */
    MOIRA_DTYPE_MXFP4, /* E2M1 pairs, low nibble first; E8M0 scale per 32 inputs ("MXFP4") */
    MOIRA_DTYPE_INT8,  /* symmetric int8, one f32 scale per output row ("INT8") */
    MOIRA_DTYPE_E8M0,  /* an MX scale byte: 2^(e - 127), 255 NaN ("F8_E8M0") */
    MOIRA_DTYPE_COUNT,
} moira_dtype_t;

/* Bytes per element; 0 for MXFP4, whose elements are half a byte (use moira_weight_row_bytes,
 * runtime/weight_format.h, wherever a quantised weight may appear). */
size_t moira_dtype_size(moira_dtype_t dtype);

/* safetensors name ("F32", "BF16", "F8_E4M3", ...). Static storage. */
const char *moira_dtype_name(moira_dtype_t dtype);

/* Parses a safetensors dtype name Moira reads as a tensor of its own (F32, F16, BF16, F8_E4M3, I32,
 * I64); false for any other, the quantised formats' names included. */
bool moira_dtype_from_name(const char *name, moira_dtype_t *out_dtype);

/* Parses Moira's config spelling ("f32", "f16", "bf16", "fp8_e4m3"); false when unknown. */
bool moira_dtype_from_config_name(const char *name, moira_dtype_t *out_dtype);

/* Whether the type is one of the floating-point weight types (not the quantised formats). */
bool moira_dtype_is_float(moira_dtype_t dtype);

/* Whether the type is a quantised weight format (MXFP4, INT8): weights only, with scales. */
bool moira_dtype_is_quantized(moira_dtype_t dtype);

/* Whether a weight matrix may have this type: a float type or a quantised format. */
bool moira_dtype_is_weight(moira_dtype_t dtype);

float moira_f16_to_f32(uint16_t bits);
uint16_t moira_f32_to_f16(float value);
float moira_bf16_to_f32(uint16_t bits);
uint16_t moira_f32_to_bf16(float value);
float moira_fp8_e4m3_to_f32(uint8_t bits);
uint8_t moira_f32_to_fp8_e4m3(float value);

/* Converts `count` elements of a float type (F32/F16/BF16/F8_E4M3) to f32. `src` and `dst` are
 * borrowed and must not overlap. */
void moira_convert_to_f32(moira_dtype_t src_dtype, const void *src, float *dst, size_t count);

/* Converts `count` f32 values to a float type, rounding as above. */
void moira_convert_from_f32(moira_dtype_t dst_dtype, const float *src, void *dst, size_t count);

/* Rounds every value through `dtype` and back: what a device that stores in `dtype` sees. */
void moira_round_through(moira_dtype_t dtype, float *values, size_t count);

#endif
