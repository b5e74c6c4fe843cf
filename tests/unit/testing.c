#include "tests/unit/testing.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

int moira_test_failures = 0;
int moira_test_checks = 0;

void moira_test_fail(const char *file, int line, const char *fmt, ...) {
    moira_test_failures++;
    fprintf(stderr, "%s:%d: FAIL: ", file, line);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
}

double moira_test_nmse(const float *got, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        bool got_finite = isfinite(got[i]), ref_finite = isfinite(ref[i]);
        if (got_finite != ref_finite) return INFINITY;
        if (!got_finite) continue;
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return num / den;
}

double moira_test_nmse_f32(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if ((bool)isfinite(got[i]) != (bool)isfinite(ref[i])) return INFINITY;
        if (!isfinite(got[i])) continue;
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return num / den;
}

void moira_test_fill_uniform(float *dst, size_t n, uint64_t seed, float lo, float hi) {
    uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        double unit = (double)(state >> 11) / 9007199254740992.0;
        dst[i] = lo + (float)(unit * (hi - lo));
    }
}

int moira_test_finish(const char *name) {
    int passed = moira_test_checks - moira_test_failures;
    printf("%s: %d passed, %d failed\n", name, passed, moira_test_failures);
    return moira_test_failures ? 1 : 0;
}
