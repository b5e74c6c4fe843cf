/* `moira op gate|moe|mla|layer`: one op on one device, from safetensors in to safetensors out.
 * The tool users reach for when a backend disagrees with their PyTorch dump. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops/device_layer.h"
#include "runtime/backend.h"
#include "runtime/cli/cli.h"
#include "runtime/distinct_paths.h"
#include "runtime/log.h"
#include "runtime/safetensors.h"

static const char op_help[] =
    "usage: moira op gate|moe|mla|layer --model FILE --inputs FILE [--weights PATH] [--layer N]\n"
    "                [--backend DEVICE] [--decode] [--verbose] -o OUT.safetensors\n\n"
    "Runs one op on one device. Reads hidden_states [T, D] (F32) and optional positions [T]\n"
    "(I32 or I64; default 0..T-1) from --inputs; weights from --weights (a .safetensors file or a\n"
    "directory with model.safetensors.index.json) or from the inputs file, under bare Hugging\n"
    "Face names (mlp.gate.weight) or, with --layer N, under model.layers.N.* names.\n"
    "Writes topk_idx I32 [T, k], topk_weight F32 [T, k] and selection_scores F32 [T, E] (gate) or\n"
    "output F32 [T, D] (moe, mla, layer).\n\n"
    "  --backend DEVICE  device to run on (default cpu:0; see moira devices)\n"
    "  --decode          mla, layer: run one token at a time through the latent cache\n"
    "  --verbose         print timings, what was loaded and per-launch device details\n"
    "                    (npu: modelled device time and engine counts per kernel)\n";

typedef enum op_choice { OP_GATE, OP_MOE, OP_MLA, OP_LAYER } op_choice_t;

typedef struct op_args {
    op_choice_t op;
    const char *model, *inputs, *weights, *backend, *output;
    long long layer; /* -1: bare names */
    bool decode, verbose;
} op_args_t;

static int parse_op_args(int argc, char **argv, op_args_t *args) {
    static const struct option options[] = {
        {"model", required_argument, NULL, 'm'},   {"inputs", required_argument, NULL, 'i'},
        {"weights", required_argument, NULL, 'w'}, {"layer", required_argument, NULL, 'l'},
        {"backend", required_argument, NULL, 'b'}, {"decode", no_argument, NULL, 'd'},
        {"verbose", no_argument, NULL, 'v'},       {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    memset(args, 0, sizeof(*args));
    args->layer = -1;
    args->backend = "cpu:0";
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "ho:", options, NULL)) != -1) {
        switch (c) {
        case 'm':
            args->model = optarg;
            break;
        case 'i':
            args->inputs = optarg;
            break;
        case 'w':
            args->weights = optarg;
            break;
        case 'b':
            args->backend = optarg;
            break;
        case 'd':
            args->decode = true;
            break;
        case 'v':
            args->verbose = true;
            /* Backends report per-launch details (the npu's modelled device time) at info. */
            if (moira_log_get_level() < MOIRA_LOG_INFO) moira_log_set_level(MOIRA_LOG_INFO);
            break;
        case 'o':
            args->output = optarg;
            break;
        case 'l':
            if (!moira_cli_parse_int("op", "--layer", optarg, 0, 1 << 20, &args->layer)) return 2;
            break;
        case 'h':
            fputs(op_help, stdout);
            return -1;
        default:
            return moira_cli_usage_error("op", "unknown option");
        }
    }
    if (optind >= argc) return moira_cli_usage_error("op", "which op? gate, moe, mla or layer");
    static const char *names[] = {"gate", "moe", "mla", "layer"};
    bool known = false;
    for (int i = 0; i < 4; i++)
        if (!strcmp(argv[optind], names[i])) {
            args->op = (op_choice_t)i;
            known = true;
        }
    if (!known) return moira_cli_usage_error("op", "unknown op \"%s\"", argv[optind]);
    if (optind + 1 < argc)
        return moira_cli_usage_error("op", "unexpected \"%s\"", argv[optind + 1]);
    if (!args->model) return moira_cli_usage_error("op", "--model is required");
    if (!args->inputs) return moira_cli_usage_error("op", "--inputs is required");
    if (!args->output) return moira_cli_usage_error("op", "-o OUT.safetensors is required");
    if (args->decode && (args->op == OP_GATE || args->op == OP_MOE))
        return moira_cli_usage_error("op", "--decode applies to mla and layer only");
    return 0;
}

/* Everything one op invocation holds; released in one place whatever failed. */
typedef struct op_session {
    moira_model_config_t config;
    moira_safetensors_t *inputs, *weights_file;
    moira_layer_weights_t host_weights;
    bool have_host_weights;
    moira_device_t *device;
    moira_queue_t *queue;
    moira_device_layer_t layer;
    bool have_layer;
    moira_buffer_t *io; /* x, positions and outputs on the device */
    moira_mla_cache_t cache;
    int64_t tokens;
    moira_tensor_t positions; /* owned i32 [T] */
} op_session_t;

/* The queue goes first: destroying it waits for work still queued (after a failure, copies into
 * `io` from `positions` may be pending), so nothing it touches is freed under it. */
static void op_session_release(op_session_t *s) {
    moira_queue_destroy(s->queue);
    moira_mla_cache_release(&s->cache);
    moira_buffer_free(s->io);
    if (s->have_layer) moira_device_layer_release(&s->layer);
    if (s->have_host_weights) moira_layer_weights_free(&s->host_weights);
    if (s->weights_file && s->weights_file != s->inputs) moira_safetensors_close(s->weights_file);
    if (s->inputs) moira_safetensors_close(s->inputs);
    moira_tensor_release(&s->positions);
}

/* hidden_states must be F32 [T, hidden_size]; positions default to 0..T-1. */
static moira_status_t load_activations(op_session_t *s, const char *path,
                                       const moira_tensor_t **out_x) {
    const moira_tensor_t *x;
    MOIRA_RETURN_IF_ERROR(moira_safetensors_find(s->inputs, "hidden_states", &x));
    if (x->dtype != MOIRA_DTYPE_F32 || x->rank != 2 || x->shape[1] != s->config.hidden_size ||
        x->shape[0] < 1) {
        char shape[64];
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "hidden_states is %s %s, expected F32 [T, %lld]",
                               moira_dtype_name(x->dtype), moira_tensor_shape_str(x, shape, 64),
                               (long long)s->config.hidden_size);
    }
    int64_t bad = moira_tensor_first_nonfinite(x);
    if (bad >= 0) {
        float value = ((const float *)x->data)[bad];
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "hidden_states[%lld, %lld] is %s; inputs must be finite numbers",
                               (long long)(bad / x->shape[1]), (long long)(bad % x->shape[1]),
                               isnan(value) ? "NaN" : "infinite");
    }
    s->tokens = x->shape[0];
    int64_t shape[1] = {s->tokens};
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_I32, 1, shape, &s->positions));
    int32_t *pos = s->positions.data;
    const moira_tensor_t *given = NULL;
    moira_status_t found = moira_safetensors_find(s->inputs, "positions", &given);
    if (moira_status_code(found) == MOIRA_CODE_NOT_FOUND) {
        moira_status_free(found);
        for (int64_t t = 0; t < s->tokens; t++)
            pos[t] = (int32_t)t;
    } else if (found) {
        return found;
    } else {
        if (moira_tensor_numel(given) != s->tokens ||
            (given->dtype != MOIRA_DTYPE_I32 && given->dtype != MOIRA_DTYPE_I64))
            return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                                   "positions must be I32 or I64 with %lld elements",
                                   (long long)s->tokens);
        for (int64_t t = 0; t < s->tokens; t++) {
            int64_t p = given->dtype == MOIRA_DTYPE_I32 ? ((const int32_t *)given->data)[t]
                                                        : ((const int64_t *)given->data)[t];
            if (p < 0 || p > MOIRA_MAX_POSITION)
                return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                                       "positions[%lld] = %lld is out of range [0, %d], the "
                                       "positions every backend computes exactly (f32 angles)",
                                       (long long)t, (long long)p, MOIRA_MAX_POSITION);
            pos[t] = (int32_t)p;
        }
    }
    *out_x = x;
    return MOIRA_OK_STATUS;
}

static unsigned parts_for(op_choice_t op) {
    switch (op) {
    case OP_GATE:
        return MOIRA_WEIGHTS_GATE;
    case OP_MOE:
        return MOIRA_WEIGHTS_MOE;
    case OP_MLA:
        return MOIRA_WEIGHTS_MLA;
    case OP_LAYER:
        return MOIRA_WEIGHTS_ALL;
    }
    return MOIRA_WEIGHTS_ALL;
}

static double seconds_since(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + 1e-9 * (double)(now.tv_nsec - start->tv_nsec);
}

/* Runs the chosen op on the device and reads the results into `outputs` (owned by the caller). */
static moira_status_t run_on_device(op_session_t *s, const op_args_t *args, const moira_tensor_t *x,
                                    moira_tensor_t *outputs, int *out_count) {
    const moira_model_config_t *cfg = &s->config;
    int64_t t = s->tokens, d = cfg->hidden_size, k = cfg->num_experts_per_tok;
    int64_t e = cfg->n_routed_experts;
    size_t x_bytes = (size_t)(t * d) * 4, pos_bytes = (size_t)t * 4;
    size_t out_bytes = args->op == OP_GATE ? (size_t)(2 * t * k + t * e) * 4 : x_bytes;
    MOIRA_RETURN_IF_ERROR(
        moira_buffer_alloc(s->device, x_bytes + pos_bytes + out_bytes + 512, -1, &s->io));
    size_t pos_off = (x_bytes + 255) / 256 * 256, out_off = (pos_off + pos_bytes + 255) / 256 * 256;
    moira_dtensor_t dx = moira_dtensor_2d(s->io, 0, MOIRA_DTYPE_F32, t, d);
    moira_dtensor_t dpos = moira_dtensor_2d(s->io, pos_off, MOIRA_DTYPE_I32, t, 1);
    dpos.rank = 1;
    MOIRA_RETURN_IF_ERROR(moira_queue_write(s->queue, s->io, 0, x->data, x_bytes));
    MOIRA_RETURN_IF_ERROR(
        moira_queue_write(s->queue, s->io, pos_off, s->positions.data, pos_bytes));

    if (args->op == OP_GATE) {
        moira_dtensor_t idx = moira_dtensor_2d(s->io, out_off, MOIRA_DTYPE_I32, t, k);
        moira_dtensor_t w =
            moira_dtensor_2d(s->io, out_off + (size_t)(t * k) * 4, MOIRA_DTYPE_F32, t, k);
        moira_dtensor_t sel =
            moira_dtensor_2d(s->io, out_off + (size_t)(2 * t * k) * 4, MOIRA_DTYPE_F32, t, e);
        MOIRA_RETURN_IF_ERROR(moira_gate_run(s->queue, cfg, &s->layer, &dx, &idx, &w, &sel));
        int64_t tk[2] = {t, k}, te[2] = {t, e};
        MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_I32, 2, tk, &outputs[0]));
        MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_F32, 2, tk, &outputs[1]));
        MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_F32, 2, te, &outputs[2]));
        *out_count = 3;
        for (int i = 0; i < 3; i++)
            MOIRA_RETURN_IF_ERROR(moira_queue_read(s->queue, s->io,
                                                   out_off + (i == 0   ? 0
                                                              : i == 1 ? (size_t)(t * k) * 4
                                                                       : (size_t)(2 * t * k) * 4),
                                                   outputs[i].data,
                                                   moira_tensor_nbytes(&outputs[i])));
        return moira_queue_finish(s->queue);
    }

    moira_dtensor_t y = moira_dtensor_2d(s->io, out_off, MOIRA_DTYPE_F32, t, d);
    if (args->op == OP_MOE) {
        MOIRA_RETURN_IF_ERROR(moira_moe_run(s->queue, cfg, &s->layer, &dx, &y, 0.0f));
    } else if (!args->decode) {
        int64_t layer_index = args->layer >= 0 ? args->layer : 0;
        if (args->op == OP_MLA)
            MOIRA_RETURN_IF_ERROR(
                moira_mla_run(s->queue, cfg, &s->layer, &dx, &dpos, NULL, &y, 0.0f));
        else
            MOIRA_RETURN_IF_ERROR(
                moira_layer_run(s->queue, cfg, layer_index, &s->layer, &dx, &dpos, NULL, &y));
    } else {
        /* One token at a time through the latent cache: the path decode takes in serving. */
        const int32_t *pos = s->positions.data;
        for (int64_t i = 0; i < t; i++)
            if (pos[i] != i)
                return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                         "--decode needs positions 0..T-1 (the cache order)");
        MOIRA_RETURN_IF_ERROR(
            moira_mla_cache_create(s->device, cfg, t, MOIRA_DTYPE_F32, &s->cache));
        int64_t layer_index = args->layer >= 0 ? args->layer : 0;
        MOIRA_RETURN_IF_ERROR(moira_decode_tokens(s->queue, cfg, layer_index, &s->layer,
                                                  args->op == OP_LAYER, &dx, &dpos, &s->cache, &y));
    }
    int64_t td[2] = {t, d};
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_F32, 2, td, &outputs[0]));
    *out_count = 1;
    MOIRA_RETURN_IF_ERROR(moira_queue_read(s->queue, s->io, out_off, outputs[0].data, x_bytes));
    return moira_queue_finish(s->queue);
}

static moira_status_t run_op(const op_args_t *args) {
    op_session_t s;
    memset(&s, 0, sizeof(s));
    moira_tensor_t outputs[3];
    memset(outputs, 0, sizeof(outputs));
    int n_outputs = 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    const moira_tensor_t *x = NULL;
    moira_status_t status = moira_model_config_load(args->model, &s.config);
    if (!status) status = moira_safetensors_open(args->inputs, &s.inputs);
    if (!status) status = load_activations(&s, args->inputs, &x);
    if (!status && args->weights) status = moira_safetensors_open(args->weights, &s.weights_file);
    if (!status && !args->weights) s.weights_file = s.inputs;
    char prefix[64] = "";
    if (args->layer >= 0) snprintf(prefix, sizeof(prefix), "model.layers.%lld.", args->layer);
    int64_t layer_index = args->layer >= 0 ? args->layer : 0;
    unsigned parts = parts_for(args->op);
    if (!status)
        status = moira_layer_weights_find(s.weights_file, prefix, &s.config, layer_index, parts,
                                          &s.host_weights);
    s.have_host_weights = !status;
    if (!status) status = moira_runtime_init();
    if (!status) status = moira_device_find(args->backend, &s.device);
    if (!status) status = moira_queue_create(s.device, &s.queue);
    if (!status)
        status = moira_device_layer_upload(s.device, s.queue, &s.config, &s.host_weights,
                                           MOIRA_WEIGHT_DTYPE_AS_STORED, &s.layer);
    s.have_layer = !status;
    double load_s = seconds_since(&start);
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (!status) status = run_on_device(&s, args, x, outputs, &n_outputs);
    double run_s = seconds_since(&start);
    if (!status) {
        static const char *gate_names[] = {"topk_idx", "topk_weight", "selection_scores"};
        moira_named_tensor_t named[3];
        for (int i = 0; i < n_outputs; i++) {
            named[i].name = args->op == OP_GATE ? gate_names[i] : "output";
            named[i].tensor = &outputs[i];
        }
        status = moira_safetensors_write(args->output, named, (size_t)n_outputs);
    }
    if (!status && args->verbose)
        fprintf(stderr, "moira op: %lld tokens on %s: load %.3f s, run %.3f s\n",
                (long long)s.tokens, args->backend, load_s, run_s);
    for (int i = 0; i < 3; i++)
        moira_tensor_release(&outputs[i]);
    op_session_release(&s);
    return status;
}

int moira_cli_op(int argc, char **argv) {
    op_args_t args;
    int rc = parse_op_args(argc, argv, &args);
    if (rc) return rc < 0 ? 0 : rc;
    const moira_path_use_t uses[] = {{"-o", args.output, true},
                                     {"--model", args.model, false},
                                     {"--inputs", args.inputs, false},
                                     {"--weights", args.weights, false}};
    moira_status_t status = moira_check_distinct_paths(uses, 4);
    return moira_status_report(status ? status : run_op(&args));
}
