/* `moira run`: a whole model, layer after layer, on one device, timed and checked against the
 * reference. With no arguments: the built-in default model with seeded random weights on cpu:0.
 * (Plans spreading experts over several devices arrive with the executor.) */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ops/device_layer.h"
#include "ops/random_weights.h"
#include "ops/reference.h"
#include "runtime/backend.h"
#include "runtime/cli/cli.h"
#include "runtime/safetensors.h"

static const char run_help[] =
    "usage: moira run [--model FILE] [--weights PATH] [--tokens N] [--iters N]\n"
    "                 [--backend DEVICE] [--inputs FILE -o OUT.safetensors] [--seed N] [--json]\n\n"
    "Runs every decoder layer of a model (prefill over N tokens) on one device, reports\n"
    "tokens/s, and checks the output against the reference implementation.\n"
    "With no arguments: the built-in default model (configs/models/moira-tiny.yaml) with\n"
    "seeded random weights on cpu:0.\n\n"
    "  --model FILE      model config (YAML or Hugging Face config.json)\n"
    "  --weights PATH    safetensors checkpoint (model.layers.N.* names); default: random\n"
    "  --tokens N        tokens per batch (default 32; from --inputs when given)\n"
    "  --iters N         timed repetitions (default 3)\n"
    "  --backend DEVICE  device to run on (default cpu:0)\n"
    "  --inputs FILE     hidden_states [T, D] to feed; -o writes the final output\n"
    "  --seed N          seed of the random weights and inputs (default 1)\n"
    "  --json            machine-readable summary\n"
    "--topology, --plan and --record-profile need the multi-device executor (not built yet).\n";

typedef struct run_args {
    const char *model, *weights, *backend, *inputs, *output;
    long long tokens, iters, seed;
    bool json;
} run_args_t;

static int parse_run_args(int argc, char **argv, run_args_t *a) {
    static const struct option options[] = {
        {"model", required_argument, NULL, 'm'},   {"weights", required_argument, NULL, 'w'},
        {"tokens", required_argument, NULL, 't'},  {"iters", required_argument, NULL, 'n'},
        {"backend", required_argument, NULL, 'b'}, {"inputs", required_argument, NULL, 'i'},
        {"output", required_argument, NULL, 'o'},  {"seed", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},          {"topology", required_argument, NULL, 'T'},
        {"plan", required_argument, NULL, 'P'},    {"record-profile", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    memset(a, 0, sizeof(*a));
    a->backend = "cpu:0";
    a->tokens = 32;
    a->iters = 3;
    a->seed = 1;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "ho:", options, NULL)) != -1) {
        switch (c) {
        case 'm':
            a->model = optarg;
            break;
        case 'w':
            a->weights = optarg;
            break;
        case 'b':
            a->backend = optarg;
            break;
        case 'i':
            a->inputs = optarg;
            break;
        case 'o':
            a->output = optarg;
            break;
        case 'j':
            a->json = true;
            break;
        case 't':
            if (!moira_cli_parse_int("run", "--tokens", optarg, 1, 1 << 20, &a->tokens)) return 2;
            break;
        case 'n':
            if (!moira_cli_parse_int("run", "--iters", optarg, 1, 1 << 20, &a->iters)) return 2;
            break;
        case 's':
            if (!moira_cli_parse_int("run", "--seed", optarg, 0, 1LL << 40, &a->seed)) return 2;
            break;
        case 'T':
        case 'P':
        case 'R':
            return moira_cli_usage_error("run",
                                         "%s needs the multi-device executor, which this "
                                         "build does not have yet",
                                         argv[optind - 2]);
        case 'h':
            fputs(run_help, stdout);
            return -1;
        default:
            return moira_cli_usage_error("run", "unknown option");
        }
    }
    if (optind < argc) return moira_cli_usage_error("run", "unexpected \"%s\"", argv[optind]);
    if (!a->inputs != !a->output)
        return moira_cli_usage_error("run", "--inputs and -o go together");
    return 0;
}

/* A model's layers on the host (borrowed from a checkpoint, or random) and on the device. */
typedef struct model_run {
    moira_model_config_t config;
    moira_safetensors_t *checkpoint, *inputs_file;
    int64_t n_layers;
    moira_layer_weights_t *host;  /* n_layers; point into checkpoint or random */
    moira_random_layer_t *random; /* n_layers when random */
    moira_device_layer_t *device; /* n_layers */
    moira_device_t *dev;
    moira_queue_t *queue;
    moira_buffer_t *io;
    moira_tensor_t x, positions, out, ref;
} model_run_t;

/* The queue goes first: destroying it waits for queued work that may still use the buffers. */
static void model_run_release(model_run_t *m) {
    moira_queue_destroy(m->queue);
    for (int64_t l = 0; l < m->n_layers; l++) {
        if (m->device) moira_device_layer_release(&m->device[l]);
        if (m->random)
            moira_random_layer_release(&m->random[l]);
        else if (m->host)
            moira_layer_weights_free(&m->host[l]);
    }
    free(m->device);
    free(m->random);
    free(m->host);
    moira_buffer_free(m->io);
    if (m->checkpoint) moira_safetensors_close(m->checkpoint);
    if (m->inputs_file) moira_safetensors_close(m->inputs_file);
    moira_tensor_release(&m->x);
    moira_tensor_release(&m->positions);
    moira_tensor_release(&m->out);
    moira_tensor_release(&m->ref);
}

static moira_status_t load_layers(model_run_t *m, const run_args_t *a) {
    const moira_model_config_t *c = &m->config;
    m->n_layers = c->num_hidden_layers;
    m->host = calloc((size_t)m->n_layers, sizeof(*m->host));
    m->device = calloc((size_t)m->n_layers, sizeof(*m->device));
    if (!m->host || !m->device)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate %lld layers",
                                 (long long)m->n_layers);
    if (a->weights) {
        MOIRA_RETURN_IF_ERROR(moira_safetensors_open(a->weights, &m->checkpoint));
    } else {
        m->random = calloc((size_t)m->n_layers, sizeof(*m->random));
        if (!m->random) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    }
    for (int64_t l = 0; l < m->n_layers; l++) {
        if (m->checkpoint) {
            char prefix[48];
            snprintf(prefix, sizeof(prefix), "model.layers.%lld.", (long long)l);
            MOIRA_RETURN_IF_ERROR(moira_layer_weights_find(m->checkpoint, prefix, c, l,
                                                           MOIRA_WEIGHTS_ALL, &m->host[l]));
        } else {
            MOIRA_RETURN_IF_ERROR(
                moira_random_layer_create(c, l, (uint64_t)a->seed, c->weight_dtype, &m->random[l]));
            m->host[l] = m->random[l].weights;
        }
        MOIRA_RETURN_IF_ERROR(moira_device_layer_upload(
            m->dev, m->queue, c, &m->host[l], MOIRA_WEIGHT_DTYPE_AS_STORED, &m->device[l]));
    }
    return MOIRA_OK_STATUS;
}

static moira_status_t load_inputs(model_run_t *m, const run_args_t *a) {
    int64_t d = m->config.hidden_size, t = a->tokens;
    const moira_tensor_t *given = NULL;
    if (a->inputs) {
        MOIRA_RETURN_IF_ERROR(moira_safetensors_open(a->inputs, &m->inputs_file));
        MOIRA_RETURN_IF_ERROR(moira_safetensors_find(m->inputs_file, "hidden_states", &given));
        if (given->dtype != MOIRA_DTYPE_F32 || given->rank != 2 || given->shape[1] != d ||
            given->shape[0] < 1)
            return moira_status_at(MOIRA_CODE_INVALID_INPUT, a->inputs, 0, 0,
                                   "hidden_states must be F32 [T, %lld]", (long long)d);
        t = given->shape[0];
    }
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(t, d, &m->x));
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(t, d, &m->out));
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(t, d, &m->ref));
    if (given)
        memcpy(m->x.data, given->data, moira_tensor_nbytes(&m->x));
    else
        moira_random_fill_uniform(m->x.data, (size_t)(t * d), (uint64_t)a->seed + 99, -1, 1);
    int64_t shape[1] = {t};
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_I32, 1, shape, &m->positions));
    for (int64_t i = 0; i < t; i++)
        ((int32_t *)m->positions.data)[i] = (int32_t)i;
    return MOIRA_OK_STATUS;
}

/* One forward pass: x -> every layer -> out, ping-ponging between two device activations. */
static moira_status_t forward(model_run_t *m) {
    int64_t t = m->x.shape[0], d = m->config.hidden_size;
    size_t bytes = (size_t)(t * d) * 4, slot = (bytes + 255) / 256 * 256;
    moira_dtensor_t act[2] = {moira_dtensor_2d(m->io, 0, MOIRA_DTYPE_F32, t, d),
                              moira_dtensor_2d(m->io, slot, MOIRA_DTYPE_F32, t, d)};
    moira_dtensor_t pos = moira_dtensor_2d(m->io, 2 * slot, MOIRA_DTYPE_I32, t, 1);
    pos.rank = 1;
    MOIRA_RETURN_IF_ERROR(moira_queue_write(m->queue, m->io, 0, m->x.data, bytes));
    MOIRA_RETURN_IF_ERROR(
        moira_queue_write(m->queue, m->io, 2 * slot, m->positions.data, (size_t)t * 4));
    for (int64_t l = 0; l < m->n_layers; l++)
        MOIRA_RETURN_IF_ERROR(moira_layer_run(m->queue, &m->config, l, &m->device[l], &act[l % 2],
                                              &pos, NULL, &act[(l + 1) % 2]));
    MOIRA_RETURN_IF_ERROR(
        moira_queue_read(m->queue, m->io, (size_t)(m->n_layers % 2) * slot, m->out.data, bytes));
    return moira_queue_finish(m->queue);
}

static moira_status_t reference_forward(model_run_t *m) {
    moira_tensor_t tmp;
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(m->x.shape[0], m->x.shape[1], &tmp));
    memcpy(m->ref.data, m->x.data, moira_tensor_nbytes(&m->x));
    moira_status_t status = MOIRA_OK_STATUS;
    for (int64_t l = 0; l < m->n_layers && !status; l++) {
        status = moira_ref_layer(&m->config, l, &m->host[l], &m->ref, &m->positions, &tmp, false);
        if (!status) memcpy(m->ref.data, tmp.data, moira_tensor_nbytes(&tmp));
    }
    moira_tensor_release(&tmp);
    return status;
}

/* Bytes of one layer's matrices at `dtype` (norms and biases are negligible): what a run must
 * hold on the host and again on the device. */
static double layer_weight_bytes(const moira_model_config_t *c, int64_t layer,
                                 moira_dtype_t dtype) {
    double d = (double)c->hidden_size, h = (double)c->num_attention_heads;
    double qk = (double)(c->qk_nope_head_dim + c->qk_rope_head_dim);
    double q = c->q_lora_rank > 0 ? (double)c->q_lora_rank * (d + h * qk) : h * qk * d;
    double attention = q + (double)(c->kv_lora_rank + c->qk_rope_head_dim) * d +
                       h * (double)(c->qk_nope_head_dim + c->v_head_dim) * (double)c->kv_lora_rank +
                       d * h * (double)c->v_head_dim;
    double mlp = moira_model_config_is_moe_layer(c, layer)
                     ? 3.0 * d * (double)c->moe_intermediate_size *
                           (double)(c->n_routed_experts + c->n_shared_experts)
                     : 3.0 * d * (double)c->intermediate_size;
    return (attention + mlp) * (double)moira_dtype_size(dtype);
}

/* Refuses, before allocating anything, a model whose weights cannot fit: a full DeepSeek model
 * with random weights would otherwise be killed by the kernel halfway through. */
static moira_status_t check_fits(const moira_model_config_t *c, const run_args_t *a,
                                 const moira_device_t *device) {
    if (c->attention != MOIRA_ATTENTION_MLA)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                 "%s uses GQA attention; moira run executes MLA models (its MoE "
                                 "layers can still be planned with moira plan)",
                                 c->name);
    double total = 0;
    for (int64_t l = 0; l < c->num_hidden_layers; l++)
        total += layer_weight_bytes(c, l, c->weight_dtype);
    double host = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    double device_memory = (double)moira_device_info(device)->memory_bytes;
    /* Random weights live on the host and on the device; a checkpoint is mapped, not copied. */
    double host_need = a->weights ? 0 : total;
    if (total > device_memory || host_need + total > host)
        return moira_status_make(
            MOIRA_CODE_INVALID_ARGUMENT,
            "%s needs %.1f GiB of %s weights%s; %s has %.1f GiB and the host "
            "%.1f GiB (try a smaller model such as configs/models/"
            "moira-tiny.yaml)",
            c->name, total / (1 << 30), moira_dtype_name(c->weight_dtype),
            a->weights ? "" : " (twice: random on the host, copied to the device)",
            moira_device_info(device)->name, device_memory / (1 << 30), host / (1 << 30));
    return MOIRA_OK_STATUS;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static moira_status_t run_model(const run_args_t *a, int *out_exit) {
    model_run_t m;
    memset(&m, 0, sizeof(m));
    moira_status_t status = MOIRA_OK_STATUS;
    if (a->model)
        status = moira_model_config_load(a->model, &m.config);
    else
        moira_model_config_default(&m.config);
    if (!status) status = moira_runtime_init();
    if (!status) status = moira_device_find(a->backend, &m.dev);
    if (!status) status = check_fits(&m.config, a, m.dev);
    if (!status) status = moira_queue_create(m.dev, &m.queue);
    double t0 = now_seconds();
    if (!status) status = load_inputs(&m, a);
    if (!status) status = load_layers(&m, a);
    double load_s = now_seconds() - t0;
    int64_t t = m.x.shape[0], d = m.config.hidden_size;
    size_t slot = ((size_t)(t * d) * 4 + 255) / 256 * 256;
    if (!status) status = moira_buffer_alloc(m.dev, 2 * slot + (size_t)t * 4, -1, &m.io);
    if (!status) status = forward(&m); /* warm-up: first touches, thread start */
    double run_s = 0, modelled_before = 0, modelled_after = 0;
    bool modelled = !status && moira_queue_modelled_us(m.queue, &modelled_before);
    for (long long i = 0; i < a->iters && !status; i++) {
        double start = now_seconds();
        status = forward(&m);
        run_s += now_seconds() - start;
    }
    if (modelled) modelled = moira_queue_modelled_us(m.queue, &modelled_after);
    double modelled_ms = modelled ? (modelled_after - modelled_before) / 1e3 / (double)a->iters : 0;
    if (!status) status = reference_forward(&m);
    if (!status && a->output) {
        moira_named_tensor_t named = {.name = "output", .tensor = &m.out};
        status = moira_safetensors_write(a->output, &named, 1);
    }
    if (!status) {
        const moira_device_info_t *info = moira_device_info(m.dev);
        double limit = moira_precision_nmse_limit(info->compute_precision);
        double num = 0, den = 0;
        const float *got = m.out.data, *want = m.ref.data;
        for (int64_t i = 0; i < t * d; i++) {
            num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
            den += (double)want[i] * want[i];
        }
        double nmse = den > 0 ? num / den : num;
        bool agreed = nmse <= limit;
        double tokens_per_s = (double)t * (double)a->iters / run_s;
        const moira_model_config_t *c = &m.config;
        if (a->json) {
            printf("{\"model\": \"%s\", \"device\": \"%s\", \"layers\": %lld, \"tokens\": %lld, "
                   "\"iters\": %lld, \"weight_dtype\": \"%s\", \"load_s\": %.4f, "
                   "\"ms_per_batch\": %.4f, \"tokens_per_s\": %.2f, \"nmse\": %.3g, "
                   "\"limit\": %.3g, \"agreed\": %s",
                   c->name, info->name, (long long)m.n_layers, (long long)t, a->iters,
                   moira_dtype_name(m.device[0].experts_w1.rank ? m.device[0].experts_w1.dtype
                                                                : c->weight_dtype),
                   load_s, 1e3 * run_s / (double)a->iters, tokens_per_s, nmse, limit,
                   agreed ? "true" : "false");
            if (modelled) printf(", \"modelled_device_ms_per_batch\": %.6f", modelled_ms);
            printf("}\n");
        } else {
            printf("model   %s: %lld layers (%lld MoE), hidden %lld, %lld experts top-%lld, "
                   "MLA %lld heads\n",
                   c->name, (long long)m.n_layers, (long long)moira_model_config_moe_layer_count(c),
                   (long long)d, (long long)c->n_routed_experts, (long long)c->num_experts_per_tok,
                   (long long)c->num_attention_heads);
            printf("weights %s (%s), loaded and uploaded in %.3f s\n",
                   a->weights ? a->weights : "seeded random",
                   moira_dtype_name(a->weights ? m.host[0].mla.kv_b_proj->dtype : c->weight_dtype),
                   load_s);
            printf("device  %s (%s, %d cores): every layer (attention, gate, experts, shared)\n",
                   info->name, info->model, info->compute_units);
            printf("run     %lld tokens x %lld iters: %.3f ms per batch, %.1f tokens/s\n",
                   (long long)t, a->iters, 1e3 * run_s / (double)a->iters, tokens_per_s);
            if (modelled)
                printf("cost    %s cost model: %.4f ms device time per batch (summed over its "
                       "kernel launches)\n",
                       info->name, modelled_ms);
            printf("check   %s vs reference: NMSE %.3g (limit %.0e for %s) -> %s\n", info->name,
                   nmse, limit, moira_dtype_name(info->compute_precision),
                   agreed ? "agreed" : "DISAGREED");
        }
        *out_exit = agreed ? 0 : 1;
    }
    model_run_release(&m);
    return status;
}

int moira_cli_run(int argc, char **argv) {
    run_args_t args;
    int rc = parse_run_args(argc, argv, &args);
    if (rc) return rc < 0 ? 0 : rc;
    int exit_code = 0;
    moira_status_t status = run_model(&args, &exit_code);
    if (status) return moira_status_report(status);
    return exit_code;
}
