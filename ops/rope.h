/* Rotary position embedding frequencies for MLA's rope slice (DESIGN.md §4, mla / YaRN).
 *
 * Every backend rotates the same consecutive pairs (2i, 2i+1) by pos * inv_freq[i] and scales cos
 * and sin by one factor; this is the one place those numbers are computed, in double, so that all
 * backends and the reference rotate by exactly the same angles. The attention softmax scale (with
 * YaRN's mscale_all_dim) is moira_model_config_attention_scale in runtime/model_config.h. */
#ifndef MOIRA_OPS_ROPE_H
#define MOIRA_OPS_ROPE_H

#include "runtime/model_config.h"
#include "runtime/status.h"

/* Fills `out_inv_freq` (qk_rope_head_dim / 2 entries, caller-owned) with
 * inv_freq[i] = rope_theta^(-2i/d), d = qk_rope_head_dim, blended with inv_freq[i] / factor by
 * YaRN's ramp when rope_scaling is set, and `*out_cos_sin_scale` with YaRN's
 * ym(factor, mscale) / ym(factor, mscale_all_dim) (1 without rope_scaling). Either output may be
 * NULL. INVALID_ARGUMENT when qk_rope_head_dim is not positive and even, rope_theta is not above 1,
 * or the YaRN factor or original_max_position_embeddings is not positive. */
moira_status_t moira_rope_inv_freq(const moira_model_config_t *config, double *out_inv_freq,
                                   double *out_cos_sin_scale);

/* YaRN's ym(f, m) = 0.1 * m * ln(f) + 1, or 1 when f <= 1: the factor cos/sin and the softmax
 * scale are corrected by. */
double moira_yarn_mscale(double factor, double mscale);

#endif
