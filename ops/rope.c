#include "ops/rope.h"

#include <math.h>

/* Shared by the cos/sin scale here and by anyone who needs the softmax correction by hand. */
double moira_yarn_mscale(double factor, double mscale) {
    if (factor <= 1.0) return 1.0;
    return 0.1 * mscale * log(factor) + 1.0;
}

/* The dimension (in rope_dim units) below which a frequency makes more than `rotations` turns
 * over the original context: YaRN's corr(n). */
static double yarn_correction_dim(double rotations, double dim, double base, double l0) {
    return dim * log(l0 / (2.0 * M_PI * rotations)) / (2.0 * log(base));
}

/* Written to follow DESIGN.md §4 line by line (which follows the Hugging Face DeepSeek code), so a
 * reader can check it against the spec without knowing YaRN. */
moira_status_t moira_rope_inv_freq(const moira_model_config_t *config, double *out_inv_freq,
                                   double *out_cos_sin_scale) {
    int64_t d = config->qk_rope_head_dim;
    if (d <= 0 || d % 2 != 0)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "rope: qk_rope_head_dim must be positive and even, got %lld",
                                 (long long)d);
    double base = config->rope_theta;
    if (!(base > 1.0))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "rope: rope_theta must be above 1, got %g", base);
    const moira_rope_scaling_t *rs = &config->rope_scaling;
    if (rs->enabled && (!(rs->factor > 0.0) || rs->original_max_position_embeddings <= 0))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "rope: yarn needs a positive factor and "
                                 "original_max_position_embeddings (got %g, %lld)",
                                 rs->factor, (long long)rs->original_max_position_embeddings);
    int64_t pairs = d / 2;
    double low = 0, high = 0;
    if (rs->enabled) {
        double l0 = (double)rs->original_max_position_embeddings;
        low = fmax(floor(yarn_correction_dim(rs->beta_fast, (double)d, base, l0)), 0.0);
        high = fmin(ceil(yarn_correction_dim(rs->beta_slow, (double)d, base, l0)), (double)d - 1);
        if (low == high) high += 0.001;
    }
    for (int64_t i = 0; out_inv_freq && i < pairs; i++) {
        double inv_freq = pow(base, -2.0 * (double)i / (double)d);
        if (rs->enabled) {
            double ramp = ((double)i - low) / (high - low);
            ramp = ramp < 0.0 ? 0.0 : ramp > 1.0 ? 1.0 : ramp;
            double keep = 1.0 - ramp;
            inv_freq = inv_freq / rs->factor * (1.0 - keep) + inv_freq * keep;
        }
        out_inv_freq[i] = inv_freq;
    }
    if (out_cos_sin_scale) {
        *out_cos_sin_scale = rs->enabled ? moira_yarn_mscale(rs->factor, rs->mscale) /
                                               moira_yarn_mscale(rs->factor, rs->mscale_all_dim)
                                         : 1.0;
    }
    return MOIRA_OK_STATUS;
}
