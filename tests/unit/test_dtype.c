/* Element types: names, sizes and the narrow-float conversions.
 *
 * Every conversion is checked against an independent reference written here in double arithmetic
 * (ldexp decoding, nearest-neighbour search with ties to even), never against the same bit tricks
 * the implementation uses. Each whole sweep counts as one check; the first few mismatches of a
 * failing sweep are printed. */
#include "runtime/dtype.h"
#include "tests/unit/testing.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SWEEP_SHOWN 5

/* A sweep over many inputs that reports the first few mismatches and counts as one check. */
typedef struct sweep {
    const char *what;
    long tested;
    long mismatches;
} sweep_t;

static sweep_t sweep_begin(const char *what) {
    sweep_t sweep = {what, 0, 0};
    return sweep;
}

static void sweep_miss(sweep_t *sweep, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sweep_miss(sweep_t *sweep, const char *fmt, ...) {
    if (sweep->mismatches++ >= SWEEP_SHOWN) return;
    fprintf(stderr, "  %s: ", sweep->what);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
}

#define SWEEP_END(sweep)                                                                           \
    CHECK_MSG((sweep).mismatches == 0, "%s: %ld of %ld inputs mismatched", (sweep).what,           \
              (sweep).mismatches, (sweep).tested)

static uint32_t bits_of(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof(bits));
    return bits;
}

static float float_of(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof(value));
    return value;
}

/* Whether a decoded f32 is the reference value, telling -0 from +0 and treating all NaNs alike. */
static bool same_value(float got, double ref) {
    if (isnan(ref)) return isnan(got);
    return (double)got == ref && (bool)signbit(got) == (bool)signbit(ref);
}

/* ---- Reference decoders: the textbook formula per field, with ldexp. ---- */

static double ref_f16_decode(uint16_t bits) {
    int sign = bits >> 15, exponent = (bits >> 10) & 0x1F, mantissa = bits & 0x3FF;
    double magnitude;
    if (exponent == 0x1F)
        magnitude = mantissa ? NAN : INFINITY;
    else if (exponent == 0)
        magnitude = ldexp(mantissa, -24); /* 0.m * 2^-14 */
    else
        magnitude = ldexp(1024 + mantissa, exponent - 15 - 10);
    return sign ? -magnitude : magnitude;
}

static double ref_bf16_decode(uint16_t bits) {
    int sign = bits >> 15, exponent = (bits >> 7) & 0xFF, mantissa = bits & 0x7F;
    double magnitude;
    if (exponent == 0xFF)
        magnitude = mantissa ? NAN : INFINITY;
    else if (exponent == 0)
        magnitude = ldexp(mantissa, -126 - 7); /* 0.m * 2^-126 */
    else
        magnitude = ldexp(128 + mantissa, exponent - 127 - 7);
    return sign ? -magnitude : magnitude;
}

static double ref_fp8_decode(uint8_t bits) {
    int sign = bits >> 7, exponent = (bits >> 3) & 0xF, mantissa = bits & 0x7;
    double magnitude;
    if ((bits & 0x7F) == 0x7F)
        magnitude = NAN; /* e4m3fn: only S.1111.111 is NaN, and there is no infinity */
    else if (exponent == 0)
        magnitude = ldexp(mantissa, -6 - 3); /* 0.m * 2^-6 */
    else
        magnitude = ldexp(8 + mantissa, exponent - 7 - 3);
    return sign ? -magnitude : magnitude;
}

/* ---- Reference encoders: nearest representable value, found by search in double. ---- */

/* Magnitudes of the non-negative codes of f16 and bf16, indexed by code. The last entry is the
 * infinity code, given the value IEEE rounding assigns it: the next power of two past the largest
 * finite value, as if the exponent range were unbounded. */
#define F16_CODES 0x7C01
#define BF16_CODES 0x7F81
static double f16_magnitudes[F16_CODES];
static double bf16_magnitudes[BF16_CODES];
static double fp8_magnitudes[0x7F]; /* 0x00..0x7E; 0x7F is NaN */

static void build_reference_tables(void) {
    for (int c = 0; c < F16_CODES - 1; c++)
        f16_magnitudes[c] = ref_f16_decode((uint16_t)c);
    f16_magnitudes[F16_CODES - 1] = 65536.0;
    for (int c = 0; c < BF16_CODES - 1; c++)
        bf16_magnitudes[c] = ref_bf16_decode((uint16_t)c);
    bf16_magnitudes[BF16_CODES - 1] = ldexp(1.0, 128);
    for (int c = 0; c < 0x7F; c++)
        fp8_magnitudes[c] = ref_fp8_decode((uint8_t)c);
}

/* Picks whichever of the two neighbours of `v` in an ascending table is nearer, the even code on a
 * tie. Inputs are f32 values and the tables hold narrower floats, so near a tie both distances are
 * exact in double. Past the last entry (infinity) the answer is the last entry. */
static int nearest_code(const double *magnitudes, int count, double v) {
    if (v >= magnitudes[count - 1]) return count - 1;
    int lo = 0, hi = count - 1; /* magnitudes[lo] <= v < magnitudes[hi] */
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (magnitudes[mid] <= v)
            lo = mid;
        else
            hi = mid;
    }
    double below = v - magnitudes[lo], above = magnitudes[hi] - v;
    if (below < above) return lo;
    if (above < below) return hi;
    return (lo & 1) ? hi : lo;
}

static uint16_t ref_f32_to_f16(float value) {
    uint16_t sign = signbit(value) ? 0x8000 : 0;
    return (uint16_t)(sign | nearest_code(f16_magnitudes, F16_CODES, fabs((double)value)));
}

static uint16_t ref_f32_to_bf16(float value) {
    uint16_t sign = signbit(value) ? 0x8000 : 0;
    return (uint16_t)(sign | nearest_code(bf16_magnitudes, BF16_CODES, fabs((double)value)));
}

/* Brute force over every finite fp8 code. Beyond 2^20 the distances would no longer be exact in
 * double, and the specified answer there is saturation to 448 anyway. */
static uint8_t ref_f32_to_fp8(float value) {
    uint8_t sign = signbit(value) ? 0x80 : 0;
    if (isnan(value)) return (uint8_t)(sign | 0x7F);
    double v = fabs((double)value);
    if (v > 0x1p20) return (uint8_t)(sign | 0x7E);
    int best = 0;
    double best_distance = INFINITY;
    for (int c = 0; c < 0x7F; c++) {
        double distance = fabs(v - fp8_magnitudes[c]);
        if (distance < best_distance || (distance == best_distance && (c & 1) == 0)) {
            best = c;
            best_distance = distance;
        }
    }
    return (uint8_t)(sign | best);
}

static bool f16_is_nan(uint16_t bits) {
    return (bits & 0x7C00) == 0x7C00 && (bits & 0x03FF) != 0;
}

static bool bf16_is_nan(uint16_t bits) {
    return (bits & 0x7F80) == 0x7F80 && (bits & 0x007F) != 0;
}

/* ---- Input sets ---- */

/* Every 4099th f32 pattern: about a million values spread over every exponent, both signs,
 * subnormals, infinities and NaNs. 4099 is prime, so the low mantissa bits vary too. */
#define SPARSE_STRIDE 4099u

/* Calls `visit` on the f32 patterns around each midpoint between adjacent codes of a table (and
 * between the largest finite value and the virtual infinity entry), both signs, from two ulps below
 * to two ulps above. Those are where rounding direction and ties-to-even are decided. */
static void for_each_near_tie(const double *magnitudes, int count, sweep_t *sweep,
                              void (*visit)(sweep_t *, float)) {
    for (int c = 0; c + 1 < count; c++) {
        float midpoint = (float)((magnitudes[c] + magnitudes[c + 1]) / 2);
        for (int offset = -2; offset <= 2; offset++) {
            uint32_t bits = bits_of(midpoint) + (uint32_t)offset;
            visit(sweep, float_of(bits));
            visit(sweep, float_of(bits | 0x80000000u));
        }
    }
}

/* ---- f16 ---- */

static void check_f16_encode(sweep_t *sweep, float value) {
    sweep->tested++;
    uint16_t got = moira_f32_to_f16(value);
    if (isnan(value)) {
        if (!f16_is_nan(got) || (got >> 15) != (bits_of(value) >> 31))
            sweep_miss(sweep, "f32 0x%08x (NaN) -> 0x%04x, want NaN of the same sign",
                       bits_of(value), got);
        return;
    }
    uint16_t want = ref_f32_to_f16(value);
    if (got != want)
        sweep_miss(sweep, "f32 0x%08x (%.9g) -> 0x%04x, want 0x%04x", bits_of(value), (double)value,
                   got, want);
}

static void test_f16_exhaustive(void) {
    sweep_t decode = sweep_begin("f16 -> f32, all 65536 patterns");
    sweep_t round_trip = sweep_begin("f16 -> f32 -> f16, all 65536 patterns");
    for (uint32_t c = 0; c <= 0xFFFF; c++) {
        uint16_t bits = (uint16_t)c;
        float got = moira_f16_to_f32(bits);
        double want = ref_f16_decode(bits);
        decode.tested++;
        if (!same_value(got, want))
            sweep_miss(&decode, "0x%04x -> %.9g, want %.9g", bits, (double)got, want);
        /* NaNs come out quiet, so a signalling f16 NaN cannot trap later in f32 math. */
        if (f16_is_nan(bits) && !(bits_of(got) & 0x00400000u))
            sweep_miss(&decode, "NaN 0x%04x -> f32 0x%08x, not quiet", bits, bits_of(got));
        uint16_t back = moira_f32_to_f16(got);
        round_trip.tested++;
        bool ok = f16_is_nan(bits) ? f16_is_nan(back) && (back & 0x8000) == (bits & 0x8000)
                                   : back == bits;
        if (!ok) sweep_miss(&round_trip, "0x%04x -> %.9g -> 0x%04x", bits, (double)got, back);
        /* Quiet NaNs carry their payload through f32 and back. */
        if (f16_is_nan(bits) && (bits & 0x0200) && back != bits)
            sweep_miss(&round_trip, "quiet NaN 0x%04x came back as 0x%04x", bits, back);
    }
    SWEEP_END(decode);
    SWEEP_END(round_trip);
}

static void test_f16_rounding(void) {
    sweep_t sparse = sweep_begin("f32 -> f16, every 4099th f32 pattern");
    for (uint64_t b = 0; b <= 0xFFFFFFFFu; b += SPARSE_STRIDE)
        check_f16_encode(&sparse, float_of((uint32_t)b));
    SWEEP_END(sparse);

    /* f16 subnormals and the values that round into or out of them: [2^-26, 2^-13]. */
    sweep_t subnormal = sweep_begin("f32 -> f16, subnormal range");
    for (uint32_t b = 0x32800000u; b <= 0x39000000u; b += 97) {
        check_f16_encode(&subnormal, float_of(b));
        check_f16_encode(&subnormal, float_of(b | 0x80000000u));
    }
    SWEEP_END(subnormal);

    /* The top of the range, where rounding meets overflow: [32768, 2^17]. */
    sweep_t overflow = sweep_begin("f32 -> f16, overflow range");
    for (uint32_t b = 0x47000000u; b <= 0x48000000u; b += 13) {
        check_f16_encode(&overflow, float_of(b));
        check_f16_encode(&overflow, float_of(b | 0x80000000u));
    }
    SWEEP_END(overflow);

    sweep_t ties = sweep_begin("f32 -> f16, near every midpoint");
    for_each_near_tie(f16_magnitudes, F16_CODES, &ties, check_f16_encode);
    SWEEP_END(ties);

    CHECK(moira_f32_to_f16(65504.0f) == 0x7BFF);
    CHECK(moira_f32_to_f16(65519.0f) == 0x7BFF);
    CHECK(moira_f32_to_f16(65520.0f) == 0x7C00);
    CHECK(moira_f32_to_f16(-65520.0f) == 0xFC00);
    CHECK(moira_f32_to_f16(1e9f) == 0x7C00);
    CHECK(moira_f32_to_f16(INFINITY) == 0x7C00);
    CHECK(moira_f32_to_f16(-INFINITY) == 0xFC00);
    CHECK(moira_f32_to_f16(0x1p-24f) == 0x0001);
    CHECK(moira_f32_to_f16(0x1p-25f) == 0x0000);                   /* tie: to even (zero) */
    CHECK(moira_f32_to_f16(nextafterf(0x1p-25f, 1.0f)) == 0x0001); /* just past the tie */
    CHECK(moira_f32_to_f16(0x1.8p-24f) == 0x0002);                 /* tie 1.5 ulp: to 2 */
    CHECK(moira_f32_to_f16(-0.0f) == 0x8000);
    CHECK(moira_f32_to_f16(1.0f + 0x1p-11f) == 0x3C00); /* tie above 1: to even (1) */
    CHECK(moira_f32_to_f16(1.0f + 0x1.8p-10f) == 0x3C02);
    CHECK(f16_is_nan(moira_f32_to_f16(float_of(0x7F800001u)))); /* payload only in low bits */
    CHECK(moira_f32_to_f16(float_of(0xFFC00000u)) >> 15 == 1);
}

/* ---- bf16 ---- */

static void check_bf16_encode(sweep_t *sweep, float value) {
    sweep->tested++;
    uint16_t got = moira_f32_to_bf16(value);
    if (isnan(value)) {
        if (!bf16_is_nan(got) || (got >> 15) != (bits_of(value) >> 31))
            sweep_miss(sweep, "f32 0x%08x (NaN) -> 0x%04x, want NaN of the same sign",
                       bits_of(value), got);
        return;
    }
    uint16_t want = ref_f32_to_bf16(value);
    if (got != want)
        sweep_miss(sweep, "f32 0x%08x (%.9g) -> 0x%04x, want 0x%04x", bits_of(value), (double)value,
                   got, want);
}

static void test_bf16_exhaustive(void) {
    sweep_t decode = sweep_begin("bf16 -> f32, all 65536 patterns");
    sweep_t round_trip = sweep_begin("bf16 -> f32 -> bf16, all 65536 patterns");
    for (uint32_t c = 0; c <= 0xFFFF; c++) {
        uint16_t bits = (uint16_t)c;
        float got = moira_bf16_to_f32(bits);
        double want = ref_bf16_decode(bits);
        decode.tested++;
        if (!same_value(got, want))
            sweep_miss(&decode, "0x%04x -> %.9g, want %.9g", bits, (double)got, want);
        uint16_t back = moira_f32_to_bf16(got);
        round_trip.tested++;
        bool ok = bf16_is_nan(bits) ? bf16_is_nan(back) && (back & 0x8000) == (bits & 0x8000)
                                    : back == bits;
        if (!ok) sweep_miss(&round_trip, "0x%04x -> %.9g -> 0x%04x", bits, (double)got, back);
    }
    SWEEP_END(decode);
    SWEEP_END(round_trip);
}

static void test_bf16_rounding(void) {
    sweep_t sparse = sweep_begin("f32 -> bf16, every 4099th f32 pattern");
    for (uint64_t b = 0; b <= 0xFFFFFFFFu; b += SPARSE_STRIDE)
        check_bf16_encode(&sparse, float_of((uint32_t)b));
    SWEEP_END(sparse);

    sweep_t ties = sweep_begin("f32 -> bf16, near every midpoint");
    for_each_near_tie(bf16_magnitudes, BF16_CODES, &ties, check_bf16_encode);
    SWEEP_END(ties);

    /* Every NaN pattern with a payload in the upper mantissa, plus those with payload only in the
     * bits bf16 drops: all must stay NaN (the rounding carry must not reach the exponent). */
    sweep_t nans = sweep_begin("f32 NaN -> bf16");
    for (uint32_t payload = 1; payload <= 0x7FFFFFu; payload += 37) {
        check_bf16_encode(&nans, float_of(0x7F800000u | payload));
        check_bf16_encode(&nans, float_of(0xFF800000u | payload));
    }
    check_bf16_encode(&nans, float_of(0x7FFFFFFFu));
    check_bf16_encode(&nans, float_of(0xFFFFFFFFu));
    check_bf16_encode(&nans, float_of(0x7F800001u));
    check_bf16_encode(&nans, float_of(0x7F80FFFFu));
    check_bf16_encode(&nans, float_of(0x7FFF8000u));
    SWEEP_END(nans);

    CHECK(moira_f32_to_bf16(1.0f) == 0x3F80);
    CHECK(moira_f32_to_bf16(float_of(0x3F808000u)) == 0x3F80); /* tie: to even */
    CHECK(moira_f32_to_bf16(float_of(0x3F818000u)) == 0x3F82); /* tie: to even, upward */
    CHECK(moira_f32_to_bf16(float_of(0x3F808001u)) == 0x3F81);
    CHECK(moira_f32_to_bf16(float_of(0x7F7F7FFFu)) == 0x7F7F); /* below max's half ulp */
    CHECK(moira_f32_to_bf16(float_of(0x7F7F8000u)) == 0x7F80); /* IEEE overflow to inf */
    CHECK(moira_f32_to_bf16(INFINITY) == 0x7F80);
    CHECK(moira_f32_to_bf16(-INFINITY) == 0xFF80);
    CHECK(moira_f32_to_bf16(-0.0f) == 0x8000);
    CHECK(moira_f32_to_bf16(float_of(0x00008000u)) == 0x0000); /* subnormal tie: to even */
    CHECK(moira_f32_to_bf16(float_of(0x00018000u)) == 0x0002);
}

/* ---- fp8 e4m3fn ---- */

static void check_fp8_encode(sweep_t *sweep, float value) {
    sweep->tested++;
    uint8_t got = moira_f32_to_fp8_e4m3(value);
    uint8_t want = ref_f32_to_fp8(value);
    if (got != want)
        sweep_miss(sweep, "f32 0x%08x (%.9g) -> 0x%02x, want 0x%02x", bits_of(value), (double)value,
                   got, want);
}

static void test_fp8_exhaustive(void) {
    sweep_t decode = sweep_begin("fp8 -> f32, all 256 patterns");
    sweep_t round_trip = sweep_begin("fp8 -> f32 -> fp8, all 256 patterns");
    for (int c = 0; c < 256; c++) {
        uint8_t bits = (uint8_t)c;
        float got = moira_fp8_e4m3_to_f32(bits);
        double want = ref_fp8_decode(bits);
        decode.tested++;
        if (!same_value(got, want))
            sweep_miss(&decode, "0x%02x -> %.9g, want %.9g", bits, (double)got, want);
        uint8_t back = moira_f32_to_fp8_e4m3(got);
        round_trip.tested++;
        if (back != bits) /* NaN included: 0x7F and 0xFF come back as themselves */
            sweep_miss(&round_trip, "0x%02x -> %.9g -> 0x%02x", bits, (double)got, back);
    }
    SWEEP_END(decode);
    SWEEP_END(round_trip);

    CHECK(moira_fp8_e4m3_to_f32(0x7E) == 448.0f);
    CHECK(moira_fp8_e4m3_to_f32(0xFE) == -448.0f);
    CHECK(moira_fp8_e4m3_to_f32(0x01) == 0x1p-9f);
    CHECK(moira_fp8_e4m3_to_f32(0x08) == 0x1p-6f);
    CHECK(moira_fp8_e4m3_to_f32(0x78) == 256.0f); /* all-ones exponent is finite in e4m3fn */
    CHECK(isnan(moira_fp8_e4m3_to_f32(0x7F)));
    CHECK(isnan(moira_fp8_e4m3_to_f32(0xFF)));
    CHECK(signbit(moira_fp8_e4m3_to_f32(0x80)) && moira_fp8_e4m3_to_f32(0x80) == 0.0f);
}

static void test_fp8_rounding(void) {
    sweep_t dense = sweep_begin("f32 -> fp8, [-500, 500] step 1/512");
    for (int i = -500 * 512; i <= 500 * 512; i++)
        check_fp8_encode(&dense, (float)i / 512.0f);
    SWEEP_END(dense);

    /* Every 1009th f32 pattern in [0, 2^-5]: the subnormals, the values that round to zero, and the
     * first normal binade. */
    sweep_t small = sweep_begin("f32 -> fp8, |x| <= 2^-5");
    for (uint32_t b = 0; b <= 0x3D000000u; b += 1009) {
        check_fp8_encode(&small, float_of(b));
        check_fp8_encode(&small, float_of(b | 0x80000000u));
    }
    SWEEP_END(small);

    sweep_t ties = sweep_begin("f32 -> fp8, near every midpoint");
    for_each_near_tie(fp8_magnitudes, 0x7F, &ties, check_fp8_encode);
    SWEEP_END(ties);

    /* The brute force costs 127 comparisons per input, so this sweep takes a quarter as many. */
    sweep_t sparse = sweep_begin("f32 -> fp8, every 16396th f32 pattern");
    for (uint64_t b = 0; b <= 0xFFFFFFFFu; b += SPARSE_STRIDE * 4)
        check_fp8_encode(&sparse, float_of((uint32_t)b));
    SWEEP_END(sparse);

    CHECK(moira_f32_to_fp8_e4m3(448.0f) == 0x7E);
    CHECK(moira_f32_to_fp8_e4m3(449.0f) == 0x7E);
    CHECK(moira_f32_to_fp8_e4m3(464.0f) == 0x7E); /* would round to the NaN code: saturates */
    CHECK(moira_f32_to_fp8_e4m3(480.0f) == 0x7E);
    CHECK(moira_f32_to_fp8_e4m3(1e9f) == 0x7E);
    CHECK(moira_f32_to_fp8_e4m3(-1e9f) == 0xFE);
    CHECK(moira_f32_to_fp8_e4m3(FLT_MAX) == 0x7E);
    CHECK(moira_f32_to_fp8_e4m3(INFINITY) == 0x7E);
    CHECK(moira_f32_to_fp8_e4m3(-INFINITY) == 0xFE);
    CHECK(moira_f32_to_fp8_e4m3(NAN) == 0x7F);
    CHECK(moira_f32_to_fp8_e4m3(-NAN) == 0xFF);
    CHECK(moira_f32_to_fp8_e4m3(float_of(0x7F800001u)) == 0x7F);
    CHECK(moira_f32_to_fp8_e4m3(float_of(0xFFFFFFFFu)) == 0xFF);
    CHECK(moira_f32_to_fp8_e4m3(0x1p-10f) == 0x00); /* tie between 0 and 2^-9: to even */
    CHECK(moira_f32_to_fp8_e4m3(nextafterf(0x1p-10f, 1.0f)) == 0x01);
    CHECK(moira_f32_to_fp8_e4m3(0x1.8p-9f) == 0x02); /* tie 1.5 ulp: to 2 */
    CHECK(moira_f32_to_fp8_e4m3(-0.0f) == 0x80);
    CHECK(moira_f32_to_fp8_e4m3(-1e-30f) == 0x80);
}

/* ---- Bulk converters ---- */

#define FP8_THREADS 4

static void *decode_fp8_in_thread(void *arg) {
    bool *ok = arg;
    uint8_t codes[256];
    float values[256];
    for (int c = 0; c < 256; c++)
        codes[c] = (uint8_t)c;
    moira_convert_to_f32(MOIRA_DTYPE_F8_E4M3, codes, values, 256);
    *ok = true;
    for (int c = 0; c < 256; c++)
        if (bits_of(values[c]) != bits_of(moira_fp8_e4m3_to_f32((uint8_t)c))) *ok = false;
    return NULL;
}

/* Must run before anything else touches the fp8 table, so that the threads race to build it. */
static void test_fp8_table_threads(void) {
    pthread_t threads[FP8_THREADS];
    bool ok[FP8_THREADS] = {false};
    int started = 0;
    for (int i = 0; i < FP8_THREADS; i++)
        if (pthread_create(&threads[i], NULL, decode_fp8_in_thread, &ok[i]) == 0) started++;
    bool all_ok = started == FP8_THREADS;
    for (int i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
        all_ok = all_ok && ok[i];
    }
    CHECK_MSG(all_ok, "fp8 table built concurrently by %d threads disagrees with the scalar decode",
              FP8_THREADS);
}

/* A mix of inputs that exercises every path of every encoder: all f16 values, a spread of f32
 * patterns, and the special values. */
static float *make_bulk_inputs(size_t *out_count) {
    size_t count = 65536 + 65536 + 8;
    float *values = malloc(count * sizeof(*values));
    if (!values) return NULL;
    size_t n = 0;
    for (uint32_t c = 0; c <= 0xFFFF; c++)
        values[n++] = moira_f16_to_f32((uint16_t)c);
    for (uint32_t i = 0; i < 65536; i++)
        values[n++] = float_of(i * 65537u + 12345u);
    const float specials[8] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 448.0f, 449.0f, 65520.0f};
    for (int i = 0; i < 8; i++)
        values[n++] = specials[i];
    *out_count = n;
    return values;
}

static void test_bulk(void) {
    size_t count = 0;
    float *inputs = make_bulk_inputs(&count);
    float *decoded = malloc(count * sizeof(float));
    float *rounded = malloc(count * sizeof(float));
    uint8_t *narrow = malloc(count * sizeof(float));
    CHECK(inputs && decoded && rounded && narrow);
    if (!(inputs && decoded && rounded && narrow)) goto done;

    const moira_dtype_t types[] = {MOIRA_DTYPE_F32, MOIRA_DTYPE_F16, MOIRA_DTYPE_BF16,
                                   MOIRA_DTYPE_F8_E4M3};
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        moira_dtype_t type = types[t];
        sweep_t encode = sweep_begin("bulk convert_from_f32");
        sweep_t decode = sweep_begin("bulk convert_to_f32");
        sweep_t through = sweep_begin("bulk round_through");
        moira_convert_from_f32(type, inputs, narrow, count);
        moira_convert_to_f32(type, narrow, decoded, count);
        memcpy(rounded, inputs, count * sizeof(float));
        moira_round_through(type, rounded, count);
        for (size_t i = 0; i < count; i++) {
            uint32_t code = 0;
            float want_decoded = 0;
            switch (type) {
            case MOIRA_DTYPE_F16:
                code = ((uint16_t *)narrow)[i];
                if (code != moira_f32_to_f16(inputs[i]))
                    sweep_miss(&encode, "f16 [%zu] 0x%04x", i, code);
                want_decoded = moira_f16_to_f32((uint16_t)code);
                break;
            case MOIRA_DTYPE_BF16:
                code = ((uint16_t *)narrow)[i];
                if (code != moira_f32_to_bf16(inputs[i]))
                    sweep_miss(&encode, "bf16 [%zu] 0x%04x", i, code);
                want_decoded = moira_bf16_to_f32((uint16_t)code);
                break;
            case MOIRA_DTYPE_F8_E4M3:
                code = narrow[i];
                if (code != moira_f32_to_fp8_e4m3(inputs[i]))
                    sweep_miss(&encode, "fp8 [%zu] 0x%02x", i, code);
                want_decoded = moira_fp8_e4m3_to_f32((uint8_t)code);
                break;
            default:
                code = bits_of(((float *)narrow)[i]);
                if (code != bits_of(inputs[i])) sweep_miss(&encode, "f32 [%zu] 0x%08x", i, code);
                want_decoded = inputs[i];
                break;
            }
            encode.tested++;
            decode.tested++;
            through.tested++;
            if (bits_of(decoded[i]) != bits_of(want_decoded))
                sweep_miss(&decode, "%s [%zu]: %.9g, want %.9g", moira_dtype_name(type), i,
                           (double)decoded[i], (double)want_decoded);
            if (bits_of(rounded[i]) != bits_of(want_decoded))
                sweep_miss(&through, "%s [%zu]: %.9g, want %.9g", moira_dtype_name(type), i,
                           (double)rounded[i], (double)want_decoded);
        }
        CHECK_MSG(encode.mismatches == 0, "%s: %s: %ld mismatches", encode.what,
                  moira_dtype_name(type), encode.mismatches);
        CHECK_MSG(decode.mismatches == 0, "%s: %s: %ld mismatches", decode.what,
                  moira_dtype_name(type), decode.mismatches);
        CHECK_MSG(through.mismatches == 0, "%s: %s: %ld mismatches", through.what,
                  moira_dtype_name(type), through.mismatches);
    }

    /* A zero count touches nothing, even through NULL pointers. */
    moira_convert_to_f32(MOIRA_DTYPE_F32, NULL, NULL, 0);
    moira_convert_from_f32(MOIRA_DTYPE_F16, NULL, NULL, 0);
    moira_round_through(MOIRA_DTYPE_BF16, NULL, 0);

done:
    free(inputs);
    free(decoded);
    free(rounded);
    free(narrow);
}

/* ---- Names and sizes ---- */

static void test_names_and_sizes(void) {
    static const struct {
        moira_dtype_t dtype;
        const char *name;
        const char *config_name;
        size_t size;
        bool is_float;
    } expected[] = {
        {MOIRA_DTYPE_F32, "F32", "f32", 4, true},
        {MOIRA_DTYPE_F16, "F16", "f16", 2, true},
        {MOIRA_DTYPE_BF16, "BF16", "bf16", 2, true},
        {MOIRA_DTYPE_F8_E4M3, "F8_E4M3", "fp8_e4m3", 1, true},
        {MOIRA_DTYPE_I32, "I32", NULL, 4, false},
        {MOIRA_DTYPE_I64, "I64", NULL, 8, false},
    };
    /* The quantised formats follow; they are no safetensors names (test_weight_format.c). */
    CHECK(sizeof(expected) / sizeof(expected[0]) + 3 == MOIRA_DTYPE_COUNT);
    const char *not_stored[] = {"MXFP4", "INT8", "F8_E8M0", "I8", "U8"};
    for (size_t i = 0; i < sizeof(not_stored) / sizeof(not_stored[0]); i++)
        CHECK_MSG(!moira_dtype_from_name(not_stored[i], NULL), "from_name(\"%s\") accepted",
                  not_stored[i]);
    CHECK(moira_dtype_is_quantized(MOIRA_DTYPE_MXFP4) &&
          moira_dtype_is_quantized(MOIRA_DTYPE_INT8));
    CHECK(!moira_dtype_is_float(MOIRA_DTYPE_MXFP4) && moira_dtype_is_weight(MOIRA_DTYPE_INT8));
    CHECK(!moira_dtype_is_weight(MOIRA_DTYPE_E8M0) && !moira_dtype_is_weight(MOIRA_DTYPE_I32));
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        moira_dtype_t dtype = expected[i].dtype;
        CHECK_MSG(moira_dtype_size(dtype) == expected[i].size, "size of %s", expected[i].name);
        CHECK_MSG(strcmp(moira_dtype_name(dtype), expected[i].name) == 0, "name of %s: %s",
                  expected[i].name, moira_dtype_name(dtype));
        CHECK_MSG(moira_dtype_is_float(dtype) == expected[i].is_float, "is_float(%s)",
                  expected[i].name);
        moira_dtype_t parsed = MOIRA_DTYPE_COUNT;
        CHECK_MSG(moira_dtype_from_name(expected[i].name, &parsed) && parsed == dtype,
                  "from_name(\"%s\")", expected[i].name);
        if (expected[i].config_name) {
            parsed = MOIRA_DTYPE_COUNT;
            CHECK_MSG(moira_dtype_from_config_name(expected[i].config_name, &parsed) &&
                          parsed == dtype,
                      "from_config_name(\"%s\")", expected[i].config_name);
        }
    }

    moira_dtype_t untouched = MOIRA_DTYPE_I64;
    const char *bad_names[] = {"", "f32", "Bf16", "F8_E5M2", "F8_E4M3FN", "F32 ", "FP32"};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++)
        CHECK_MSG(!moira_dtype_from_name(bad_names[i], &untouched), "from_name(\"%s\") accepted",
                  bad_names[i]);
    const char *bad_config[] = {"", "F32", "i32", "i64", "fp8", "fp8_e5m2", "float32", "BF16"};
    for (size_t i = 0; i < sizeof(bad_config) / sizeof(bad_config[0]); i++)
        CHECK_MSG(!moira_dtype_from_config_name(bad_config[i], &untouched),
                  "from_config_name(\"%s\") accepted", bad_config[i]);
    CHECK(untouched == MOIRA_DTYPE_I64);
    CHECK(!moira_dtype_from_name(NULL, &untouched));
    CHECK(!moira_dtype_from_config_name(NULL, &untouched));

    CHECK(moira_dtype_size(MOIRA_DTYPE_COUNT) == 0);
    CHECK(moira_dtype_size((moira_dtype_t)-1) == 0);
    CHECK(moira_dtype_name(MOIRA_DTYPE_COUNT) != NULL);
    CHECK(!moira_dtype_is_float(MOIRA_DTYPE_COUNT));
}

int main(void) {
    build_reference_tables();
    test_fp8_table_threads();
    test_names_and_sizes();
    test_f16_exhaustive();
    test_f16_rounding();
    test_bf16_exhaustive();
    test_bf16_rounding();
    test_fp8_exhaustive();
    test_fp8_rounding();
    test_bulk();
    return moira_test_finish("test_dtype");
}
