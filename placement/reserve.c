/* Per-target memory reserves (reserve.h). */
#include "placement/reserve.h"

void moira_model_layer_bytes(const moira_model_config_t *c, int64_t layer, moira_dtype_t dtype,
                             double *out_experts, double *out_rest) {
    double d = (double)c->hidden_size, h = (double)c->num_attention_heads;
    double qk = (double)(c->qk_nope_head_dim + c->qk_rope_head_dim);
    double q = c->q_lora_rank > 0 ? (double)c->q_lora_rank * (d + h * qk) : h * qk * d;
    double attention = q + (double)(c->kv_lora_rank + c->qk_rope_head_dim) * d +
                       h * (double)(c->qk_nope_head_dim + c->v_head_dim) * (double)c->kv_lora_rank +
                       d * h * (double)c->v_head_dim;
    double size = (double)moira_dtype_size(dtype);
    bool moe = moira_model_config_is_moe_layer(c, layer);
    double expert = 3.0 * d * (double)c->moe_intermediate_size;
    double rest = moe ? expert * (double)c->n_shared_experts + d * (double)c->n_routed_experts
                      : 3.0 * d * (double)c->intermediate_size;
    *out_experts = moe ? expert * (double)c->n_routed_experts * size : 0;
    *out_rest = (attention + rest) * size;
}

double moira_model_home_bytes(const moira_model_config_t *model) {
    double total = 0;
    for (int64_t l = 0; l < model->num_hidden_layers; l++) {
        double experts = 0, rest = 0;
        moira_model_layer_bytes(model, l, model->weight_dtype, &experts, &rest);
        total += rest;
    }
    return total;
}

/* Planning every byte of a device for experts leaves nothing for what runs beside them: a plan
 * that passed --check then failed in run with an allocation error after loading for minutes. */
void moira_topology_reserve(moira_topology_t *topology, const moira_model_config_t *model,
                            double extra_bytes, int home_target) {
    double home = moira_model_home_bytes(model), host_memory = 0;
    bool on_device = home_target >= 0 && topology->targets[home_target].kind != MOIRA_TARGET_NUMA;
    for (int i = 0; i < topology->n_targets; i++) {
        const moira_target_t *t = &topology->targets[i];
        if (t->host == 0 && t->kind == MOIRA_TARGET_NUMA) host_memory += (double)t->memory_bytes;
    }
    for (int i = 0; i < topology->n_targets; i++) {
        moira_target_t *t = &topology->targets[i];
        double memory = (double)t->memory_bytes;
        double reserve = MOIRA_RESERVE_HEADROOM * memory + extra_bytes;
        if (on_device && i == home_target)
            reserve += home;
        else if (!on_device && t->host == 0 && t->kind == MOIRA_TARGET_NUMA && host_memory > 0)
            reserve += home * memory / host_memory;
        t->reserve_bytes = reserve < memory ? (uint64_t)reserve : t->memory_bytes;
    }
}
