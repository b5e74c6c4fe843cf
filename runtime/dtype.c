#include "runtime/dtype.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Both spellings live in one table so that adding a type cannot leave a name behind. */
static const struct {
    const char *name;
    const char *config_name; /* NULL: not a weight type a config can ask for */
    size_t size;
    bool is_float;
    bool stored; /* a safetensors dtype the reader takes as it is */
} dtype_info[MOIRA_DTYPE_COUNT] = {
    [MOIRA_DTYPE_F32] = {"F32", "f32", 4, true, true},
    [MOIRA_DTYPE_F16] = {"F16", "f16", 2, true, true},
    [MOIRA_DTYPE_BF16] = {"BF16", "bf16", 2, true, true},
    [MOIRA_DTYPE_F8_E4M3] = {"F8_E4M3", "fp8_e4m3", 1, true, true},
    [MOIRA_DTYPE_I32] = {"I32", NULL, 4, false, true},
    [MOIRA_DTYPE_I64] = {"I64", NULL, 8, false, true},
    [MOIRA_DTYPE_MXFP4] = {"MXFP4", NULL, 0, false, false},
    [MOIRA_DTYPE_INT8] = {"INT8", NULL, 1, false, false},
    [MOIRA_DTYPE_E8M0] = {"F8_E8M0", NULL, 1, false, false},
};

/* Out-of-range values come from corrupt headers or caller bugs; answering 0 lets callers detect
 * them without a separate validity check. */
size_t moira_dtype_size(moira_dtype_t dtype) {
    if ((unsigned)dtype >= MOIRA_DTYPE_COUNT) return 0;
    return dtype_info[dtype].size;
}

/* Never NULL, so the result can go straight into a log line or an error message. */
const char *moira_dtype_name(moira_dtype_t dtype) {
    if ((unsigned)dtype >= MOIRA_DTYPE_COUNT) return "INVALID";
    return dtype_info[dtype].name;
}

/* safetensors headers spell dtypes in upper case exactly; anything else is a malformed file, so the
 * match is case-sensitive. */
bool moira_dtype_from_name(const char *name, moira_dtype_t *out_dtype) {
    if (!name) return false;
    for (int i = 0; i < MOIRA_DTYPE_COUNT; i++) {
        if (dtype_info[i].stored && strcmp(name, dtype_info[i].name) == 0) {
            if (out_dtype) *out_dtype = (moira_dtype_t)i;
            return true;
        }
    }
    return false;
}

/* Configs only name the float weight types, so the integer types have no config spelling. */
bool moira_dtype_from_config_name(const char *name, moira_dtype_t *out_dtype) {
    if (!name) return false;
    for (int i = 0; i < MOIRA_DTYPE_COUNT; i++) {
        if (dtype_info[i].config_name && strcmp(name, dtype_info[i].config_name) == 0) {
            if (out_dtype) *out_dtype = (moira_dtype_t)i;
            return true;
        }
    }
    return false;
}

/* Lets callers reject integer tensors where weights are expected. */
bool moira_dtype_is_float(moira_dtype_t dtype) {
    if ((unsigned)dtype >= MOIRA_DTYPE_COUNT) return false;
    return dtype_info[dtype].is_float;
}

/* Quantised weights carry scales beside their data, so every path that reads them must know. */
bool moira_dtype_is_quantized(moira_dtype_t dtype) {
    return dtype == MOIRA_DTYPE_MXFP4 || dtype == MOIRA_DTYPE_INT8;
}

bool moira_dtype_is_weight(moira_dtype_t dtype) {
    return moira_dtype_is_float(dtype) || moira_dtype_is_quantized(dtype);
}

/* memcpy is the one type pun C11 defines for every compiler; it compiles to a register move. */
static inline uint32_t f32_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof(bits));
    return bits;
}

static inline float f32_from_bits(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof(value));
    return value;
}

/* Every f16 is exactly representable in f32, so decoding is exact; NaNs come out quiet, with their
 * payload kept, as F16C hardware does, so that a signalling NaN cannot trap later. */
float moira_f16_to_f32(uint16_t bits) {
    uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    uint32_t exponent = (bits >> 10) & 0x1Fu;
    uint32_t mantissa = bits & 0x3FFu;
    if (exponent == 0x1F) {
        if (mantissa == 0) return f32_from_bits(sign | 0x7F800000u);
        return f32_from_bits(sign | 0x7FC00000u | (mantissa << 13));
    }
    if (exponent == 0) {
        /* Zero or subnormal: mantissa * 2^-24 is exact in f32 and carries no rounding. */
        float magnitude = (float)mantissa * 0x1p-24f;
        return f32_from_bits(sign | f32_bits(magnitude));
    }
    return f32_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/* Rounds `mantissa` (with its implicit bit) right by `shift` bits, to nearest, ties to even. Used
 * for results that land in a narrow type's subnormal range, where the shift varies per value. */
static inline uint32_t shift_round_even(uint32_t mantissa, unsigned shift) {
    uint32_t kept = mantissa >> shift;
    uint32_t rest = mantissa & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (kept & 1u))) kept++;
    return kept;
}

/* Rounds to nearest even in integer arithmetic, so the result is the same on every compiler and
 * FPU mode. Values from 65520 (half an ulp above 65504) upward overflow to infinity, as IEEE
 * requires; NaNs stay NaN (quiet, keeping the top of the payload). */
uint16_t moira_f32_to_f16(float value) {
    uint32_t x = f32_bits(value);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7FFFFFFFu;
    if (x > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((x >> 13) & 0x3FFu));
    if (x >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* >= 65520, and infinity */
    if (x < 0x38800000u) {                                   /* below 2^-14: f16 subnormal */
        if (x <= 0x33000000u) return sign;                   /* <= 2^-25 rounds to zero */
        uint32_t mantissa = (x & 0x7FFFFFu) | 0x800000u;
        unsigned shift = 126u - (x >> 23); /* 14..24 */
        return (uint16_t)(sign | shift_round_even(mantissa, shift));
    }
    /* Adding just under half an ulp, plus the low kept bit, rounds to nearest even; a carry out of
     * the mantissa correctly bumps the exponent. */
    uint32_t rounded = (x + 0xFFFu + ((x >> 13) & 1u)) >> 13;
    return (uint16_t)(sign | (rounded - (112u << 10)));
}

/* bf16 is the top half of an f32, so widening is a shift and every pattern, NaNs included, comes
 * back bit for bit. */
float moira_bf16_to_f32(uint16_t bits) {
    return f32_from_bits((uint32_t)bits << 16);
}

/* The add-and-truncate trick rounds to nearest even, but applied to a NaN it can carry the payload
 * into the exponent and produce infinity, so NaNs are handled first and forced quiet (which also
 * guarantees a nonzero mantissa when the payload sat only in the dropped bits). */
uint16_t moira_f32_to_bf16(float value) {
    uint32_t x = f32_bits(value);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x0040u);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

/* e4m3fn spends the all-ones exponent on finite values (up to 448), keeping only S.1111.111 as
 * NaN; decoding is exact in f32. */
float moira_fp8_e4m3_to_f32(uint8_t bits) {
    uint32_t sign = (uint32_t)(bits & 0x80u) << 24;
    uint32_t exponent = (bits >> 3) & 0xFu;
    uint32_t mantissa = bits & 0x7u;
    if ((bits & 0x7Fu) == 0x7Fu) return f32_from_bits(sign | 0x7FC00000u);
    if (exponent == 0) {
        float magnitude = (float)mantissa * 0x1p-9f;
        return f32_from_bits(sign | f32_bits(magnitude));
    }
    return f32_from_bits(sign | ((exponent + 120u) << 23) | (mantissa << 20));
}

/* Saturates instead of overflowing because e4m3fn has no infinity and the next code up is NaN:
 * quantizing a large activation must not poison the result. This matches the saturating casts
 * that FP8 checkpoints were produced with. */
uint8_t moira_f32_to_fp8_e4m3(float value) {
    uint32_t x = f32_bits(value);
    uint8_t sign = (uint8_t)((x >> 24) & 0x80u);
    x &= 0x7FFFFFFFu;
    if (x > 0x7F800000u) return (uint8_t)(sign | 0x7Fu);
    if (x >= 0x43E00000u) return (uint8_t)(sign | 0x7Eu); /* >= 448, and infinity */
    if (x < 0x3C800000u) {                                /* below 2^-6: fp8 subnormal */
        if (x <= 0x3A800000u) return sign;                /* <= 2^-10 rounds to zero */
        uint32_t mantissa = (x & 0x7FFFFFu) | 0x800000u;
        unsigned shift = 141u - (x >> 23); /* 21..24 */
        return (uint8_t)(sign | shift_round_even(mantissa, shift));
    }
    uint32_t rounded = (x + 0x7FFFFu + ((x >> 20) & 1u)) >> 20;
    return (uint8_t)(sign | (rounded - (120u << 3)));
}

/* Bulk fp8 decode is a table lookup; the table is filled once, race-free, on first use. */
static float fp8_e4m3_table[256];
static pthread_once_t fp8_e4m3_table_once = PTHREAD_ONCE_INIT;

static void fp8_e4m3_table_init(void) {
    for (int i = 0; i < 256; i++)
        fp8_e4m3_table[i] = moira_fp8_e4m3_to_f32((uint8_t)i);
}

/* Asking a float converter for an integer type is a caller bug with no sensible result; stopping
 * loudly beats silently leaving `dst` unwritten. */
static _Noreturn void unsupported_dtype(const char *function, moira_dtype_t dtype) {
    fprintf(stderr, "moira: %s: %s is not a float type\n", function, moira_dtype_name(dtype));
    abort();
}

/* Widening is exact for every source type, so weights in any storage type can feed f32 math. */
void moira_convert_to_f32(moira_dtype_t src_dtype, const void *src, float *dst, size_t count) {
    switch (src_dtype) {
    case MOIRA_DTYPE_F32:
        if (count) memcpy(dst, src, count * sizeof(float));
        return;
    case MOIRA_DTYPE_F16: {
        const uint16_t *in = src;
        for (size_t i = 0; i < count; i++)
            dst[i] = moira_f16_to_f32(in[i]);
        return;
    }
    case MOIRA_DTYPE_BF16: {
        const uint16_t *in = src;
        for (size_t i = 0; i < count; i++)
            dst[i] = moira_bf16_to_f32(in[i]);
        return;
    }
    case MOIRA_DTYPE_F8_E4M3: {
        pthread_once(&fp8_e4m3_table_once, fp8_e4m3_table_init);
        const uint8_t *in = src;
        for (size_t i = 0; i < count; i++)
            dst[i] = fp8_e4m3_table[in[i]];
        return;
    }
    default:
        unsupported_dtype("moira_convert_to_f32", src_dtype);
    }
}

/* The single rounding point for writing f32 results into narrow storage, so every path that stores
 * weights or activations rounds the same way. */
void moira_convert_from_f32(moira_dtype_t dst_dtype, const float *src, void *dst, size_t count) {
    switch (dst_dtype) {
    case MOIRA_DTYPE_F32:
        if (count) memcpy(dst, src, count * sizeof(float));
        return;
    case MOIRA_DTYPE_F16: {
        uint16_t *out = dst;
        for (size_t i = 0; i < count; i++)
            out[i] = moira_f32_to_f16(src[i]);
        return;
    }
    case MOIRA_DTYPE_BF16: {
        uint16_t *out = dst;
        for (size_t i = 0; i < count; i++)
            out[i] = moira_f32_to_bf16(src[i]);
        return;
    }
    case MOIRA_DTYPE_F8_E4M3: {
        uint8_t *out = dst;
        for (size_t i = 0; i < count; i++)
            out[i] = moira_f32_to_fp8_e4m3(src[i]);
        return;
    }
    default:
        unsupported_dtype("moira_convert_from_f32", dst_dtype);
    }
}

/* Lets CPU references reproduce exactly what a device that stores in `dtype` computes with, without
 * allocating a narrow buffer. */
void moira_round_through(moira_dtype_t dtype, float *values, size_t count) {
    switch (dtype) {
    case MOIRA_DTYPE_F32:
        return;
    case MOIRA_DTYPE_F16:
        for (size_t i = 0; i < count; i++)
            values[i] = moira_f16_to_f32(moira_f32_to_f16(values[i]));
        return;
    case MOIRA_DTYPE_BF16:
        for (size_t i = 0; i < count; i++)
            values[i] = moira_bf16_to_f32(moira_f32_to_bf16(values[i]));
        return;
    case MOIRA_DTYPE_F8_E4M3:
        pthread_once(&fp8_e4m3_table_once, fp8_e4m3_table_init);
        for (size_t i = 0; i < count; i++)
            values[i] = fp8_e4m3_table[moira_f32_to_fp8_e4m3(values[i])];
        return;
    default:
        unsupported_dtype("moira_round_through", dtype);
    }
}
