#include "tests/unit/testing.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/wait.h>

#include "ops/reference.h"

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

/* The steps of moira_ref_layer up to its router, so the test knows the routing independently of
 * whatever recorded it. */
static moira_status_t reference_route(const moira_model_config_t *c,
                                      const moira_layer_weights_t *layer, const moira_tensor_t *x,
                                      const moira_tensor_t *positions, moira_tensor_t *a,
                                      moira_tensor_t *m, moira_tensor_t *idx, moira_tensor_t *w) {
    MOIRA_RETURN_IF_ERROR(moira_ref_rmsnorm(x, layer->input_layernorm, c->rms_norm_eps, a));
    MOIRA_RETURN_IF_ERROR(moira_ref_mla(c, &layer->mla, a, positions, m));
    float *h = m->data;
    for (int64_t i = 0; i < moira_tensor_numel(x); i++)
        h[i] += ((const float *)x->data)[i];
    MOIRA_RETURN_IF_ERROR(
        moira_ref_rmsnorm(m, layer->post_attention_layernorm, c->rms_norm_eps, a));
    return moira_ref_gate(c, a, layer->moe.gate, layer->moe.e_score_correction_bias, idx, w, NULL);
}

moira_status_t moira_test_reference_moe_load(const moira_model_config_t *c,
                                             const moira_layer_weights_t *layer,
                                             const moira_tensor_t *x,
                                             const moira_tensor_t *positions, double *load) {
    int64_t t = x->shape[0], d = x->shape[1], k = c->num_experts_per_tok;
    int64_t shape[2] = {t, k};
    moira_tensor_t a = {0}, m = {0}, idx = {0}, w = {0};
    moira_status_t status = moira_tensor_alloc_f32(t, d, &a);
    if (!status) status = moira_tensor_alloc_f32(t, d, &m);
    if (!status) status = moira_tensor_alloc(MOIRA_DTYPE_I32, 2, shape, &idx);
    if (!status) status = moira_tensor_alloc_f32(t, k, &w);
    if (!status) status = reference_route(c, layer, x, positions, &a, &m, &idx, &w);
    for (int64_t i = 0; !status && i < t * k; i++)
        if (((int32_t *)idx.data)[i] >= 0) load[((int32_t *)idx.data)[i]] += 1;
    moira_tensor_release(&a);
    moira_tensor_release(&m);
    moira_tensor_release(&idx);
    moira_tensor_release(&w);
    return status;
}

int moira_test_run_capture(const char *command, char *output, size_t size) {
    FILE *pipe = popen(command, "r");
    if (!pipe) return -1;
    size_t used = fread(output, 1, size - 1, pipe);
    output[used] = '\0';
    int rc = pclose(pipe);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}
