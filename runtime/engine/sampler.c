/* Sampling the next token (runtime/engine/sampler.h). */
#include "runtime/engine/sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

/* Parameters out of range are the caller's input error, named as the API names them. */
static moira_status_t check_params(const moira_sampling_t *params) {
    if (!(params->temperature >= 0) || !isfinite(params->temperature))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "temperature must be a finite number >= 0, got %g",
                                 params->temperature);
    if (!(params->top_p > 0 && params->top_p <= 1))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "top_p must be in (0, 1], got %g",
                                 params->top_p);
    if (params->top_k < 0)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "top_k must be >= 0, got %d",
                                 params->top_k);
    return MOIRA_OK_STATUS;
}

moira_status_t moira_sampler_init(moira_sampler_t *sampler, const moira_sampling_t *params,
                                  int32_t vocab) {
    sampler->probs = NULL;
    sampler->order = NULL;
    MOIRA_RETURN_IF_ERROR(check_params(params));
    if (vocab < 1)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "sampler: vocabulary of %d", vocab);
    sampler->params = *params;
    sampler->state = params->seed;
    sampler->vocab = vocab;
    sampler->probs = malloc((size_t)vocab * sizeof(float));
    sampler->order = malloc((size_t)vocab * sizeof(int32_t));
    if (sampler->probs && sampler->order) return MOIRA_OK_STATUS;
    moira_sampler_free(sampler);
    return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "sampler: out of memory");
}

moira_status_t moira_sampler_reseed(moira_sampler_t *sampler, const moira_sampling_t *params) {
    MOIRA_RETURN_IF_ERROR(check_params(params));
    sampler->params = *params;
    sampler->state = params->seed;
    return MOIRA_OK_STATUS;
}

void moira_sampler_free(moira_sampler_t *sampler) {
    free(sampler->probs);
    free(sampler->order);
    sampler->probs = NULL;
    sampler->order = NULL;
}

/* splitmix64: a small generator whose whole state is the seed, so a run is reproducible. */
static double next_uniform(moira_sampler_t *s) {
    uint64_t z = (s->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

/* The larger logit, NaN counting as the smallest; ties to the lower id (scan order). */
int32_t moira_logits_argmax(const float *logits, int32_t vocab) {
    int32_t best = 0;
    for (int32_t i = 1; i < vocab; i++)
        if (logits[i] > logits[best] || (isnan(logits[best]) && !isnan(logits[i]))) best = i;
    return best;
}

/* Whether token a ranks before token b: the higher probability, ties to the lower id. */
static bool better(const float *probs, int32_t a, int32_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
}

/* Max-heap of token ids by `better`, in place: no allocation, as decode requires. */
static void sift_down(const float *probs, int32_t *heap, int32_t n, int32_t i) {
    for (;;) {
        int32_t best = i, l = 2 * i + 1, r = l + 1;
        if (l < n && better(probs, heap[l], heap[best])) best = l;
        if (r < n && better(probs, heap[r], heap[best])) best = r;
        if (best == i) return;
        int32_t t = heap[i];
        heap[i] = heap[best];
        heap[best] = t;
        i = best;
    }
}

/* Moves the heap's best token to the end of the live heap, which shrinks by one: after j pops
 * order[n-1], order[n-2], ... order[n-j] are the j best tokens in rank order. */
static void pop_best(const float *probs, int32_t *heap, int32_t *n) {
    int32_t last = --*n;
    int32_t t = heap[0];
    heap[0] = heap[last];
    heap[last] = t;
    sift_down(probs, heap, last, 0);
}

int32_t moira_sampler_next(moira_sampler_t *s, const float *logits) {
    const moira_sampling_t *p = &s->params;
    int32_t vocab = s->vocab;
    if (p->temperature == 0) return moira_logits_argmax(logits, vocab);
    float top = logits[moira_logits_argmax(logits, vocab)];
    double total = 0;
    for (int32_t i = 0; i < vocab; i++) {
        float z = (float)exp((double)(logits[i] - top) / p->temperature);
        s->probs[i] = isnan(z) ? 0.0f : z;
        total += s->probs[i];
    }
    int32_t keep = p->top_k > 0 && p->top_k < vocab ? p->top_k : vocab;
    if (keep == vocab && p->top_p >= 1) {
        double u = next_uniform(s) * total, sum = 0;
        for (int32_t i = 0; i < vocab; i++)
            if ((sum += s->probs[i]) > u) return i;
        return moira_logits_argmax(logits, vocab);
    }
    for (int32_t i = 0; i < vocab; i++)
        s->order[i] = i;
    int32_t live = vocab;
    for (int32_t i = vocab / 2 - 1; i >= 0; i--)
        sift_down(s->probs, s->order, live, i);
    /* The top-k set first (its mass is top-p's 100%), then its nucleus. */
    double kept_total = 0;
    if (keep < vocab) {
        for (int32_t j = 0; j < keep; j++) {
            pop_best(s->probs, s->order, &live);
            kept_total += s->probs[s->order[live]];
        }
    } else {
        kept_total = total;
    }
    double target = p->top_p * kept_total, mass = 0;
    int32_t chosen = 0;
    for (int32_t j = 0; j < keep; j++) {
        if (vocab - live <= j) pop_best(s->probs, s->order, &live);
        mass += s->probs[s->order[vocab - 1 - j]];
        chosen = j + 1;
        if (mass >= target) break;
    }
    double u = next_uniform(s) * mass, sum = 0;
    for (int32_t j = 0; j < chosen; j++) {
        int32_t id = s->order[vocab - 1 - j];
        if ((sum += s->probs[id]) > u) return id;
    }
    return s->order[vocab - chosen];
}
