/* `moira run`'s summary: what ran where, how fast, predicted against measured, and whether the
 * answer is right; as text for people and as JSON for scripts (runtime/cli/run.h). */
#include <math.h>
#include <stdio.h>

#include "placement/tree_writer.h"
#include "runtime/cli/run.h"

/* Per-batch figures: the stats are sums over the timed forwards. */
static double per_batch(const moira_exec_stats_t *s, double value) {
    return s->forwards > 0 ? value / (double)s->forwards : 0;
}

/* A checkpoint may store another dtype than the config names; show what was loaded. */
static const char *weights_dtype_name(const run_result_t *r) {
    const moira_layer_weights_t *first = &r->model->layers[0];
    return moira_dtype_name(first->mla.kv_b_proj ? first->mla.kv_b_proj->dtype
                                                 : r->model->config.weight_dtype);
}

/* What ran, from what, and the headline speed, before the tables. */
static void print_header(const run_result_t *r) {
    const moira_model_config_t *c = &r->model->config;
    const moira_exec_stats_t *s = r->stats;
    const moira_device_info_t *home = moira_device_info(r->placement->home);
    printf("model   %s: %lld layers (%lld MoE), hidden %lld, %lld experts top-%lld, MLA %lld "
           "heads\n",
           c->name, (long long)c->num_hidden_layers,
           (long long)moira_model_config_moe_layer_count(c), (long long)c->hidden_size,
           (long long)c->n_routed_experts, (long long)c->num_experts_per_tok,
           (long long)c->num_attention_heads);
    printf("weights %s (%s), loaded and uploaded in %.3f s\n",
           r->args->weights ? r->args->weights : "seeded random", weights_dtype_name(r), r->load_s);
    printf("plan    %s: %d device%s experts", r->placement->source, s->n_targets,
           s->n_targets == 1 ? " holds" : "s hold");
    if (s->ranks > 1) printf(" on %d hosts, one rank each (mpirun)", s->ranks);
    printf("\n");
    printf("home    %s (%s): attention, router and shared experts of every layer; dense layers "
           "whole\n",
           home->name, home->model);
    double ms = 1e3 * per_batch(s, s->wall_s);
    if (r->data_parallel_ranks > 1)
        printf("data    every rank ran a batch of its own (data-parallel, %d ranks); the timings "
               "are rank 0's, the check covers every rank's batch\n",
               r->data_parallel_ranks);
    printf("run     %lld tokens x %lld iters: %.3f ms per batch, %.1f tokens/s\n\n",
           (long long)r->model->x.shape[0], (long long)s->forwards, ms,
           s->wall_s > 0 ? (double)s->tokens / s->wall_s : 0);
}

/* The device table: one row per target, then the home device's share. */
static void print_devices(const run_result_t *r) {
    const moira_exec_stats_t *s = r->stats;
    printf("%-20s %-9s %7s %7s %8s %9s %12s %9s  %s\n", "DEVICE", "RUNS ON", "EXPERTS", "TOKENS",
           "ASSIGNED", "BUSY ms", "PREDICTED ms", "MOVED MB", "CHECK (NMSE vs limit)");
    for (int i = 0; i < s->n_targets; i++) {
        const moira_exec_target_stats_t *t = &s->targets[i];
        const char *name = r->placement->topology.targets[t->target].name;
        printf("%-20s %-9s %7lld %7.0f %8.0f %9.3f %12.3f %9.3f  ", name, t->device_name,
               (long long)t->replicas, per_batch(s, (double)t->tokens),
               per_batch(s, (double)t->assignments), 1e3 * per_batch(s, t->busy_s),
               1e-3 * per_batch(s, t->predicted_us),
               per_batch(s, t->bytes_to_device + t->bytes_from_device) / 1e6);
        if (t->checked)
            printf("%.2e vs %.0e %s\n", t->check_nmse, t->check_limit,
                   t->check_nmse <= t->check_limit ? "agreed" : "DISAGREED");
        else
            printf("(served no tokens)\n");
    }
    double home_s = 0;
    for (int l = 0; l < s->n_layers; l++)
        home_s += s->layers[l].home_s;
    printf("%-20s %-9s %7s %7lld %8s %9.3f %12s %9.3f\n", "home",
           moira_device_info(r->placement->home)->name, "-", (long long)r->model->x.shape[0], "-",
           1e3 * per_batch(s, home_s), "-", per_batch(s, s->home_bytes) / 1e6);
}

/* Per layer: wall time and its split, next to the cost model for the observed load and the
 * plan's own prediction (for the load it was planned for). */
static void print_layers(const run_result_t *r) {
    const moira_exec_stats_t *s = r->stats;
    printf("\n%-6s %-6s %-9s %9s %9s %11s %13s %8s\n", "LAYER", "KIND", "HOME", "WALL ms",
           "HOME ms", "EXPERTS ms", "PREDICTED ms", "PLAN ms");
    for (int l = 0; l < s->n_layers; l++) {
        const moira_exec_layer_stats_t *layer = &s->layers[l];
        printf("%-6lld %-6s %-9s %9.3f %9.3f ", (long long)layer->layer,
               layer->is_moe ? "moe" : "dense", moira_device_info(layer->home)->name,
               1e3 * per_batch(s, layer->wall_s), 1e3 * per_batch(s, layer->home_s));
        if (layer->is_moe && layer->plan_predicted_us > 0)
            printf("%11.3f %13.3f %8.3f\n", 1e3 * per_batch(s, layer->experts_s),
                   1e-3 * per_batch(s, layer->predicted_us), 1e-3 * layer->plan_predicted_us);
        else if (layer->is_moe) /* a hand-written plan without loads predicts nothing */
            printf("%11.3f %13.3f %8s\n", 1e3 * per_batch(s, layer->experts_s),
                   1e-3 * per_batch(s, layer->predicted_us), "-");
        else
            printf("%11s %13s %8s\n", "-", "-", "-");
    }
}

/* Across hosts: what each MoE layer's exchange moved next to the cost model's network bytes for
 * the load routed (placement/network_cost.h), and the time rank 0 spent in it. */
static void print_network(const run_result_t *r) {
    const moira_exec_stats_t *s = r->stats;
    if (s->ranks < 2) return;
    printf("\n%-6s %14s %14s %12s %14s   (per batch; EXCHANGE includes waiting for the other "
           "hosts' experts)\n",
           "LAYER", "NETWORK KB", "PREDICTED KB", "EXCHANGE ms", "PREDICTED ms");
    for (int l = 0; l < s->n_layers; l++) {
        const moira_exec_layer_stats_t *layer = &s->layers[l];
        if (!layer->is_moe) continue;
        printf("%-6lld %14.3f %14.3f %12.3f %14.3f\n", (long long)layer->layer,
               per_batch(s, layer->network_bytes) / 1e3,
               per_batch(s, layer->predicted_network_bytes) / 1e3,
               1e3 * per_batch(s, layer->exchange_s),
               1e-3 * per_batch(s, layer->predicted_network_us));
    }
}

/* The tables, then the npu's modelled time (its wall time is an emulator's), then the verdict. */
/* Measured busy time against the cost model's prediction, per device: beyond a factor of 2 either
 * way the topology's figures are not this device's, and every plan made with them misjudges it
 * (issue 15: 5-70x on cpu:0 with discovery's estimates), so the run says so on stderr. */
static void warn_off_predictions(const run_result_t *r) {
    const moira_exec_stats_t *s = r->stats;
    for (int i = 0; i < s->n_targets; i++) {
        const moira_exec_target_stats_t *t = &s->targets[i];
        double busy_us = 1e6 * t->busy_s,
               ratio = t->predicted_us > 0 ? busy_us / t->predicted_us : 0;
        if (!(busy_us > 0 && t->predicted_us > 0) || (ratio <= 2 && ratio >= 0.5)) continue;
        fprintf(stderr,
                "moira: warning: %s (%s) was busy %.3g x its predicted time (%.3f ms measured, "
                "%.3f ms predicted per batch): the topology's bandwidth and peak for it are not "
                "what it delivers, so plans misjudge it\n",
                r->placement->topology.targets[t->target].name, t->device_name, ratio,
                1e3 * per_batch(s, t->busy_s), 1e-3 * per_batch(s, t->predicted_us));
    }
}

void run_report_text(const run_result_t *r) {
    const moira_exec_stats_t *s = r->stats;
    warn_off_predictions(r);
    print_header(r);
    print_devices(r);
    print_layers(r);
    print_network(r);
    printf("\n");
    for (int i = 0; i < s->n_targets; i++) {
        const moira_exec_target_stats_t *t = &s->targets[i];
        if (t->has_modelled)
            printf("cost    %s cost model: %.4f ms device time per batch (summed over its kernel "
                   "launches; BUSY is the emulator's wall time)\n",
                   t->device_name, 1e-3 * per_batch(s, t->modelled_us));
    }
    printf("check   every layer vs the reference on its input: worst NMSE %.3g (layer %lld), limit "
           "%.0e of the least precise device %s -> %s\n",
           r->layer_nmse, (long long)r->worst_layer, r->limit, r->limit_device,
           r->agreed ? "agreed" : "DISAGREED");
    if (r->near_ties)
        printf("        %d token(s) routed apart at a near tie of the reference's router set aside "
               "(rounding may pick either expert)\n",
               r->near_ties);
    printf("        end to end over %lld layers: NMSE %.3g (errors compound, and a router's near "
           "tie may tip either way)\n",
           (long long)r->model->n_layers, r->nmse);
}

/* A NaN (a device that produced one) is written as the string "nan", never as a number. */
static void json_number(moira_tree_writer_t *w, const char *key, double value) {
    moira_tree_key(w, key);
    if (isnan(value))
        moira_tree_string(w, "nan");
    else
        moira_tree_double(w, value);
}

/* Key and value in one call keeps the JSON writers below readable. */
static void json_string(moira_tree_writer_t *w, const char *key, const char *value) {
    moira_tree_key(w, key);
    moira_tree_string(w, value);
}

/* The device table's rows, per batch like the text. */
static void json_devices(moira_tree_writer_t *w, const run_result_t *r) {
    const moira_exec_stats_t *s = r->stats;
    moira_tree_key(w, "devices");
    moira_tree_list(w, false);
    for (int i = 0; i < s->n_targets; i++) {
        const moira_exec_target_stats_t *t = &s->targets[i];
        moira_tree_map(w, true);
        json_string(w, "name", r->placement->topology.targets[t->target].name);
        json_string(w, "device", t->device_name);
        json_number(w, "experts", (double)t->replicas);
        json_number(w, "tokens", per_batch(s, (double)t->tokens));
        json_number(w, "assignments", per_batch(s, (double)t->assignments));
        json_number(w, "busy_ms", 1e3 * per_batch(s, t->busy_s));
        json_number(w, "predicted_ms", 1e-3 * per_batch(s, t->predicted_us));
        if (t->has_modelled)
            json_number(w, "modelled_device_ms", 1e-3 * per_batch(s, t->modelled_us));
        json_number(w, "bytes_to_device", per_batch(s, t->bytes_to_device));
        json_number(w, "bytes_from_device", per_batch(s, t->bytes_from_device));
        if (t->checked) {
            json_number(w, "nmse", t->check_nmse);
            json_number(w, "limit", t->check_limit);
            moira_tree_key(w, "agreed");
            moira_tree_bool(w, t->check_nmse <= t->check_limit);
        }
        moira_tree_close(w, true);
    }
    moira_tree_close(w, false);
}

/* The layer table's rows, per batch like the text. */
static void json_layers(moira_tree_writer_t *w, const run_result_t *r) {
    const moira_exec_stats_t *s = r->stats;
    moira_tree_key(w, "layers");
    moira_tree_list(w, false);
    for (int l = 0; l < s->n_layers; l++) {
        const moira_exec_layer_stats_t *layer = &s->layers[l];
        moira_tree_map(w, true);
        json_number(w, "layer", (double)layer->layer);
        json_string(w, "kind", layer->is_moe ? "moe" : "dense");
        json_string(w, "home", moira_device_info(layer->home)->name);
        json_number(w, "wall_ms", 1e3 * per_batch(s, layer->wall_s));
        json_number(w, "home_ms", 1e3 * per_batch(s, layer->home_s));
        if (layer->is_moe) {
            json_number(w, "experts_ms", 1e3 * per_batch(s, layer->experts_s));
            json_number(w, "predicted_ms", 1e-3 * per_batch(s, layer->predicted_us));
            json_number(w, "plan_predicted_ms", 1e-3 * layer->plan_predicted_us);
            if (s->ranks > 1) {
                json_number(w, "network_bytes", per_batch(s, layer->network_bytes));
                json_number(w, "predicted_network_bytes",
                            per_batch(s, layer->predicted_network_bytes));
                json_number(w, "exchange_ms", 1e3 * per_batch(s, layer->exchange_s));
                json_number(w, "predicted_network_ms",
                            1e-3 * per_batch(s, layer->predicted_network_us));
            }
        }
        moira_tree_close(w, true);
    }
    moira_tree_close(w, false);
}

/* One JSON object on stdout, for scripts (tests read it with the YAML reader). */
moira_status_t run_report_json(const run_result_t *r) {
    const moira_exec_stats_t *s = r->stats;
    warn_off_predictions(r);
    moira_tree_writer_t w;
    moira_tree_begin(&w, stdout, true);
    moira_tree_map(&w, false);
    json_string(&w, "model", r->model->config.name);
    json_number(&w, "n_layers", (double)r->model->config.num_hidden_layers);
    json_number(&w, "tokens", (double)r->model->x.shape[0]);
    json_number(&w, "iters", (double)s->forwards);
    json_number(&w, "ranks", (double)s->ranks);
    json_number(&w, "data_parallel_ranks", (double)r->data_parallel_ranks);
    json_string(&w, "weight_dtype", weights_dtype_name(r));
    json_string(&w, "plan", r->placement->source);
    json_string(&w, "topology", r->placement->topology.name);
    json_string(&w, "home", moira_device_info(r->placement->home)->name);
    json_number(&w, "load_s", r->load_s);
    json_number(&w, "ms_per_batch", 1e3 * per_batch(s, s->wall_s));
    json_number(&w, "tokens_per_s", s->wall_s > 0 ? (double)s->tokens / s->wall_s : 0);
    json_number(&w, "home_bytes", per_batch(s, s->home_bytes));
    json_devices(&w, r);
    json_layers(&w, r);
    json_number(&w, "layer_nmse", r->layer_nmse);
    json_number(&w, "worst_layer", (double)r->worst_layer);
    json_number(&w, "near_ties", (double)r->near_ties);
    json_number(&w, "end_to_end_nmse", r->nmse);
    json_number(&w, "limit", r->limit);
    json_string(&w, "limit_device", r->limit_device);
    moira_tree_key(&w, "agreed");
    moira_tree_bool(&w, r->agreed);
    moira_tree_close(&w, true);
    if (!moira_tree_end(&w)) return moira_status_make(MOIRA_CODE_IO, "cannot write the summary");
    return MOIRA_OK_STATUS;
}
