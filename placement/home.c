/* The home device: its cost and its choice (home.h). */
#include "placement/home.h"

#include <stdio.h>

#include "placement/reserve.h"

/* The target whose calibrated home figures apply: the device itself, or for CPU memory the
 * host's first NUMA node, where `moira calibrate` writes the whole host's (the cpu device runs
 * the home on every core). */
static const moira_target_t *home_measured_at(const moira_topology_t *topology, int home) {
    const moira_target_t *h = &topology->targets[home];
    if (h->kind != MOIRA_TARGET_NUMA) return h;
    for (int i = 0; i < topology->n_targets; i++)
        if (topology->targets[i].kind == MOIRA_TARGET_NUMA && topology->targets[i].host == h->host)
            return &topology->targets[i];
    return h;
}

/* Bandwidth (GB/s) and peak (TFLOP/s for the model's weights) the home would compute with: the
 * calibrated home throughput when there is one. */
static void home_speed(const moira_topology_t *topology, int home, moira_dtype_t dtype,
                       double *out_gbs, double *out_tflops) {
    const moira_target_t *h = &topology->targets[home];
    *out_gbs = moira_target_bandwidth_gbs(h);
    *out_tflops = moira_target_peak_tflops(h, dtype);
    if (h->kind == MOIRA_TARGET_NUMA) {
        *out_gbs = *out_tflops = 0;
        for (int i = 0; i < topology->n_targets; i++) {
            const moira_target_t *t = &topology->targets[i];
            if (t->kind != MOIRA_TARGET_NUMA || t->host != h->host) continue;
            *out_gbs += moira_target_bandwidth_gbs(t);
            *out_tflops += moira_target_peak_tflops(t, dtype);
        }
    }
    const moira_target_t *measured = home_measured_at(topology, home);
    if (measured->measured.home_tflops > 0) *out_tflops = measured->measured.home_tflops;
}

double moira_home_attention_flops(const moira_model_config_t *model, double tokens) {
    double dims = (double)(model->qk_nope_head_dim + model->qk_rope_head_dim + model->v_head_dim);
    return (double)model->num_attention_heads * dims * tokens * (tokens + 1);
}

double moira_home_layer_us(const moira_topology_t *topology, int home,
                           const moira_model_config_t *model, int64_t layer, double tokens) {
    double experts = 0, rest = 0, gbs = 0, tflops = 0;
    moira_model_layer_bytes(model, layer, model->weight_dtype, &experts, &rest);
    home_speed(topology, home, model->weight_dtype, &gbs, &tflops);
    double params = rest / (double)moira_dtype_size(model->weight_dtype);
    double memory_us = gbs > 0 ? rest / (gbs * 1e3) : 1e30;
    double compute_us = tflops > 0 ? 2.0 * params * tokens / (tflops * 1e6) : 1e30;
    const moira_measured_t *measured = &home_measured_at(topology, home)->measured;
    double attention_us =
        measured->home_attention_tflops > 0
            ? moira_home_attention_flops(model, tokens) / (measured->home_attention_tflops * 1e6)
            : 0;
    return measured->home_launch_us + (memory_us > compute_us ? memory_us : compute_us) +
           attention_us;
}

int moira_home_choose(const moira_topology_t *topology, const moira_model_config_t *model,
                      double tokens) {
    double need = moira_model_home_bytes(model);
    int best = -1;
    double best_us = 0;
    for (int i = 0; i < topology->n_targets; i++) {
        const moira_target_t *t = &topology->targets[i];
        if (t->host != 0) continue;
        double memory = (double)t->memory_bytes;
        if (t->kind == MOIRA_TARGET_NUMA) { /* the host's CPU memory together */
            memory = 0;
            for (int j = 0; j < topology->n_targets; j++)
                if (topology->targets[j].kind == MOIRA_TARGET_NUMA &&
                    topology->targets[j].host == 0)
                    memory += (double)topology->targets[j].memory_bytes;
        }
        if (need > (1.0 - MOIRA_RESERVE_HEADROOM) * memory) continue;
        double us = 0;
        for (int64_t l = 0; l < model->num_hidden_layers; l++)
            us += moira_home_layer_us(topology, i, model, l, tokens);
        /* Strictly faster wins, so CPU memory (listed first) keeps ties. */
        if (best < 0 || us < best_us * (1 - 1e-9)) {
            best = i;
            best_us = us;
        }
    }
    return best;
}

void moira_plan_set_home(moira_plan_t *plan, const moira_topology_t *topology,
                         const moira_model_config_t *model, int home) {
    snprintf(plan->home, sizeof(plan->home), "%s", topology->targets[home].name);
    moira_plan_evaluate(plan, topology, model);
}
