/* Portable decode-attention micro-kernels (mla_decode.h): plain loops over an f32 cache, the
 * form every SIMD version must match. A bf16 cache reaches them widened by the driver. */
#include "backends/cpu/mla_decode.h"

#include <math.h>
#include <string.h>

#define Q MOIRA_CPU_DECODE_QUERIES

/* Each query's q_lat then q_pe, scaled, one row of latent + rope floats per query. */
static size_t layout_bytes(int64_t latent, int64_t rope) {
    return (size_t)(Q * (latent + rope)) * sizeof(float);
}

static void prepare(const moira_cpu_decode_queries_t *queries, void *raw) {
    float *layout = raw;
    int64_t width = queries->latent + queries->rope;
    for (int i = 0; i < queries->n; i++) {
        for (int64_t d = 0; d < queries->latent; d++)
            layout[i * width + d] = queries->q_lat[i][d] * queries->scale;
        for (int64_t d = 0; d < queries->rope; d++)
            layout[i * width + queries->latent + d] = queries->q_pe[i][d] * queries->scale;
    }
}

static float dot(const float *x, const float *y, int64_t n) {
    float sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += x[i] * y[i];
    return sum;
}

/* Scores, the new running max, exp(score - max) as weights, then the old sums and outputs
 * rescaled by exp(old max - new max) and the weighted rows added. */
static void fold(const void *raw, const moira_cpu_decode_queries_t *queries,
                 const moira_cpu_decode_rows_t *rows, moira_cpu_decode_state_t *state,
                 float *scratch) {
    const float *layout = raw;
    const float *c = rows->c, *k_pe = rows->k_pe;
    int64_t latent = queries->latent, rope = queries->rope, width = latent + rope;
    float *p = scratch;
    for (int i = 0; i < queries->n; i++) {
        const float *q = layout + i * width;
        float block_max = -INFINITY;
        for (int j = 0; j < rows->n; j++) {
            float s = dot(q, c + j * rows->c_stride, latent) +
                      dot(q + latent, k_pe + j * rows->pe_stride, rope);
            p[j * Q + i] = s;
            block_max = s > block_max ? s : block_max;
        }
        float old_max = state->fresh ? -INFINITY : state->max[i];
        float new_max = block_max > old_max ? block_max : old_max;
        float rescale = state->fresh ? 0.0f : expf(old_max - new_max);
        float sum = 0;
        for (int j = 0; j < rows->n; j++) {
            p[j * Q + i] = expf(p[j * Q + i] - new_max);
            sum += p[j * Q + i];
        }
        state->max[i] = new_max;
        state->sum[i] = (state->fresh ? 0.0f : state->sum[i] * rescale) + sum;
        float *out = state->out + i * latent;
        if (state->fresh) memset(out, 0, (size_t)latent * sizeof(float));
        for (int64_t d = 0; d < latent; d++)
            out[d] *= rescale;
        for (int j = 0; j < rows->n; j++)
            for (int64_t d = 0; d < latent; d++)
                out[d] += p[j * Q + i] * c[j * rows->c_stride + d];
    }
    state->fresh = false;
}

const moira_cpu_decode_kernels_t moira_cpu_decode_portable = {
    .isa = MOIRA_CPU_ISA_PORTABLE,
    .dtype = MOIRA_DTYPE_F32,
    .layout_bytes = layout_bytes,
    .prepare = prepare,
    .fold = fold,
};
