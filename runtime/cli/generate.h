/* What `moira generate` and `moira chat` share: their model, device and sampling options, and
 * opening a model directory into a running engine. */
#ifndef MOIRA_CLI_GENERATE_H
#define MOIRA_CLI_GENERATE_H

#include <stdbool.h>

#include "runtime/cli/run.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/generation.h"

#define GENERATE_MAX_STOPS 16

typedef struct generate_options {
    const char *model;
    const char *backend;  /* default cpu:0 */
    const char *topology; /* with plan: experts where the plan puts them */
    const char *plan;
    const char *chat_format;   /* a built-in template instead of the model's own */
    long long max_tokens;      /* -1: until the context is full */
    long long context;         /* 0: the engine's default */
    moira_dtype_t cache_dtype; /* --cache-dtype: F32 (default) or BF16 */
    int max_sequences;         /* sequences the engine steps together (0: one) */
    int64_t max_rows;          /* tokens one engine step may hold (0: the engine's default) */
    bool record_expert_load;   /* the engine counts the tokens routed to each expert */
    /* Sampling: unset values take generation_config.json's. */
    bool has_temperature, has_top_p, has_top_k, has_seed;
    double temperature, top_p;
    long long top_k, seed;
    const char *stops[GENERATE_MAX_STOPS];
    int n_stops;
} generate_options_t;

/* The options both verbs take. Returns 1 when argv[*i] was one (consuming its value), 0 when it
 * is not, and 2 (after printing why) for a bad value. */
int generate_parse_option(const char *verb, int argc, char **argv, int *i, generate_options_t *o);

/* The help lines of those options; --max-tokens and --stop only `with_request_options` (the
 * server takes them per request). */
void generate_print_common_help(bool with_request_options);

/* A model directory (with its tokenizer), the device, and the engine on it, with a progress line
 * while weights upload. Caller frees with generate_session_close. */
typedef struct generate_session {
    moira_model_files_t model;
    bool placed;               /* --topology or --plan: the layers run as placed */
    run_placement_t placement; /* valid when placed */
    moira_engine_placement_t engine_placement;
    run_progress_context_t progress; /* the upload's progress line (the engine keeps a pointer) */
    moira_engine_t *engine;
    moira_device_t *device; /* borrowed: the engine's device (the placement's home, if placed) */
    moira_sampling_t sampling;
} generate_session_t;

moira_status_t generate_session_open(const char *verb, const generate_options_t *o,
                                     generate_session_t *out);

/* generate_session_open in two halves: the model directory (quick: files checked and mapped, the
 * tokenizer loaded), then the devices and the engine (slow: weights upload). The server answers
 * HTTP between the two. After a failure of either, close the session. */
moira_status_t generate_session_open_model(const generate_options_t *o, generate_session_t *out);
moira_status_t generate_session_start_engine(const char *verb, const generate_options_t *o,
                                             generate_session_t *session);
void generate_session_close(generate_session_t *session);

/* The generation request's common part: sampling, stops and the token limit for a prompt of
 * n_prompt tokens (the rest of the context when --max-tokens is not given). */
moira_generation_request_t generate_request(const generate_options_t *o,
                                            const generate_session_t *session,
                                            const int32_t *prompt, int64_t n_prompt);

#endif
