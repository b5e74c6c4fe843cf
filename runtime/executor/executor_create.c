/* Building an executor: home devices, targets and layers, with their weights uploaded; and
 * taking it apart. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/network_cost.h"
#include "runtime/executor/executor_internal.h"
#include "runtime/hash.h"

#define EXEC_ALIGN 256

/* Windows of one buffer start 256-byte aligned, enough for every backend's vector loads. */
static size_t round_up(size_t bytes) {
    return (bytes + EXEC_ALIGN - 1) / EXEC_ALIGN * EXEC_ALIGN;
}

/* The home of `device`, creating it (queue, activations and program workspace for max_tokens)
 * on first use. */
static moira_status_t home_for(moira_executor_t *e, moira_device_t *device, exec_home_t **out) {
    for (int i = 0; i < e->n_homes; i++)
        if (e->homes[i].device == device) {
            *out = &e->homes[i];
            return MOIRA_OK_STATUS;
        }
    exec_home_t *home = &e->homes[e->n_homes++];
    home->device = device;
    home->positions_written = -1;
    int64_t t = e->max_tokens, d = e->model->hidden_size;
    home->off_positions = round_up((size_t)(t * d) * 4);
    MOIRA_RETURN_IF_ERROR(moira_queue_create(device, &home->queue));
    MOIRA_RETURN_IF_ERROR(moira_buffer_alloc(device, home->off_positions + round_up((size_t)t * 4),
                                             -1, &home->buffer));
    MOIRA_RETURN_IF_ERROR(
        moira_buffer_alloc(device, moira_layer_programs_workspace_bytes(e->model, e->max_tokens),
                           -1, &home->workspace));
    *out = home;
    return MOIRA_OK_STATUS;
}

/* Every slot's latent cache of the layer, on its home device (none without slots). */
static moira_status_t open_cache(moira_executor_t *e, exec_layer_t *layer) {
    if (e->max_sequences <= 0) return MOIRA_OK_STATUS;
    return moira_mla_cache_create(layer->home->device, e->model, e->max_sequences * e->context,
                                  e->cache_dtype, &layer->cache);
}

/* Records the layer's program on its home, over the home's activations and workspace. */
static moira_status_t record_layer(moira_executor_t *e, exec_layer_t *layer) {
    exec_home_t *home = layer->home;
    int64_t t = e->max_tokens, d = e->model->hidden_size;
    moira_program_io_t io = {
        .x = moira_dtensor_2d(home->buffer, 0, MOIRA_DTYPE_F32, t, d),
        .positions = moira_dtensor_2d(home->buffer, home->off_positions, MOIRA_DTYPE_I32, t, 1),
    };
    io.positions.rank = 1;
    return moira_layer_program_record(e->model, MOIRA_PROGRAM_DECODER_LAYER, layer->index,
                                      &layer->weights, &io, home->workspace, 0, t, &layer->program);
}

/* The most replicas one target holds in any layer: its workspace's expert count. */
static int64_t max_local_experts(const moira_plan_t *plan, int target) {
    int64_t most = 0;
    for (int l = 0; l < plan->n_layers; l++) {
        int64_t n = 0;
        for (int r = 0; r < plan->layers[l].n_replicas; r++)
            n += plan->layers[l].replica_target[r] == target;
        if (n > most) most = n;
    }
    return most;
}

/* A target's queue, device workspace, host staging and worker, sized for max_tokens rows. */
static moira_status_t open_target(moira_executor_t *e, int target_index, moira_device_t *device,
                                  exec_target_t *target) {
    const moira_target_t *info = &e->topology->targets[target_index];
    int64_t t = e->rows_capacity, d = e->model->hidden_size, k = e->model->num_experts_per_tok;
    target->target = target_index;
    target->info = info;
    target->device = device;
    target->numa_node = info->kind == MOIRA_TARGET_NUMA ? info->numa : -1; /* host memory */
    target->top_k = k;
    target->hidden = d;
    size_t act = round_up((size_t)(t * d) * 4), route = round_up((size_t)(t * k) * 4);
    target->off_idx = act;
    target->off_weight = act + route;
    target->off_y = act + 2 * route;
    target->off_moe = 2 * act + 2 * route;
    int64_t experts = max_local_experts(e->plan, target_index);
    size_t bytes = target->off_moe + moira_moe_workspace_bytes(t, k, experts, d);
    target->x = malloc((size_t)(t * d) * sizeof(float));
    target->y = malloc((size_t)(t * d) * sizeof(float));
    target->idx = malloc((size_t)(t * k) * sizeof(int32_t));
    target->weight = malloc((size_t)(t * k) * sizeof(float));
    target->token = malloc((size_t)t * sizeof(int32_t));
    if (!target->x || !target->y || !target->idx || !target->weight || !target->token)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "executor: out of memory");
    MOIRA_RETURN_IF_ERROR(moira_queue_create(device, &target->queue));
    MOIRA_RETURN_IF_ERROR(moira_buffer_alloc(device, bytes, target->numa_node, &target->workspace));
    return moira_exec_worker_start(&target->worker);
}

/* Replica bookkeeping of one MoE layer: each replica's target and local number, each expert's
 * replicas, and the per-forward load arrays. */
static moira_status_t index_replicas(moira_executor_t *e, exec_layer_t *layer,
                                     const int *exec_of_target) {
    const moira_plan_layer_t *plan = layer->plan;
    int64_t experts = e->model->n_routed_experts;
    size_t n = (size_t)plan->n_replicas;
    layer->replica_exec = calloc(n, sizeof(int32_t));
    layer->replica_slot = calloc(n, sizeof(int32_t));
    layer->expert_first = calloc((size_t)experts + 1, sizeof(int32_t));
    layer->expert_replicas = calloc(n, sizeof(int32_t));
    layer->replica_rows = calloc(n, sizeof(double));
    layer->sent_rows = calloc(n, sizeof(double));
    layer->received_rows = calloc(n, sizeof(double));
    layer->routed_load = calloc(n, sizeof(double));
    layer->expert_load = calloc((size_t)experts, sizeof(double));
    int *slots = calloc((size_t)e->n_targets + 1, sizeof(int));
    if (!layer->replica_exec || !layer->replica_slot || !layer->expert_first ||
        !layer->expert_replicas || !layer->replica_rows || !layer->sent_rows ||
        !layer->received_rows || !layer->routed_load || !layer->expert_load || !slots) {
        free(slots);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "executor: out of memory");
    }
    for (size_t r = 0; r < n; r++) {
        int exec = exec_of_target[plan->replica_target[r]]; /* -1: another host's */
        layer->replica_exec[r] = exec;
        layer->replica_slot[r] = exec >= 0 ? slots[exec]++ : -1;
        layer->expert_first[plan->replica_expert[r] + 1]++;
    }
    free(slots);
    for (int64_t x = 0; x < experts; x++)
        layer->expert_first[x + 1] += layer->expert_first[x];
    int32_t *fill = calloc((size_t)experts + 1, sizeof(int32_t));
    if (!fill) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "executor: out of memory");
    for (size_t r = 0; r < n; r++) {
        int32_t x = plan->replica_expert[r];
        layer->expert_replicas[layer->expert_first[x] + fill[x]++] = (int32_t)r;
    }
    free(fill);
    return MOIRA_OK_STATUS;
}

/* Each target's share of the layer's experts, in plan order, to its device. */
static moira_status_t upload_experts(moira_executor_t *e, exec_layer_t *layer,
                                     double *bytes_uploaded) {
    const moira_plan_layer_t *plan = layer->plan;
    layer->experts = calloc((size_t)e->n_targets, sizeof(moira_device_experts_t));
    int32_t *picked = calloc((size_t)plan->n_replicas + 1, sizeof(int32_t));
    moira_status_t status = layer->experts && picked ? MOIRA_OK_STATUS
                                                     : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY,
                                                                         "executor: out of memory");
    for (int i = 0; !status && i < e->n_targets; i++) {
        exec_target_t *target = &e->targets[i];
        int64_t n = 0;
        for (int r = 0; r < plan->n_replicas; r++)
            if (layer->replica_exec[r] == i) picked[n++] = plan->replica_expert[r];
        if (n == 0) continue;
        status = moira_device_experts_upload(
            target->device, target->queue, &e->weights[layer->index].moe, picked, n,
            target->numa_node, MOIRA_WEIGHT_DTYPE_AS_STORED, &layer->experts[i]);
        if (!status) *bytes_uploaded += (double)layer->experts[i].buffer->size;
    }
    free(picked);
    return status;
}

/* One layer: its home part to its home device, its routed experts to their targets. */
static moira_status_t open_layer(moira_executor_t *e, const moira_exec_config_t *config,
                                 int64_t index, const int *exec_of_target, double *bytes_uploaded) {
    exec_layer_t *layer = &e->layers[index];
    layer->index = index;
    layer->is_moe = moira_model_config_is_moe_layer(e->model, index);
    MOIRA_RETURN_IF_ERROR(home_for(e, config->home_devices[index], &layer->home));
    moira_layer_weights_t home_part = e->weights[index];
    if (layer->is_moe) {
        for (int l = 0; l < e->plan->n_layers; l++)
            if (e->plan->layers[l].layer == index) layer->plan = &e->plan->layers[l];
        if (!layer->plan)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "the plan has no layer %lld",
                                     (long long)index);
        /* The home device gets the router and shared experts, not the routed experts. */
        home_part.moe.expert_gate_proj = NULL;
        home_part.moe.expert_up_proj = NULL;
        home_part.moe.expert_down_proj = NULL;
        home_part.moe.owns_arrays = false;
    }
    MOIRA_RETURN_IF_ERROR(moira_device_layer_upload(layer->home->device, layer->home->queue,
                                                    e->model, &home_part,
                                                    MOIRA_WEIGHT_DTYPE_AS_STORED, &layer->weights));
    *bytes_uploaded += (double)layer->weights.buffer->size;
    MOIRA_RETURN_IF_ERROR(open_cache(e, layer));
    MOIRA_RETURN_IF_ERROR(record_layer(e, layer));
    if (!layer->is_moe) return MOIRA_OK_STATUS;
    MOIRA_RETURN_IF_ERROR(index_replicas(e, layer, exec_of_target));
    return upload_experts(e, layer, bytes_uploaded);
}

/* Host staging, scratch and stats arrays, all sized once. */
static moira_status_t allocate(moira_executor_t *e, const moira_exec_config_t *config) {
    const moira_model_config_t *m = config->model;
    int64_t t = config->max_tokens, d = m->hidden_size, k = m->num_experts_per_tok;
    int n_topology = config->topology->n_targets;
    e->n_layers = m->num_hidden_layers;
    for (int i = 0; i < n_topology; i++)
        e->n_targets += config->binding->devices[i] != NULL;
    e->targets = calloc((size_t)e->n_targets + 1, sizeof(exec_target_t));
    e->homes = calloc((size_t)e->n_layers + 1, sizeof(exec_home_t));
    e->layers = calloc((size_t)e->n_layers + 1, sizeof(exec_layer_t));
    e->act = malloc((size_t)(t * d) * sizeof(float));
    e->normed = malloc((size_t)(e->rows_capacity * d) * sizeof(float));
    e->idx = malloc((size_t)(t * k) * sizeof(int32_t));
    e->weight = malloc((size_t)(t * k) * sizeof(float));
    e->cost_scratch =
        calloc(moira_cost_scratch_doubles(&e->cost, config->topology), sizeof(double));
    e->network_scratch =
        calloc(moira_network_scratch_doubles(&e->cost, config->topology), sizeof(double));
    e->target_rows = calloc((size_t)n_topology + 1, sizeof(double));
    e->target_active = calloc((size_t)n_topology + 1, sizeof(int));
    /* Room for every topology target: rank 0 adds the other ranks' after a cluster run. */
    e->stats.targets = calloc((size_t)n_topology + 1, sizeof(moira_exec_target_stats_t));
    e->stats.layers = calloc((size_t)e->n_layers + 1, sizeof(moira_exec_layer_stats_t));
    e->batch = calloc((size_t)(e->max_sequences > 0 ? e->max_sequences : 1), sizeof(*e->batch));
    if (!e->batch || !e->targets || !e->homes || !e->layers || !e->act || !e->normed || !e->idx ||
        !e->weight || !e->cost_scratch || !e->network_scratch || !e->target_rows ||
        !e->target_active || !e->stats.targets || !e->stats.layers)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "executor: out of memory");
    e->stats.n_targets = e->n_targets;
    e->stats.n_layers = (int)e->n_layers;
    e->stats.ranks = e->exchange.cluster ? moira_cluster_size(e->exchange.cluster) : 1;
    return moira_exec_exchange_open(e);
}

/* Targets (in topology order), then layers one by one, reporting progress. */
static moira_status_t open_all(moira_executor_t *e, const moira_exec_config_t *config) {
    MOIRA_RETURN_IF_ERROR(allocate(e, config));
    int n_topology = config->topology->n_targets;
    int *exec_of_target = calloc((size_t)n_topology + 1, sizeof(int));
    if (!exec_of_target) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    moira_status_t status = MOIRA_OK_STATUS;
    int next = 0;
    for (int t = 0; t < n_topology && !status; t++) {
        exec_of_target[t] = -1;
        if (!config->binding->devices[t]) continue;
        exec_of_target[t] = next;
        status = open_target(e, t, config->binding->devices[t], &e->targets[next]);
        e->stats.targets[next].target = t;
        e->stats.targets[next].device = config->binding->devices[t];
        const moira_device_info_t *info = moira_device_info(config->binding->devices[t]);
        snprintf(e->stats.targets[next].device_name, sizeof(e->stats.targets[next].device_name),
                 "%s", info->name);
        e->stats.targets[next].nmse_limit = moira_precision_nmse_limit(info->compute_precision);
        e->stats.targets[next].replicas = config->binding->replicas[t];
        next++;
    }
    double uploaded = 0;
    for (int64_t l = 0; l < e->n_layers && !status; l++) {
        status = open_layer(e, config, l, exec_of_target, &uploaded);
        e->stats.layers[l].layer = l;
        e->stats.layers[l].is_moe = e->layers[l].is_moe;
        e->stats.layers[l].home = config->home_devices[l];
        if (!status && config->progress)
            config->progress(config->progress_context, l + 1, e->n_layers, uploaded);
    }
    free(exec_of_target);
    if (!status) moira_executor_reset_stats(e);
    return status;
}

/* A tensor's dtype, shape and first 64 KiB: enough to tell two checkpoints or two seeds apart
 * without reading every byte of a large model. NULL adds nothing. */
static uint64_t digest_tensor(uint64_t h, const moira_tensor_t *t) {
    if (!t) return h;
    h = moira_fnv1a64(h, &t->dtype, sizeof(t->dtype));
    h = moira_fnv1a64(h, t->shape, (size_t)t->rank * sizeof(t->shape[0]));
    size_t bytes = moira_tensor_nbytes(t);
    return moira_fnv1a64(h, t->data, bytes < 65536 ? bytes : 65536);
}

/* What every rank must agree on: the model's shape, the largest batch, the topology's targets and
 * hosts, every replica of the plan, and the weights (each layer's norm, router and first routed
 * expert, sampled). */
static uint64_t run_fingerprint(const moira_executor_t *e) {
    const moira_model_config_t *m = e->model;
    int64_t shape[] = {m->hidden_size,         m->num_hidden_layers,     m->n_routed_experts,
                       m->num_experts_per_tok, m->moe_intermediate_size, e->max_tokens,
                       e->topology->n_targets, e->topology->n_hosts,     e->plan->n_layers};
    uint64_t h = moira_fnv1a64(MOIRA_FNV1A64_BASIS, shape, sizeof(shape));
    for (int t = 0; t < e->topology->n_targets; t++) {
        const moira_target_t *target = &e->topology->targets[t];
        h = moira_fnv1a64(h, target->name, strlen(target->name));
        h = moira_fnv1a64(h, &target->host, sizeof(target->host));
    }
    for (int l = 0; l < e->plan->n_layers; l++) {
        const moira_plan_layer_t *layer = &e->plan->layers[l];
        h = moira_fnv1a64(h, &layer->layer, sizeof(layer->layer));
        h = moira_fnv1a64(h, layer->replica_target, (size_t)layer->n_replicas * sizeof(int));
        h = moira_fnv1a64(h, layer->replica_expert, (size_t)layer->n_replicas * sizeof(int32_t));
    }
    for (int64_t l = 0; l < e->n_layers; l++) {
        const moira_layer_weights_t *w = &e->weights[l];
        h = digest_tensor(h, w->input_layernorm);
        h = digest_tensor(h, w->moe.gate);
        h = digest_tensor(h, w->mlp.gate_proj);
        if (w->moe.expert_gate_proj && w->moe.n_experts > 0)
            h = digest_tensor(h, w->moe.expert_gate_proj[0]);
    }
    return h;
}

/* A rank given another plan, topology or batch size would send rows the others misread; every
 * rank finds out here and exits 2 (INVALID_ARGUMENT), naming the first rank that differs. */
static moira_status_t check_same_run(moira_executor_t *e) {
    int other = moira_cluster_first_different(e->exchange.cluster, run_fingerprint(e),
                                              "comparing the ranks' plans");
    if (other < 0) return MOIRA_OK_STATUS;
    return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                             "rank %d (host %s) runs another plan, topology, model, weights or "
                             "batch size than rank 0 (host %s): give every rank the same model, "
                             "--topology, --plan and options",
                             other, e->topology->hosts[other].name, e->topology->hosts[0].name);
}

/* Everything is built up front so a forward allocates nothing; a failure part way tears down what
 * was built. */
moira_status_t moira_executor_create(const moira_exec_config_t *config, moira_executor_t **out) {
    *out = NULL;
    if (config->max_tokens < 1 || config->max_tokens > INT32_MAX)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "executor: max_tokens %lld",
                                 (long long)config->max_tokens);
    moira_executor_t *e = calloc(1, sizeof(*e));
    if (!e) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "executor: out of memory");
    e->model = config->model;
    e->weights = config->weights;
    e->topology = config->topology;
    e->plan = config->plan;
    e->max_tokens = config->max_tokens;
    e->exchange.cluster = config->binding->host >= 0 ? moira_cluster_current() : NULL;
    e->exchange.host = config->binding->host;
    e->exchange.capacity = config->max_tokens;
    e->rows_capacity =
        config->max_tokens * (e->exchange.cluster ? moira_cluster_size(e->exchange.cluster) : 1);
    e->max_sequences = config->max_sequences;
    e->data_parallel = config->data_parallel;
    e->context = config->context;
    e->cache_dtype = config->cache_dtype;
    moira_cost_model_init(config->model, &e->cost);
    /* Nothing to release to the other ranks until the executor is whole: a rank whose executor
     * fails to build exits, and mpirun ends the others (runtime/cluster/cluster.h). */
    e->released = true;
    moira_status_t status = open_all(e, config);
    /* Every rank's weights are in place before the first exchange (ranks load at their own pace;
     * a rank still loading is alive and keeps its peers waiting). Then the ranks check they run
     * the same thing: rows name replicas by their number in the plan. */
    if (!status && e->exchange.cluster) {
        moira_cluster_barrier(e->exchange.cluster, moira_cluster_timeout(e->exchange.cluster),
                              "loading the weights on every rank");
        status = check_same_run(e);
    }
    e->released = status != MOIRA_OK_STATUS;
    if (status) {
        moira_executor_destroy(e);
        return status;
    }
    *out = e;
    return MOIRA_OK_STATUS;
}

/* A layer's device memory and bookkeeping; its queues are idle by now. */
static void close_layer(exec_layer_t *layer, int n_targets) {
    moira_layer_program_free(layer->program);
    moira_mla_cache_release(&layer->cache);
    moira_device_layer_release(&layer->weights);
    for (int i = 0; layer->experts && i < n_targets; i++)
        moira_device_experts_release(&layer->experts[i]);
    free(layer->experts);
    free(layer->replica_exec);
    free(layer->replica_slot);
    free(layer->expert_first);
    free(layer->expert_replicas);
    free(layer->replica_rows);
    free(layer->sent_rows);
    free(layer->received_rows);
    free(layer->routed_load);
    free(layer->expert_load);
}

/* Stops the worker, then destroys its queue (which waits for work still queued), so no stage
 * and no queued kernel can touch the target's or the layers' memory once it goes. */
static void stop_target(exec_target_t *target) {
    moira_exec_worker_stop(&target->worker);
    moira_queue_destroy(target->queue);
    target->queue = NULL;
}

/* Frees what a target held, stopping it first (a no-op when already stopped). */
static void close_target(exec_target_t *target) {
    stop_target(target);
    moira_buffer_free(target->workspace);
    moira_status_free(target->status);
    free(target->x);
    free(target->y);
    free(target->idx);
    free(target->weight);
    free(target->token);
}

/* Accepts a half-built executor (creation failed part way). */
void moira_executor_destroy(moira_executor_t *e) {
    if (!e) return;
    moira_executor_release(e); /* the other ranks wait for it */
    /* Workers and queues stop before any memory goes: after a failure part way, queued kernels
     * may still read the layers' weights and write the homes' buffers. */
    for (int i = 0; e->targets && i < e->n_targets; i++)
        stop_target(&e->targets[i]);
    for (int i = 0; i < e->n_homes; i++) {
        moira_queue_destroy(e->homes[i].queue);
        e->homes[i].queue = NULL;
    }
    for (int64_t l = 0; e->layers && l < e->n_layers; l++)
        close_layer(&e->layers[l], e->n_targets);
    for (int i = 0; e->targets && i < e->n_targets; i++)
        close_target(&e->targets[i]);
    for (int i = 0; i < e->n_homes; i++) {
        moira_queue_destroy(e->homes[i].queue);
        moira_buffer_free(e->homes[i].buffer);
        moira_buffer_free(e->homes[i].workspace);
    }
    free(e->layers);
    free(e->targets);
    free(e->homes);
    free(e->act);
    free(e->normed);
    free(e->idx);
    free(e->weight);
    free(e->cost_scratch);
    free(e->network_scratch);
    moira_exec_exchange_close(e);
    free(e->target_rows);
    free(e->target_active);
    free(e->stats.targets);
    free(e->stats.layers);
    free(e->batch);
    free(e);
}
