/* The options and setup `moira generate` and `moira chat` share (runtime/cli/generate.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/device_layer.h"
#include "runtime/backend.h"
#include "runtime/cli/cli.h"
#include "runtime/cli/generate.h"
#include "runtime/cluster/cluster.h"

static bool parse_double(const char *verb, const char *option, const char *text, double min,
                         double max, double *out) {
    char *end = NULL;
    double value = text ? strtod(text, &end) : NAN;
    if (!text || !*text || *end || !(value >= min && value <= max)) {
        moira_cli_usage_error(verb, "%s expects a number in [%g, %g], got \"%s\"", option, min, max,
                              text ? text : "");
        return false;
    }
    *out = value;
    return true;
}

int generate_parse_option(const char *verb, int argc, char **argv, int *i, generate_options_t *o) {
    const char *arg = argv[*i];
    static const char *const with_value[] = {
        "--model",       "--backend", "--chat-format", "--max-tokens",     "--ctx",
        "--temperature", "--top-p",   "--top-k",       "--seed",           "--stop",
        "--topology",    "--plan",    "--cache-dtype", "--network-timeout"};
    bool known = false;
    for (size_t k = 0; k < sizeof(with_value) / sizeof(with_value[0]); k++)
        known |= !strcmp(arg, with_value[k]);
    if (!known) return 0;
    if (*i + 1 >= argc) return moira_cli_usage_error(verb, "%s needs a value", arg);
    const char *v = argv[++*i];
    bool ok = true;
    if (!strcmp(arg, "--model")) {
        o->model = v;
    } else if (!strcmp(arg, "--backend")) {
        o->backend = v;
    } else if (!strcmp(arg, "--topology")) {
        o->topology = v;
    } else if (!strcmp(arg, "--plan")) {
        o->plan = v;
    } else if (!strcmp(arg, "--chat-format")) {
        o->chat_format = v;
    } else if (!strcmp(arg, "--max-tokens")) {
        ok = moira_cli_parse_int(verb, arg, v, 1, 1 << 24, &o->max_tokens);
    } else if (!strcmp(arg, "--cache-dtype")) {
        if (strcmp(v, "f32") && strcmp(v, "bf16"))
            return moira_cli_usage_error(verb, "--cache-dtype expects f32 or bf16, got \"%s\"", v);
        o->cache_dtype = strcmp(v, "f32") ? MOIRA_DTYPE_BF16 : MOIRA_DTYPE_F32;
    } else if (!strcmp(arg, "--network-timeout")) {
        long long seconds = 0;
        ok = moira_cli_parse_int(verb, arg, v, 1, 86400, &seconds);
        if (ok && moira_cluster_current())
            moira_cluster_set_timeout(moira_cluster_current(), (double)seconds);
    } else if (!strcmp(arg, "--ctx")) {
        ok = moira_cli_parse_int(verb, arg, v, 2, 1 << 24, &o->context);
    } else if (!strcmp(arg, "--temperature")) {
        ok = o->has_temperature = parse_double(verb, arg, v, 0, 100, &o->temperature);
    } else if (!strcmp(arg, "--top-p")) {
        ok = o->has_top_p = parse_double(verb, arg, v, 1e-9, 1, &o->top_p);
    } else if (!strcmp(arg, "--top-k")) {
        ok = o->has_top_k = moira_cli_parse_int(verb, arg, v, 0, 1 << 30, &o->top_k);
    } else if (!strcmp(arg, "--seed")) {
        ok = o->has_seed = moira_cli_parse_int(verb, arg, v, 0, INT64_MAX, &o->seed);
    } else {
        if (o->n_stops == GENERATE_MAX_STOPS)
            return moira_cli_usage_error(verb, "at most %d --stop strings", GENERATE_MAX_STOPS);
        if (!*v) return moira_cli_usage_error(verb, "--stop needs a non-empty string");
        o->stops[o->n_stops++] = v;
    }
    return ok ? 1 : 2;
}

void generate_print_common_help(bool with_request_options) {
    printf("  --model DIR        a Hugging Face model directory: config.json, safetensors weights\n"
           "                     (one file, or shards with model.safetensors.index.json; f32,\n"
           "                     bf16 or fp8 with block scales), tokenizer.json,\n"
           "                     tokenizer_config.json, generation_config.json\n"
           "  --backend DEVICE   the device that runs the model (default cpu:0; moira devices);\n"
           "                     with --topology or --plan, the home of attention, router,\n"
           "                     shared experts and lm_head\n"
           "  --topology FILE    the machine (default: this one, discovered); without --plan a\n"
           "                     plan for a uniform load is made here\n"
           "  --plan FILE        routed experts where the plan (moira plan -o) puts them\n"
           "  --network-timeout S  under mpirun (one rank per host of the topology,\n"
           "                     docs/cluster.md): seconds of silence from another rank after\n"
           "                     which a rank waiting for it ends the job (default 60)\n");
    if (with_request_options)
        printf("  --max-tokens N     generate at most N tokens (default: until the context is "
               "full)\n");
    printf("  --ctx N            tokens a sequence may hold, prompt included (default\n"
           "                     max_position_embeddings, at most 4096)\n"
           "  --cache-dtype T    the latent caches' dtype: f32 (default) or bf16 (half the\n"
           "                     memory and the bytes decode reads, bf16's precision; cpu only)\n"
           "  --temperature T    0 is greedy; default generation_config.json's, else 1\n"
           "  --top-p P          keep the smallest set of tokens holding P of the probability\n"
           "  --top-k K          keep the K most likely tokens (0: all)\n"
           "  --seed S           the sampler's seed: one seed, one output (default 0)\n");
    if (with_request_options)
        printf("  --stop STR         end when STR appears in the text (repeatable; not "
               "printed)\n");
    printf("  --chat-format N    a built-in chat template instead of the model's own\n");
}

moira_status_t generate_session_open_model(const generate_options_t *o, generate_session_t *s) {
    memset(s, 0, sizeof(*s));
    MOIRA_RETURN_IF_ERROR(moira_model_files_open(o->model, true, &s->model));
    s->sampling = s->model.defaults;
    if (o->has_temperature) s->sampling.temperature = o->temperature;
    if (o->has_top_p) s->sampling.top_p = o->top_p;
    if (o->has_top_k) s->sampling.top_k = (int32_t)o->top_k;
    if (o->has_seed) s->sampling.seed = (uint64_t)o->seed;
    return MOIRA_OK_STATUS;
}

moira_status_t generate_session_start_engine(const char *verb, const generate_options_t *o,
                                             generate_session_t *s) {
    moira_cluster_t *cluster = moira_cluster_current();
    if (cluster && moira_cluster_size(cluster) > 1 && !o->topology && !o->plan)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s under mpirun needs --topology and --plan: the ranks are the "
                                 "topology's hosts",
                                 verb);
    MOIRA_RETURN_IF_ERROR(moira_runtime_init());
    moira_device_t *device = NULL;
    MOIRA_RETURN_IF_ERROR(moira_device_find(o->backend ? o->backend : "cpu:0", &device));
    s->progress = (run_progress_context_t){verb, moira_model_files_device_bytes(&s->model)};
    moira_engine_options_t options = {.max_rows = o->max_rows,
                                      .context = o->context,
                                      .cache_dtype = o->cache_dtype,
                                      .max_sequences = o->max_sequences > 0 ? o->max_sequences : 1,
                                      .record_expert_load = o->record_expert_load,
                                      .progress = run_progress,
                                      .progress_context = &s->progress};
    if (o->topology || o->plan) {
        /* The plan is made or checked for a prefill chunk's worth of tokens. */
        int64_t slots = options.max_sequences * moira_engine_context(&s->model.config, o->context);
        run_args_t where = {.topology = o->topology,
                            .plan = o->plan,
                            .backend = o->backend,
                            .home_cache_bytes = (double)s->model.config.num_hidden_layers *
                                                (double)moira_mla_cache_bytes(
                                                    &s->model.config, slots, o->cache_dtype)};
        MOIRA_RETURN_IF_ERROR(run_place(&where, &s->model.config, 256, &s->placement));
        s->placed = true;
        s->engine_placement = (moira_engine_placement_t){.topology = &s->placement.topology,
                                                         .plan = &s->placement.plan,
                                                         .binding = &s->placement.binding,
                                                         .homes = s->placement.homes};
        options.placement = &s->engine_placement;
        device = s->placement.home;
    }
    s->device = device;
    return moira_engine_create(&s->model, device, &options, &s->engine);
}

moira_status_t generate_session_open(const char *verb, const generate_options_t *o,
                                     generate_session_t *s) {
    MOIRA_RETURN_IF_ERROR(generate_session_open_model(o, s));
    return generate_session_start_engine(verb, o, s);
}

void generate_session_close(generate_session_t *s) {
    moira_engine_destroy(s->engine);
    if (s->placed) run_placement_free(&s->placement);
    moira_model_files_close(&s->model);
    memset(s, 0, sizeof(*s));
}

moira_generation_request_t generate_request(const generate_options_t *o,
                                            const generate_session_t *s, const int32_t *prompt,
                                            int64_t n_prompt) {
    int64_t context = moira_engine_options(s->engine)->context;
    moira_generation_request_t r = {
        .prompt = prompt,
        .n_prompt = n_prompt,
        .max_tokens = o->max_tokens > 0 ? o->max_tokens : context - n_prompt,
        .stops = o->stops,
        .n_stops = o->n_stops,
        .sampling = s->sampling,
    };
    if (r.max_tokens < 1 && o->max_tokens <= 0) r.max_tokens = 1;
    return r;
}
