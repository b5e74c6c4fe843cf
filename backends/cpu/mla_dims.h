/* The dimensions every cpu MLA kernel needs, from the shared parameters. Private to
 * backends/cpu/. */
#ifndef MOIRA_BACKENDS_CPU_MLA_DIMS_H
#define MOIRA_BACKENDS_CPU_MLA_DIMS_H

#include <stdint.h>

#include "ops/op.h"

typedef struct moira_cpu_mla_dims {
    int64_t heads, nope, rope, v, latent;
    int64_t q_width;  /* H * (nope + rope) */
    int64_t kv_width; /* H * (nope + v) */
} moira_cpu_mla_dims_t;

/* Widened to int64 once, so index arithmetic never overflows int32 on large T * H * L. */
static inline moira_cpu_mla_dims_t moira_cpu_mla_dims(const moira_mla_params_t *p) {
    return (moira_cpu_mla_dims_t){
        .heads = p->n_heads,
        .nope = p->nope_dim,
        .rope = p->rope_dim,
        .v = p->v_dim,
        .latent = p->kv_lora_rank,
        .q_width = (int64_t)p->n_heads * (p->nope_dim + p->rope_dim),
        .kv_width = (int64_t)p->n_heads * (p->nope_dim + p->v_dim),
    };
}

#endif
