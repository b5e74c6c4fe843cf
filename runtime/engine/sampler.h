/* Choosing the next token from logits (DESIGN.md §4 sampling): greedy at temperature 0, else
 * softmax(logits / temperature), then top-k, then top-p, then a draw from a seeded generator, so
 * one seed always gives the same tokens. A sampler owns scratch for one vocabulary and allocates
 * nothing per token. */
#ifndef MOIRA_RUNTIME_ENGINE_SAMPLER_H
#define MOIRA_RUNTIME_ENGINE_SAMPLER_H

#include <stdint.h>

#include "runtime/status.h"

typedef struct moira_sampling {
    double temperature; /* 0: greedy */
    double top_p;       /* 1: off */
    int32_t top_k;      /* 0: off */
    uint64_t seed;
} moira_sampling_t;

typedef struct moira_sampler {
    moira_sampling_t params;
    uint64_t state;
    int32_t vocab;
    float *probs;   /* owned [vocab] */
    int32_t *order; /* owned [vocab] */
} moira_sampler_t;

/* Checks the parameters (temperature >= 0 and finite, 0 < top_p <= 1, top_k >= 0). Caller frees
 * with moira_sampler_free. */
moira_status_t moira_sampler_init(moira_sampler_t *sampler, const moira_sampling_t *params,
                                  int32_t vocab);

/* Starts the sampler over with new parameters, keeping its scratch: what a batch slot does for
 * each new request, allocating nothing. Checks the parameters as moira_sampler_init does. */
moira_status_t moira_sampler_reseed(moira_sampler_t *sampler, const moira_sampling_t *params);

void moira_sampler_free(moira_sampler_t *sampler);

/* The greedy token of `logits` [vocab] (borrowed): the largest, NaN counting as the smallest,
 * ties to the lower id. */
int32_t moira_logits_argmax(const float *logits, int32_t vocab);

/* The next token for `logits` [vocab] (borrowed). Ties go to the lower id. */
int32_t moira_sampler_next(moira_sampler_t *sampler, const float *logits);

#endif
