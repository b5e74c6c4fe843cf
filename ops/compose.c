/* The model-level ops composed from device ops on one queue (see ops/device_layer.h). */
#include "ops/device_layer.h"
#include "ops/layer_program.h"

moira_dtensor_t moira_dtensor_2d(moira_buffer_t *buffer, size_t offset, moira_dtype_t dtype,
                                 int64_t rows, int64_t cols) {
    moira_dtensor_t t = {.buffer = buffer, .offset = offset, .dtype = dtype, .rank = 2};
    t.shape[0] = rows;
    t.shape[1] = cols;
    return t;
}

/* Rows [row, row + rows) of a 2-D tensor. */
static moira_dtensor_t row_slice(const moira_dtensor_t *t, int64_t row, int64_t rows) {
    moira_dtensor_t s = *t;
    s.offset += (size_t)(row * moira_dtensor_row_stride(t)) * moira_dtype_size(t->dtype);
    s.shape[0] = rows;
    return s;
}

static const moira_dtensor_t no_operand;

/* Waits for the queue, then frees the workspace whatever happened, keeping the first error. */
static moira_status_t finish(moira_queue_t *queue, moira_buffer_t *workspace,
                             moira_status_t status) {
    moira_status_t done = moira_queue_finish(queue);
    if (!status) {
        status = done;
    } else {
        moira_status_free(done);
    }
    moira_buffer_free(workspace);
    return status;
}

moira_gate_params_t moira_gate_params_from_config(const moira_model_config_t *config) {
    moira_gate_params_t p = {
        .n_experts = (int32_t)config->n_routed_experts,
        .top_k = (int32_t)config->num_experts_per_tok,
        .n_group = config->n_group > 0 ? (int32_t)config->n_group : 1,
        .topk_group = config->topk_group > 0 ? (int32_t)config->topk_group : 1,
        .scoring = config->scoring_func == MOIRA_SCORING_FUNC_SIGMOID ? MOIRA_SCORING_SIGMOID
                                                                      : MOIRA_SCORING_SOFTMAX,
        .norm_topk_prob = config->norm_topk_prob,
        .routed_scaling_factor = (float)config->routed_scaling_factor,
        .capacity_factor = (float)config->capacity_factor,
    };
    return p;
}

moira_status_t moira_gate_run(moira_queue_t *queue, const moira_model_config_t *config,
                              const moira_device_layer_t *layer, const moira_dtensor_t *x,
                              const moira_dtensor_t *topk_idx, const moira_dtensor_t *topk_weight,
                              const moira_dtensor_t *selection) {
    if (!layer->gate.buffer)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "gate: the layer has no router");
    moira_gate_params_t p = moira_gate_params_from_config(config);
    moira_dtensor_t ops[] = {*x,        layer->gate,  layer->gate_bias,
                             *topk_idx, *topk_weight, selection ? *selection : no_operand};
    MOIRA_RETURN_IF_ERROR(moira_launch_op(queue, MOIRA_OP_GATE, &p, sizeof(p), 6, ops));
    return moira_queue_finish(queue);
}

/* A one-off program of `kind` over exactly these tensors: a workspace sized for their T, the
 * recipe recorded and replayed once, the queue finished, the workspace freed. The composed ops
 * below are this plus their operands; serving keeps its programs and replays them instead. */
static moira_status_t run_program(moira_queue_t *queue, const moira_model_config_t *config,
                                  moira_program_kind_t kind, int64_t layer_index,
                                  const moira_device_layer_t *layer, const moira_program_io_t *io,
                                  int64_t tokens, moira_mla_cache_t *cache) {
    moira_buffer_t *workspace = NULL;
    size_t bytes = moira_layer_program_workspace_bytes(config, kind, layer_index, tokens);
    MOIRA_RETURN_IF_ERROR(moira_buffer_alloc(layer->device, bytes, -1, &workspace));
    moira_layer_program_t *program = NULL;
    moira_status_t status = moira_layer_program_record(config, kind, layer_index, layer, io,
                                                       workspace, 0, tokens, &program);
    moira_program_sequence_t sequence = {.first_row = 0, .rows = tokens};
    if (cache) {
        sequence.past = cache->length;
        sequence.cache_c = cache->c;
        sequence.cache_pe = cache->k_pe;
    }
    if (!status)
        status = moira_layer_program_replay(program, queue, MOIRA_LAYER_ALL, tokens, &sequence, 1);
    moira_layer_program_free(program);
    status = finish(queue, workspace, status);
    if (!status && cache) cache->length += tokens;
    return status;
}

moira_status_t moira_moe_run(moira_queue_t *queue, const moira_model_config_t *config,
                             const moira_device_layer_t *layer, const moira_dtensor_t *x,
                             const moira_dtensor_t *y, float beta) {
    moira_program_io_t io = {.x = *x, .y = *y, .beta = beta};
    return run_program(queue, config, MOIRA_PROGRAM_MOE, -1, layer, &io, x->shape[0], NULL);
}

moira_status_t moira_mla_run(moira_queue_t *queue, const moira_model_config_t *config,
                             const moira_device_layer_t *layer, const moira_dtensor_t *x,
                             const moira_dtensor_t *positions, moira_mla_cache_t *cache,
                             const moira_dtensor_t *y, float beta) {
    moira_program_io_t io = {.x = *x, .y = *y, .positions = *positions, .beta = beta};
    return run_program(queue, config, MOIRA_PROGRAM_MLA, -1, layer, &io, x->shape[0], cache);
}

moira_status_t moira_layer_run(moira_queue_t *queue, const moira_model_config_t *config,
                               int64_t layer_index, const moira_device_layer_t *layer,
                               const moira_dtensor_t *x, const moira_dtensor_t *positions,
                               moira_mla_cache_t *cache, const moira_dtensor_t *out) {
    /* The program updates the residual stream in place: it starts as a copy of x in out. */
    size_t bytes = (size_t)(x->shape[0] * x->shape[1]) * sizeof(float);
    MOIRA_RETURN_IF_ERROR(
        moira_queue_copy(queue, x->buffer, x->offset, out->buffer, out->offset, bytes));
    moira_program_io_t io = {.x = *out, .positions = *positions};
    return run_program(queue, config, MOIRA_PROGRAM_DECODER_LAYER, layer_index, layer, &io,
                       x->shape[0], cache);
}

moira_status_t moira_decode_tokens(moira_queue_t *queue, const moira_model_config_t *config,
                                   int64_t layer_index, const moira_device_layer_t *layer,
                                   bool whole_layer, const moira_dtensor_t *x,
                                   const moira_dtensor_t *positions, moira_mla_cache_t *cache,
                                   const moira_dtensor_t *out) {
    for (int64_t i = 0; i < x->shape[0]; i++) {
        moira_dtensor_t xi = row_slice(x, i, 1), yi = row_slice(out, i, 1);
        moira_dtensor_t pi = *positions;
        pi.offset += (size_t)i * sizeof(int32_t);
        pi.shape[0] = 1;
        if (whole_layer)
            MOIRA_RETURN_IF_ERROR(
                moira_layer_run(queue, config, layer_index, layer, &xi, &pi, cache, &yi));
        else
            MOIRA_RETURN_IF_ERROR(moira_mla_run(queue, config, layer, &xi, &pi, cache, &yi, 0.0f));
    }
    return MOIRA_OK_STATUS;
}
