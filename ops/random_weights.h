/* Seeded random weights and activations shaped by a model config: what `moira run` uses when no
 * checkpoint is given, and what the conformance suite feeds every backend. The same seed gives
 * the same values on every machine. */
#ifndef MOIRA_OPS_RANDOM_WEIGHTS_H
#define MOIRA_OPS_RANDOM_WEIGHTS_H

#include <stdint.h>

#include "ops/weights.h"

/* One layer's random weights: `weights` points into tensors this struct owns. */
typedef struct moira_random_layer {
    moira_layer_weights_t weights;
    moira_tensor_t *tensors; /* owned; n_tensors entries */
    moira_tensor_t *scales;  /* owned; fp8 block scales, parallel to tensors */
    int n_tensors;
    const moira_tensor_t **expert_arrays; /* owned; the three expert pointer arrays */
} moira_random_layer_t;

/* Makes every weight layer `layer` of `config` has (attention, norms, MoE or dense MLP), with
 * matrices stored as `weight_dtype` (fp8 with 128x128 block scales) and values scaled by fan-in so
 * activations stay near unit size through many layers. Caller releases `out_layer`. */
moira_status_t moira_random_layer_create(const moira_model_config_t *config, int64_t layer,
                                         uint64_t seed, moira_dtype_t weight_dtype,
                                         moira_random_layer_t *out_layer);
void moira_random_layer_release(moira_random_layer_t *layer);

/* Fills `dst` with deterministic uniform values in [lo, hi) from `seed`. */
void moira_random_fill_uniform(float *dst, size_t n, uint64_t seed, float lo, float hi);

#endif
