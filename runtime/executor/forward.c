/* The forward pass: layer after layer, each dense layer whole on its home device, each MoE layer
 * split between its home device and the targets holding its experts (executor.h has the
 * picture). The residual stream lives on the host between layers, so consecutive layers may
 * have different home devices. */
#include <string.h>

#include "runtime/executor/executor_internal.h"

/* Keeps the first error, releasing later ones. */
static moira_status_t first_error(moira_status_t kept, moira_status_t next) {
    if (kept) {
        moira_status_free(next);
        return kept;
    }
    return next;
}

/* Sends the residual stream (and, once per forward, the positions) to the layer's home. */
static moira_status_t send_to_home(moira_executor_t *e, exec_home_t *home, int64_t t,
                                   const moira_tensor_t *positions) {
    size_t bytes = (size_t)(t * e->model->hidden_size) * sizeof(float);
    MOIRA_RETURN_IF_ERROR(moira_queue_write(home->queue, home->buffer, 0, e->act, bytes));
    e->stats.home_bytes += (double)bytes;
    if (home->positions_written == e->forwards) return MOIRA_OK_STATUS;
    home->positions_written = e->forwards;
    size_t position_bytes = (size_t)t * sizeof(int32_t);
    e->stats.home_bytes += (double)position_bytes;
    return moira_queue_write(home->queue, home->buffer, home->off_positions, positions->data,
                             position_bytes);
}

/* Points the step's sequences at their slots of this layer's cache. */
static void bind_caches(moira_executor_t *e, const exec_layer_t *layer,
                        const moira_exec_sequence_t *sequences) {
    for (int i = 0; sequences && i < e->n_batch; i++)
        moira_mla_cache_window(&layer->cache, sequences[i].slot * e->context, e->context,
                               &e->batch[i].cache_c, &e->batch[i].cache_pe);
}

/* Replays parts of the layer's program over the step's sequences. */
static moira_status_t replay(moira_executor_t *e, exec_layer_t *layer, unsigned parts, int64_t t) {
    return moira_layer_program_replay(layer->program, layer->home->queue, parts, t, e->batch,
                                      e->n_batch);
}

/* The residual stream back from the home, and the one wait of this stretch of the layer. */
static moira_status_t receive_from_home(moira_executor_t *e, exec_home_t *home, int64_t t,
                                        moira_status_t status) {
    size_t bytes = (size_t)(t * e->model->hidden_size) * sizeof(float);
    if (!status) status = moira_queue_read(home->queue, home->buffer, 0, e->act, bytes);
    e->stats.home_bytes += (double)bytes;
    return first_error(status, moira_queue_finish(home->queue));
}

/* A dense layer, whole on its home device. */
static moira_status_t run_dense_layer(moira_executor_t *e, exec_layer_t *layer, int64_t t,
                                      const moira_tensor_t *positions) {
    MOIRA_RETURN_IF_ERROR(send_to_home(e, layer->home, t, positions));
    return receive_from_home(e, layer->home, t, replay(e, layer, MOIRA_LAYER_ALL, t));
}

/* Home, first half: attention, post-attention norm and router, then the router's choices and the
 * normalised activations come back to the host for routing. */
static moira_status_t run_home_front(moira_executor_t *e, exec_layer_t *layer, int64_t t,
                                     const moira_tensor_t *positions) {
    exec_home_t *home = layer->home;
    MOIRA_RETURN_IF_ERROR(send_to_home(e, home, t, positions));
    moira_status_t status = replay(e, layer, MOIRA_LAYER_ATTENTION | MOIRA_LAYER_ROUTER, t);
    moira_dtensor_t normed, idx, weight;
    moira_layer_program_routing(layer->program, t, &normed, &idx, &weight);
    size_t act = (size_t)moira_dtensor_numel(&normed) * sizeof(float);
    size_t route = (size_t)moira_dtensor_numel(&idx) * 4;
    if (!status)
        status = moira_queue_read(home->queue, normed.buffer, normed.offset, e->normed, act);
    if (!status) status = moira_queue_read(home->queue, idx.buffer, idx.offset, e->idx, route);
    if (!status)
        status = moira_queue_read(home->queue, weight.buffer, weight.offset, e->weight, route);
    e->stats.home_bytes += (double)(act + 2 * route);
    return first_error(status, moira_queue_finish(home->queue));
}

/* Home, second half, while the targets run: x += shared(normed), back to the host. */
static moira_status_t run_home_back(moira_executor_t *e, exec_layer_t *layer, int64_t t) {
    return receive_from_home(e, layer->home, t, replay(e, layer, MOIRA_LAYER_SHARED, t));
}

/* Adds every target's partial sums into the residual stream on the host; rows other hosts sent
 * (numbered from `tokens` on) are summed into what goes back to them instead. */
static void combine_on_host(moira_executor_t *e, int64_t tokens) {
    int64_t d = e->model->hidden_size;
    if (e->exchange.foreign > 0)
        memset(e->exchange.back_send, 0, (size_t)(e->exchange.foreign * d) * sizeof(float));
    for (int i = 0; i < e->n_targets; i++) {
        const exec_target_t *target = &e->targets[i];
        for (int64_t row = 0; row < target->rows; row++) {
            int64_t token = target->token[row];
            float *dst =
                token < tokens ? e->act + token * d : e->exchange.back_send + (token - tokens) * d;
            const float *src = target->y + row * d;
            for (int64_t c = 0; c < d; c++)
                dst[c] += src[c];
        }
    }
}

/* Hands every target with rows to its worker. */
static void start_targets(moira_executor_t *e) {
    moira_exec_fill_rows(e);
    for (int i = 0; i < e->n_targets; i++)
        if (e->targets[i].rows > 0)
            moira_exec_worker_post(&e->targets[i].worker, moira_exec_stage, &e->targets[i]);
}

/* Waits for the targets, keeping the first error. */
static moira_status_t wait_targets(moira_executor_t *e, const exec_layer_t *layer,
                                   moira_status_t status) {
    for (int i = 0; i < e->n_targets; i++) {
        exec_target_t *target = &e->targets[i];
        if (target->rows == 0) continue;
        moira_exec_worker_wait(&target->worker);
        if (target->status)
            status = first_error(status,
                                 moira_status_annotate(target->status, "layer %lld on %s (%s)",
                                                       (long long)layer->index, target->info->name,
                                                       moira_device_info(target->device)->name));
        target->status = MOIRA_OK_STATUS;
    }
    return status;
}

/* An MoE layer across its home device and its targets, and with a cluster the other hosts':
 *   home front (attention, router) -> route -> rows for other hosts go out -> the shared experts
 *   run on the home while they travel -> rows from other hosts join this host's -> targets ->
 *   partial sums go back to the tokens' owners and come back for this rank's tokens.
 * Without rows from elsewhere the targets start before the shared experts, as in one process.
 * A rank with no tokens of its own (t = 0) only serves the rows it receives. A failure between
 * the two exchanges leaves the ranks unable to agree on what comes next, so it ends the job. */
static moira_status_t run_moe_layer(moira_executor_t *e, exec_layer_t *layer, int64_t t,
                                    const moira_tensor_t *positions, bool check,
                                    moira_exec_layer_stats_t *stats) {
    double start = moira_now_seconds();
    bool exchanging = e->exchange.cluster != NULL;
    moira_status_t front = t > 0 ? run_home_front(e, layer, t, positions) : MOIRA_OK_STATUS;
    if (front && exchanging)
        moira_cluster_abort(e->exchange.cluster, 1, "%s", moira_status_message(front));
    if (front) return front;
    moira_exec_route(e, layer, t);
    if (exchanging) moira_exec_dispatch(e, stats);
    bool started = !exchanging || e->exchange.foreign == 0;
    double handed = moira_now_seconds();
    if (started) start_targets(e);
    moira_status_t status = t > 0 ? run_home_back(e, layer, t) : MOIRA_OK_STATUS;
    double home_done = moira_now_seconds();
    if (exchanging) moira_exec_receive(e, layer, t, stats);
    if (!started) start_targets(e);
    status = wait_targets(e, layer, status);
    double done = moira_now_seconds();
    stats->home_s += home_done - start; /* routing on the host included */
    stats->experts_s += done - handed;
    if (status && exchanging)
        moira_cluster_abort(e->exchange.cluster, 1, "%s", moira_status_message(status));
    if (status) return status;
    combine_on_host(e, t);
    if (exchanging) moira_exec_give_back(e, stats);
    for (int i = 0; check && i < e->n_targets; i++)
        MOIRA_RETURN_IF_ERROR(moira_exec_check_target(e, layer, &e->targets[i]));
    moira_exec_measure_layer(e, layer, stats);
    return MOIRA_OK_STATUS;
}

/* Shapes of the batch against what the executor was built for. */
static moira_status_t check_batch(const moira_executor_t *e, const moira_tensor_t *x,
                                  const moira_tensor_t *positions, const moira_tensor_t *out) {
    int64_t d = e->model->hidden_size;
    bool ok = x->dtype == MOIRA_DTYPE_F32 && x->rank == 2 && x->shape[1] == d && x->shape[0] >= 1 &&
              x->shape[0] <= e->max_tokens && out->dtype == MOIRA_DTYPE_F32 &&
              moira_tensor_same_shape(x, out) && positions->dtype == MOIRA_DTYPE_I32 &&
              moira_tensor_numel(positions) == x->shape[0];
    if (ok) return MOIRA_OK_STATUS;
    return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                             "executor: x and out must be F32 [T, %lld] with 1 <= T <= %lld and "
                             "positions I32 [T]",
                             (long long)d, (long long)e->max_tokens);
}

/* The devices' own cost models (the npu's), read while every queue is idle. */
static void read_modelled_time(moira_executor_t *e) {
    for (int i = 0; i < e->n_targets; i++) {
        double us = 0;
        moira_exec_target_stats_t *s = &e->stats.targets[i];
        s->has_modelled = moira_queue_modelled_us(e->targets[i].queue, &us);
        if (s->has_modelled) s->modelled_us = us - e->targets[i].modelled_base_us;
    }
}

/* After a checked forward: each target's NMSE against the reference and its device's limit. */
static void record_check(moira_executor_t *e) {
    for (int i = 0; i < e->n_targets; i++) {
        const exec_target_t *target = &e->targets[i];
        moira_exec_target_stats_t *s = &e->stats.targets[i];
        s->checked = target->check_den > 0 || target->check_num > 0;
        s->check_nmse =
            target->check_den > 0 ? target->check_num / target->check_den : target->check_num;
        s->check_limit =
            moira_precision_nmse_limit(moira_device_info(target->device)->compute_precision);
    }
}

moira_status_t moira_exec_run_layers(moira_executor_t *e, int64_t t,
                                     const moira_tensor_t *positions,
                                     const moira_exec_sequence_t *sequences, bool check_devices,
                                     moira_tensor_t *layer_inputs) {
    int64_t d = e->model->hidden_size;
    e->forwards++;
    for (int i = 0; i < e->n_targets; i++)
        e->targets[i].check_num = e->targets[i].check_den = 0;
    double start = moira_now_seconds();
    moira_status_t status = MOIRA_OK_STATUS;
    for (int64_t l = 0; l < e->n_layers && !status; l++) {
        exec_layer_t *layer = &e->layers[l];
        moira_exec_layer_stats_t *stats = &e->stats.layers[l];
        bind_caches(e, layer, sequences);
        if (layer_inputs) memcpy(layer_inputs[l].data, e->act, (size_t)(t * d) * sizeof(float));
        double layer_start = moira_now_seconds();
        if (layer->is_moe) {
            status = run_moe_layer(e, layer, t, positions, check_devices, stats);
        } else if (t > 0) {
            status = run_dense_layer(e, layer, t, positions);
            stats->home_s += moira_now_seconds() - layer_start;
        }
        stats->wall_s += moira_now_seconds() - layer_start;
    }
    if (status) return status;
    e->stats.forwards++;
    e->stats.tokens += t;
    e->stats.wall_s += moira_now_seconds() - start;
    read_modelled_time(e);
    if (check_devices) record_check(e);
    return MOIRA_OK_STATUS;
}

moira_status_t moira_executor_forward(moira_executor_t *e, const moira_tensor_t *x,
                                      const moira_tensor_t *positions, moira_tensor_t *out,
                                      bool check_devices, moira_tensor_t *layer_inputs) {
    MOIRA_RETURN_IF_ERROR(check_batch(e, x, positions, out));
    for (int64_t l = 0; layer_inputs && l < e->n_layers; l++)
        if (!moira_tensor_same_shape(&layer_inputs[l], x) ||
            layer_inputs[l].dtype != MOIRA_DTYPE_F32)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "executor: layer input %lld must be shaped as x",
                                     (long long)l);
    int64_t t = x->shape[0];
    size_t bytes = (size_t)(t * e->model->hidden_size) * sizeof(float);
    memcpy(e->act, x->data, bytes);
    e->n_batch = 1;
    e->batch[0] = (moira_program_sequence_t){.first_row = 0, .rows = t};
    moira_exec_announce(e, check_devices);
    MOIRA_RETURN_IF_ERROR(moira_exec_settle(
        e, moira_exec_run_layers(e, t, positions, NULL, check_devices, layer_inputs)));
    memcpy(out->data, e->act, bytes);
    return MOIRA_OK_STATUS;
}

moira_status_t moira_executor_step(moira_executor_t *e, const moira_tensor_t *x,
                                   const moira_tensor_t *positions,
                                   const moira_exec_sequence_t *sequences, int n_sequences,
                                   moira_tensor_t *out) {
    MOIRA_RETURN_IF_ERROR(check_batch(e, x, positions, out));
    if (n_sequences < 1 || n_sequences > e->max_sequences)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "executor: %d sequences in a step (1 to %d cache slots)",
                                 n_sequences, e->max_sequences);
    for (int i = 0; i < n_sequences; i++) {
        const moira_exec_sequence_t *s = &sequences[i];
        if (s->slot < 0 || s->slot >= e->max_sequences || s->past < 0 ||
            s->past + s->rows > e->context)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "executor: sequence %d (slot %d, %lld + %lld tokens) does "
                                     "not fit %d slots of %lld",
                                     i, s->slot, (long long)s->past, (long long)s->rows,
                                     e->max_sequences, (long long)e->context);
        e->batch[i] =
            (moira_program_sequence_t){.first_row = s->first_row, .rows = s->rows, .past = s->past};
    }
    e->n_batch = n_sequences;
    int64_t t = x->shape[0];
    size_t bytes = (size_t)(t * e->model->hidden_size) * sizeof(float);
    memcpy(e->act, x->data, bytes);
    moira_exec_announce(e, false);
    MOIRA_RETURN_IF_ERROR(
        moira_exec_settle(e, moira_exec_run_layers(e, t, positions, sequences, false, NULL)));
    memcpy(out->data, e->act, bytes);
    return MOIRA_OK_STATUS;
}
