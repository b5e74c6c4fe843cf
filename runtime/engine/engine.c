/* The generation engine on one device (runtime/engine/engine.h). */
#include "runtime/engine/engine.h"

#include <stdlib.h>
#include <string.h>

#include "ops/layer_program.h"
#include "ops/upload_staging.h"

#define ALIGN 256
#define DEFAULT_MAX_ROWS 256
#define DEFAULT_MAX_SEQUENCES 8
#define DEFAULT_CONTEXT_LIMIT 4096

/* One decoder layer on the device: weights, program, and every sequence's latent cache. */
typedef struct engine_layer {
    moira_device_layer_t weights;   /* owned */
    moira_layer_program_t *program; /* owned */
    moira_mla_cache_t cache;        /* owned: sequence s holds rows s*context .. (s+1)*context-1 */
} engine_layer_t;

struct moira_engine {
    const moira_model_files_t *model; /* borrowed */
    const moira_model_config_t *config;
    moira_engine_options_t options;
    moira_device_t *device; /* borrowed */
    moira_queue_t *queue;   /* owned */
    engine_layer_t *layers; /* owned [num_hidden_layers] */
    int64_t n_layers;
    moira_buffer_t *head; /* owned: lm_head, final norm */
    moira_dtensor_t lm_head, norm;
    moira_buffer_t *activations; /* owned: x, positions, final_normed, logits */
    moira_dtensor_t x, positions, final_normed, logits;
    moira_buffer_t *workspace;         /* owned: shared by every layer's program */
    moira_executor_t *executor;        /* owned, with a placement: runs the layers instead */
    moira_exec_sequence_t *exec_batch; /* owned [max_sequences] */
    /* Host side, all sized at creation. */
    float *host_x;                   /* [max_rows, D] */
    int32_t *host_positions;         /* [max_rows] */
    float *host_logits;              /* [max_sequences, vocab] */
    int64_t *lengths;                /* [max_sequences] */
    moira_program_sequence_t *batch; /* [max_sequences] */
    /* With record_expert_load: each MoE layer's routing of the step, and the running counts. */
    int32_t *host_topk;  /* [n_layers, max_rows * k] */
    double *expert_load; /* [n_layers, n_routed_experts] */
};

static size_t round_up(size_t bytes) {
    return (bytes + ALIGN - 1) / ALIGN * ALIGN;
}

/* Rows first .. first+rows-1 of a contiguous 2-D activation tensor. */
static moira_dtensor_t rows_of(const moira_dtensor_t *t, int64_t first, int64_t rows) {
    moira_dtensor_t out = *t;
    out.offset += (size_t)(first * t->shape[1]) * moira_dtype_size(t->dtype);
    out.shape[0] = rows;
    return out;
}

int64_t moira_engine_context(const moira_model_config_t *config, int64_t requested) {
    if (requested > 0) return requested;
    int64_t context = config->max_position_embeddings;
    return context > DEFAULT_CONTEXT_LIMIT ? DEFAULT_CONTEXT_LIMIT : context;
}

static void fill_defaults(const moira_model_config_t *config, moira_engine_options_t *o) {
    if (o->max_rows <= 0) o->max_rows = DEFAULT_MAX_ROWS;
    if (o->max_sequences <= 0) o->max_sequences = DEFAULT_MAX_SEQUENCES;
    o->context = moira_engine_context(config, o->context);
}

static size_t workspace_bytes(const moira_engine_t *e) {
    return moira_layer_programs_workspace_bytes(e->config, e->options.max_rows);
}

/* One layer's cache: every sequence's slot of `context` positions. */
static size_t cache_bytes(const moira_engine_t *e) {
    return moira_mla_cache_bytes(e->config, e->options.max_sequences * e->options.context,
                                 e->options.cache_dtype);
}

/* An f32 or bf16 cache, on devices that keep one: asked before anything is uploaded. */
static moira_status_t check_cache_dtype(const moira_engine_t *e) {
    moira_dtype_t dtype = e->options.cache_dtype;
    if (dtype != MOIRA_DTYPE_F32 && dtype != MOIRA_DTYPE_BF16)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "engine: latent cache dtype %s (F32 or BF16)",
                                 moira_dtype_name(dtype));
    const moira_engine_placement_t *p = e->options.placement;
    for (int64_t l = 0; l < (p ? e->n_layers : 1); l++) {
        moira_device_t *device = p ? p->homes[l] : e->device;
        if (!moira_device_supports(device, MOIRA_OP_MLA_DECODE_ATTENTION, dtype))
            return moira_status_make(MOIRA_CODE_UNSUPPORTED, "%s keeps no %s latent cache",
                                     moira_device_info(device)->name, moira_dtype_name(dtype));
    }
    return MOIRA_OK_STATUS;
}

static size_t activation_bytes(const moira_engine_t *e, size_t *off_positions, size_t *off_normed,
                               size_t *off_logits) {
    int64_t d = e->config->hidden_size, rows = e->options.max_rows;
    int64_t seqs = e->options.max_sequences;
    *off_positions = round_up((size_t)(rows * d) * 4);
    *off_normed = *off_positions + round_up((size_t)rows * 4);
    *off_logits = *off_normed + round_up((size_t)(seqs * d) * 4);
    return *off_logits + round_up((size_t)(seqs * e->model->vocab) * 4);
}

/* Everything the device will hold, against what it has: refused before a byte is uploaded. With
 * a placement it holds only the head; the executor's binding has checked the rest. */
static moira_status_t check_memory(const moira_engine_t *e) {
    size_t a, b, c;
    bool placed = e->options.placement != NULL;
    double weights = placed ? (double)moira_tensor_nbytes(e->model->lm_head)
                            : moira_model_files_device_bytes(e->model);
    double caches = placed ? 0 : (double)cache_bytes(e) * (double)e->n_layers;
    double other =
        (placed ? 0 : (double)workspace_bytes(e)) + (double)activation_bytes(e, &a, &b, &c);
    double need = weights + caches + other;
    const moira_device_info_t *info = moira_device_info(e->device);
    if (!info->memory_bytes || need <= (double)info->memory_bytes) return MOIRA_OK_STATUS;
    double gib = 1024.0 * 1024.0 * 1024.0;
    return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                             "%s: the model needs %.2f GiB on %s (weights %.2f, latent caches "
                             "%.2f for %d sequences of %lld tokens, workspace %.2f) but it has "
                             "%.2f GiB; use fewer sequences or a shorter context, or a plan over "
                             "more devices",
                             e->model->dir, need / gib, info->name, weights / gib, caches / gib,
                             e->options.max_sequences, (long long)e->options.context, other / gib,
                             (double)info->memory_bytes / gib);
}

typedef struct head_upload {
    const moira_model_files_t *model;
    moira_engine_t *engine;
} head_upload_t;

/* lm_head as stored (fp8 keeps its scales) and the final norm as f32. */
static moira_status_t place_head(moira_staging_t *s, void *context) {
    head_upload_t *u = context;
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(s, u->model->lm_head, &u->engine->lm_head));
    return moira_staging_place_vector(s, u->model->norm, &u->engine->norm);
}

/* Weights, latent caches and the recorded program of every layer. */
static moira_status_t open_layers(moira_engine_t *e) {
    int64_t rows = e->options.max_sequences * e->options.context;
    double uploaded = 0;
    for (int64_t l = 0; l < e->n_layers; l++) {
        engine_layer_t *layer = &e->layers[l];
        MOIRA_RETURN_IF_ERROR(
            moira_device_layer_upload(e->device, e->queue, e->config, &e->model->layers[l],
                                      MOIRA_WEIGHT_DTYPE_AS_STORED, &layer->weights));
        uploaded += (double)layer->weights.buffer->size;
        MOIRA_RETURN_IF_ERROR(moira_mla_cache_create(e->device, e->config, rows,
                                                     e->options.cache_dtype, &layer->cache));
        moira_program_io_t io = {.x = e->x, .positions = e->positions};
        MOIRA_RETURN_IF_ERROR(moira_layer_program_record(e->config, MOIRA_PROGRAM_DECODER_LAYER, l,
                                                         &layer->weights, &io, e->workspace, 0,
                                                         e->options.max_rows, &layer->program));
        if (e->options.progress)
            e->options.progress(e->options.progress_context, l + 1, e->n_layers, uploaded);
    }
    return MOIRA_OK_STATUS;
}

/* The layers where the placement puts them, with every sequence's caches on their homes. */
static moira_status_t open_executor(moira_engine_t *e) {
    const moira_engine_placement_t *p = e->options.placement;
    e->exec_batch = calloc((size_t)e->options.max_sequences, sizeof(*e->exec_batch));
    if (!e->exec_batch) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    moira_exec_config_t config = {.model = e->config,
                                  .weights = e->model->layers,
                                  .topology = p->topology,
                                  .plan = p->plan,
                                  .binding = p->binding,
                                  .home_devices = p->homes,
                                  .max_tokens = e->options.max_rows,
                                  .progress = e->options.progress,
                                  .progress_context = e->options.progress_context,
                                  .max_sequences = e->options.max_sequences,
                                  .context = e->options.context,
                                  .cache_dtype = e->options.cache_dtype};
    return moira_executor_create(&config, &e->executor);
}

/* Host buffers of a step, device activations and workspace, then the weights. */
static moira_status_t open_engine(moira_engine_t *e) {
    int64_t d = e->config->hidden_size, rows = e->options.max_rows;
    int seqs = e->options.max_sequences;
    e->host_x = malloc((size_t)(rows * d) * sizeof(float));
    e->host_positions = malloc((size_t)rows * sizeof(int32_t));
    e->host_logits = malloc((size_t)(seqs * e->model->vocab) * sizeof(float));
    e->lengths = calloc((size_t)seqs, sizeof(int64_t));
    e->batch = calloc((size_t)seqs, sizeof(*e->batch));
    e->layers = calloc((size_t)e->n_layers, sizeof(*e->layers));
    if (!e->host_x || !e->host_positions || !e->host_logits || !e->lengths || !e->batch ||
        !e->layers)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "engine: out of host memory");
    if (e->options.record_expert_load) {
        /* With a placement the executor routes on the host and counts; on one device the
         * routing is read back from the device. */
        int64_t k = e->config->num_experts_per_tok, experts = e->config->n_routed_experts;
        e->expert_load = calloc((size_t)(e->n_layers * experts), sizeof(double));
        if (!e->options.placement)
            e->host_topk = malloc((size_t)(e->n_layers * rows * k) * sizeof(int32_t));
        if (!e->expert_load || (!e->options.placement && !e->host_topk))
            return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "engine: out of host memory");
    }
    MOIRA_RETURN_IF_ERROR(check_cache_dtype(e));
    MOIRA_RETURN_IF_ERROR(check_memory(e));
    MOIRA_RETURN_IF_ERROR(moira_queue_create(e->device, &e->queue));
    size_t off_positions, off_normed, off_logits;
    size_t bytes = activation_bytes(e, &off_positions, &off_normed, &off_logits);
    MOIRA_RETURN_IF_ERROR(moira_buffer_alloc(e->device, bytes, -1, &e->activations));
    e->x = moira_dtensor_2d(e->activations, 0, MOIRA_DTYPE_F32, rows, d);
    e->positions = moira_dtensor_2d(e->activations, off_positions, MOIRA_DTYPE_I32, rows, 1);
    e->positions.rank = 1;
    e->final_normed = moira_dtensor_2d(e->activations, off_normed, MOIRA_DTYPE_F32, seqs, d);
    e->logits =
        moira_dtensor_2d(e->activations, off_logits, MOIRA_DTYPE_F32, seqs, e->model->vocab);
    if (!e->options.placement)
        MOIRA_RETURN_IF_ERROR(moira_buffer_alloc(e->device, workspace_bytes(e), -1, &e->workspace));
    head_upload_t head = {e->model, e};
    MOIRA_RETURN_IF_ERROR(moira_staging_upload(
        e->device, e->queue, -1, MOIRA_WEIGHT_DTYPE_AS_STORED, place_head, &head, &e->head));
    e->lm_head.buffer = e->norm.buffer = e->head;
    moira_dtensor_t lm_head = e->lm_head;
    MOIRA_RETURN_IF_ERROR(moira_device_prepare_weights(e->device, MOIRA_OP_LINEAR, &lm_head, 1));
    return e->options.placement ? open_executor(e) : open_layers(e);
}

moira_status_t moira_engine_create(const moira_model_files_t *model, moira_device_t *device,
                                   const moira_engine_options_t *options, moira_engine_t **out) {
    *out = NULL;
    moira_engine_t *e = calloc(1, sizeof(*e));
    if (!e) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "engine: out of memory");
    e->model = model;
    e->config = &model->config;
    e->device = device;
    e->n_layers = model->config.num_hidden_layers;
    if (options) e->options = *options;
    fill_defaults(e->config, &e->options);
    moira_status_t status = open_engine(e);
    if (status) {
        moira_engine_destroy(e);
        return status;
    }
    *out = e;
    return MOIRA_OK_STATUS;
}

void moira_engine_destroy(moira_engine_t *e) {
    if (!e) return;
    moira_queue_destroy(e->queue); /* waits for anything still queued */
    moira_executor_destroy(e->executor);
    free(e->exec_batch);
    for (int64_t l = 0; e->layers && l < e->n_layers; l++) {
        moira_layer_program_free(e->layers[l].program);
        moira_device_layer_release(&e->layers[l].weights);
        moira_mla_cache_release(&e->layers[l].cache);
    }
    moira_buffer_free(e->head);
    moira_buffer_free(e->activations);
    moira_buffer_free(e->workspace);
    free(e->layers);
    free(e->host_x);
    free(e->host_positions);
    free(e->host_logits);
    free(e->lengths);
    free(e->batch);
    free(e->host_topk);
    free(e->expert_load);
    free(e);
}

/* Each input names a sequence once, its ids are tokens, and everything fits. */
static moira_status_t check_inputs(const moira_engine_t *e, const moira_engine_input_t *inputs,
                                   int n, int64_t *out_rows) {
    int64_t rows = 0;
    if (n < 1 || n > e->options.max_sequences)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "engine: %d sequences in a step (1 to %d)", n,
                                 e->options.max_sequences);
    for (int i = 0; i < n; i++) {
        const moira_engine_input_t *in = &inputs[i];
        if (in->sequence < 0 || in->sequence >= e->options.max_sequences || in->n < 1)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "engine: input %d: sequence %d with %lld tokens", i,
                                     in->sequence, (long long)in->n);
        for (int j = 0; j < i; j++)
            if (inputs[j].sequence == in->sequence)
                return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                         "engine: sequence %d twice in one step", in->sequence);
        if (e->lengths[in->sequence] + in->n > e->options.context)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "the sequence would hold %lld tokens, more than the context "
                                     "of %lld",
                                     (long long)(e->lengths[in->sequence] + in->n),
                                     (long long)e->options.context);
        for (int64_t t = 0; t < in->n; t++)
            if (in->ids[t] < 0 || in->ids[t] >= e->model->vocab)
                return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                         "token id %d is outside the vocabulary (0 to %lld)",
                                         in->ids[t], (long long)e->model->vocab - 1);
        rows += in->n;
    }
    if (rows > e->options.max_rows)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "engine: %lld tokens in one step (at most %lld)", (long long)rows,
                                 (long long)e->options.max_rows);
    *out_rows = rows;
    return MOIRA_OK_STATUS;
}

/* Embedding rows, positions and each sequence's rows of the batch, on the host. */
static void gather_inputs(moira_engine_t *e, const moira_engine_input_t *inputs, int n) {
    int64_t d = e->config->hidden_size, row = 0;
    for (int i = 0; i < n; i++) {
        const moira_engine_input_t *in = &inputs[i];
        moira_program_sequence_t *s = &e->batch[i];
        s->first_row = row;
        s->rows = in->n;
        s->past = e->lengths[in->sequence];
        for (int64_t t = 0; t < in->n; t++, row++) {
            moira_tensor_row_to_f32(e->model->embed, in->ids[t], e->host_x + row * d);
            e->host_positions[row] = (int32_t)(s->past + t);
        }
    }
}

/* The gathered inputs to the device (the queue reads the host buffers before the step ends). */
static moira_status_t send_inputs(moira_engine_t *e, int64_t rows) {
    MOIRA_RETURN_IF_ERROR(
        moira_queue_write(e->queue, e->activations, e->x.offset, e->host_x,
                          (size_t)(rows * e->config->hidden_size) * sizeof(float)));
    return moira_queue_write(e->queue, e->activations, e->positions.offset, e->host_positions,
                             (size_t)rows * sizeof(int32_t));
}

/* The layers through the executor (a placement): activations round-trip through the host, and
 * the result goes to the head's device. */
static moira_status_t run_placed_layers(moira_engine_t *e, const moira_engine_input_t *inputs,
                                        int n, int64_t rows) {
    int64_t d = e->config->hidden_size, shape_x[2] = {rows, d}, shape_p[1] = {rows};
    for (int i = 0; i < n; i++)
        e->exec_batch[i] = (moira_exec_sequence_t){.slot = inputs[i].sequence,
                                                   .first_row = e->batch[i].first_row,
                                                   .rows = e->batch[i].rows,
                                                   .past = e->batch[i].past};
    moira_tensor_t x = moira_tensor_view(MOIRA_DTYPE_F32, 2, shape_x, e->host_x);
    moira_tensor_t positions = moira_tensor_view(MOIRA_DTYPE_I32, 1, shape_p, e->host_positions);
    MOIRA_RETURN_IF_ERROR(moira_executor_step(e->executor, &x, &positions, e->exec_batch, n, &x));
    return moira_queue_write(e->queue, e->activations, e->x.offset, e->host_x,
                             (size_t)(rows * d) * sizeof(float));
}

/* Every layer's program, each sequence attending through its own rows of the layer's cache. */
static moira_status_t run_layers(moira_engine_t *e, const moira_engine_input_t *inputs, int n,
                                 int64_t rows) {
    int64_t ctx = e->options.context;
    for (int64_t l = 0; l < e->n_layers; l++) {
        engine_layer_t *layer = &e->layers[l];
        for (int i = 0; i < n; i++) {
            moira_mla_cache_window(&layer->cache, inputs[i].sequence * ctx, ctx,
                                   &e->batch[i].cache_c, &e->batch[i].cache_pe);
        }
        MOIRA_RETURN_IF_ERROR(moira_layer_program_replay(layer->program, e->queue, MOIRA_LAYER_ALL,
                                                         rows, e->batch, n));
        if (e->host_topk && moira_model_config_is_moe_layer(e->config, l)) {
            /* Layers share the workspace: the routing is read before the next layer's replay
             * overwrites it (the queue runs in order). */
            moira_dtensor_t normed, idx, weight;
            moira_layer_program_routing(layer->program, rows, &normed, &idx, &weight);
            int64_t k = e->config->num_experts_per_tok;
            MOIRA_RETURN_IF_ERROR(moira_queue_read(e->queue, idx.buffer, idx.offset,
                                                   e->host_topk + l * e->options.max_rows * k,
                                                   (size_t)(rows * k) * sizeof(int32_t)));
        }
    }
    return MOIRA_OK_STATUS;
}

/* Adds the step's routing to the running counts. */
static void count_expert_load(moira_engine_t *e, int64_t rows) {
    int64_t k = e->config->num_experts_per_tok, experts = e->config->n_routed_experts;
    for (int64_t l = 0; l < e->n_layers; l++) {
        if (!moira_model_config_is_moe_layer(e->config, l)) continue;
        const int32_t *idx = e->host_topk + l * e->options.max_rows * k;
        for (int64_t i = 0; i < rows * k; i++)
            if (idx[i] >= 0 && idx[i] < experts) e->expert_load[l * experts + idx[i]] += 1;
    }
}

/* Final norm of each sequence's last row, lm_head over those rows, logits to the host. */
static moira_status_t run_head(moira_engine_t *e, int n) {
    moira_rmsnorm_params_t norm = {.eps = (float)e->config->rms_norm_eps};
    for (int i = 0; i < n; i++) {
        const moira_program_sequence_t *s = &e->batch[i];
        moira_dtensor_t ops[] = {rows_of(&e->x, s->first_row + s->rows - 1, 1), e->norm,
                                 rows_of(&e->final_normed, i, 1)};
        MOIRA_RETURN_IF_ERROR(
            moira_launch_op(e->queue, MOIRA_OP_RMSNORM, &norm, sizeof(norm), 3, ops));
    }
    moira_linear_params_t linear = {.beta = 0.0f};
    moira_dtensor_t logits = rows_of(&e->logits, 0, n);
    moira_dtensor_t ops[] = {rows_of(&e->final_normed, 0, n), e->lm_head, logits};
    MOIRA_RETURN_IF_ERROR(
        moira_launch_op(e->queue, MOIRA_OP_LINEAR, &linear, sizeof(linear), 3, ops));
    return moira_queue_read(e->queue, e->activations, logits.offset, e->host_logits,
                            (size_t)(n * e->model->vocab) * sizeof(float));
}

moira_status_t moira_engine_step(moira_engine_t *e, const moira_engine_input_t *inputs,
                                 int n_inputs, const float **out_logits) {
    *out_logits = NULL;
    int64_t rows = 0;
    MOIRA_RETURN_IF_ERROR(check_inputs(e, inputs, n_inputs, &rows));
    gather_inputs(e, inputs, n_inputs);
    moira_status_t status =
        e->executor ? run_placed_layers(e, inputs, n_inputs, rows) : send_inputs(e, rows);
    if (!status && !e->executor) status = run_layers(e, inputs, n_inputs, rows);
    if (!status) status = run_head(e, n_inputs);
    moira_status_t done = moira_queue_finish(e->queue);
    if (status) {
        moira_status_free(done);
        return status;
    }
    MOIRA_RETURN_IF_ERROR(done);
    for (int i = 0; i < n_inputs; i++)
        e->lengths[inputs[i].sequence] += inputs[i].n;
    if (e->expert_load && e->executor)
        moira_executor_add_expert_load(e->executor, e->expert_load);
    else if (e->expert_load)
        count_expert_load(e, rows);
    *out_logits = e->host_logits;
    return MOIRA_OK_STATUS;
}

void moira_engine_reset(moira_engine_t *e, int sequence) {
    if (sequence >= 0 && sequence < e->options.max_sequences) e->lengths[sequence] = 0;
}

void moira_engine_truncate(moira_engine_t *e, int sequence, int64_t length) {
    if (sequence >= 0 && sequence < e->options.max_sequences && length >= 0 &&
        length < e->lengths[sequence])
        e->lengths[sequence] = length;
}

int64_t moira_engine_length(const moira_engine_t *e, int sequence) {
    return e->lengths[sequence];
}

const moira_engine_options_t *moira_engine_options(const moira_engine_t *e) {
    return &e->options;
}

const double *moira_engine_expert_load(const moira_engine_t *e) {
    return e->expert_load;
}

const moira_exec_stats_t *moira_engine_placement_stats(const moira_engine_t *e) {
    return e->executor ? moira_executor_stats(e->executor) : NULL;
}

int64_t moira_engine_vocab(const moira_engine_t *e) {
    return e->model->vocab;
}

bool moira_engine_leads(const moira_engine_t *e) {
    return !e->executor || moira_executor_leads(e->executor);
}

void moira_engine_release(moira_engine_t *e) {
    if (e->executor) moira_executor_release(e->executor);
}

moira_status_t moira_engine_follow(moira_engine_t *e) {
    return e->executor ? moira_executor_follow(e->executor) : MOIRA_OK_STATUS;
}
