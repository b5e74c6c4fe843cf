/* `moira generate`: one prompt (text, a file, or a conversation through the chat template) to
 * its continuation, streamed, or as one JSON object with the ids and speeds. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/atomic_file.h"
#include "runtime/cli/cli.h"
#include "runtime/cli/generate.h"
#include "runtime/cluster/cluster.h"
#include "runtime/json_string.h"
#include "runtime/read_file.h"
#include "runtime/safetensors.h"
#include "runtime/text/chat.h"

#define VERB "generate"
#define MAX_PROMPT_BYTES (64u << 20)

typedef struct generate_args {
    generate_options_t common;
    const char *prompt, *prompt_file, *messages, *logits_out, *record_profile;
    bool json;
} generate_args_t;

static void print_help(void) {
    printf("usage: moira generate --model DIR [--prompt TEXT | --prompt-file F | --messages "
           "F.json]\n"
           "                      [--max-tokens N] [--temperature T] [--top-p P] [--top-k K]\n"
           "                      [--seed S] [--stop STR]... [--backend DEVICE] [--json]\n\n"
           "Continues a prompt with the model. Without --json the text is printed as it is\n"
           "generated and the speeds go to stderr.\n\n"
           "  --prompt TEXT      the prompt, tokenized as Hugging Face does (BOS first when\n"
           "                     the tokenizer adds one); without a prompt option, all of stdin\n"
           "  --prompt-file F    the prompt from a file\n"
           "  --messages F.json  a JSON list of {role, content}, rendered with the model's chat\n"
           "                     template and the assistant's opening\n"
           "  --json             one JSON object: prompt_ids, ids, text, finish_reason\n"
           "                     (stop|length), prefill_tokens_per_s, decode_tokens_per_s\n"
           "  --logits-out F     also write the logits each token was chosen from, `logits` F32\n"
           "                     [steps, vocab], and the ids, `ids` I32 [steps], to safetensors F\n"
           "                     (for moira compare against a PyTorch dump)\n"
           "  --record-profile F  write the tokens routed to each expert over the generation\n"
           "                     (prompt and generated tokens) as a load profile for moira plan\n"
           "                     --profile; with a placement also each device's measured speed\n");
    generate_print_common_help(true);
    printf("\nexit codes: 0 success, 1 a device failed, 2 bad usage or bad input (a model\n"
           "Moira does not implement, malformed files, a prompt longer than the context)\n");
}

static int parse_args(int argc, char **argv, generate_args_t *a) {
    for (int i = 1; i < argc; i++) {
        int common = generate_parse_option(VERB, argc, argv, &i, &a->common);
        if (common == 2) return 2;
        if (common == 1) continue;
        const char *arg = argv[i];
        const char **value = !strcmp(arg, "--prompt")           ? &a->prompt
                             : !strcmp(arg, "--prompt-file")    ? &a->prompt_file
                             : !strcmp(arg, "--messages")       ? &a->messages
                             : !strcmp(arg, "--logits-out")     ? &a->logits_out
                             : !strcmp(arg, "--record-profile") ? &a->record_profile
                                                                : NULL;
        if (value) {
            if (i + 1 >= argc) return moira_cli_usage_error(VERB, "%s needs a value", arg);
            *value = argv[++i];
        } else if (!strcmp(arg, "--json")) {
            a->json = true;
        } else if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            print_help();
            return -1;
        } else {
            return moira_cli_usage_error(VERB, "unknown option \"%s\"", arg);
        }
    }
    if (!a->common.model) return moira_cli_usage_error(VERB, "--model DIR is required");
    if ((a->prompt != NULL) + (a->prompt_file != NULL) + (a->messages != NULL) > 1)
        return moira_cli_usage_error(VERB, "--prompt, --prompt-file and --messages exclude each "
                                           "other");
    return 0;
}

/* A conversation file rendered through the chat template, as apply_chat_template would. */
static moira_status_t render_messages(const generate_args_t *a, const moira_tokenizer_t *tok,
                                      char **out_text, size_t *out_len) {
    char *file;
    size_t len;
    MOIRA_RETURN_IF_ERROR(
        moira_read_file(a->messages, "messages file", MAX_PROMPT_BYTES, &file, &len));
    json_error_t error;
    json_t *messages = json_loadb(file, len, 0, &error);
    free(file);
    if (!messages)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, a->messages, error.line, error.column,
                               "not valid JSON: %s", error.text);
    moira_status_t status = moira_chat_check_messages(messages, a->messages);
    if (!status)
        status = moira_chat_render(tok, a->common.chat_format, messages, true, out_text, out_len);
    json_decref(messages);
    return status;
}

/* The prompt's ids: a conversation's rendering carries its own BOS; plain text gets the
 * tokenizer's framing. */
static moira_status_t prompt_ids(const generate_args_t *a, const moira_tokenizer_t *tok,
                                 moira_token_ids_t *ids) {
    char *text = NULL;
    size_t len = 0;
    bool conversation = a->messages != NULL;
    moira_status_t status = MOIRA_OK_STATUS;
    if (conversation)
        status = render_messages(a, tok, &text, &len);
    else if (a->prompt_file)
        status = moira_read_file(a->prompt_file, "prompt file", MAX_PROMPT_BYTES, &text, &len);
    else if (!a->prompt)
        status = moira_read_file("/dev/stdin", "prompt on stdin", MAX_PROMPT_BYTES, &text, &len);
    if (!status)
        status = moira_tokenizer_encode(tok, a->prompt ? a->prompt : text,
                                        a->prompt ? strlen(a->prompt) : len, !conversation, ids);
    free(text);
    return status;
}

static bool print_text(void *context, const char *text, size_t len) {
    (void)context;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return !ferror(stdout);
}

static double per_second(int64_t tokens, double seconds) {
    return seconds > 0 ? (double)tokens / seconds : 0;
}

static void print_ids(const char *key, const int32_t *ids, size_t n) {
    printf("\"%s\": [", key);
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? ", " : "", ids[i]);
    printf("]");
}

static void print_json(const moira_token_ids_t *prompt, const moira_generation_result_t *r) {
    printf("{");
    print_ids("prompt_ids", prompt->ids, prompt->count);
    printf(", ");
    print_ids("ids", r->ids.ids, r->ids.count);
    printf(", \"text\": ");
    moira_json_write_stringn(stdout, r->text, r->text_len);
    printf(", \"finish_reason\": \"%s\", \"prefill_tokens_per_s\": %.3f, "
           "\"decode_tokens_per_s\": %.3f}\n",
           r->finish_reason, per_second(r->prefill_tokens, r->prefill_s),
           per_second(r->decode_tokens, r->decode_s));
}

/* Every step's logits, kept for --logits-out. */
typedef struct logits_log {
    float *values;
    int64_t steps, capacity, vocab;
} logits_log_t;

static moira_status_t keep_logits(void *context, const float *logits, int64_t vocab) {
    logits_log_t *log = context;
    if (log->steps == log->capacity) {
        int64_t capacity = log->capacity ? 2 * log->capacity : 16;
        float *grown = realloc(log->values, (size_t)(capacity * vocab) * sizeof(float));
        if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "logits: out of memory");
        log->values = grown;
        log->capacity = capacity;
    }
    log->vocab = vocab;
    memcpy(log->values + log->steps * vocab, logits, (size_t)vocab * sizeof(float));
    log->steps++;
    return MOIRA_OK_STATUS;
}

/* logits [steps, vocab] and ids [steps], whole or not at all. */
static moira_status_t write_logits(const char *path, const logits_log_t *log,
                                   const moira_token_ids_t *ids) {
    int64_t logits_shape[2] = {log->steps, log->vocab}, ids_shape[1] = {log->steps};
    moira_tensor_t logits = moira_tensor_view(MOIRA_DTYPE_F32, 2, logits_shape, log->values);
    moira_tensor_t chosen = moira_tensor_view(MOIRA_DTYPE_I32, 1, ids_shape, ids->ids);
    moira_named_tensor_t tensors[] = {{"logits", &logits}, {"ids", &chosen}};
    return moira_safetensors_write(path, tensors, 2);
}

/* The profile of what the generation routed, with each expert device's speed when placed;
 * written whole or not at all. */
static moira_status_t write_profile(const char *path, const generate_session_t *s) {
    moira_profile_t profile;
    MOIRA_RETURN_IF_ERROR(
        moira_profile_from_totals(&s->model.config, moira_engine_expert_load(s->engine), &profile));
    moira_status_t status = MOIRA_OK_STATUS;
    const moira_exec_stats_t *stats = moira_engine_placement_stats(s->engine);
    if (stats && s->placed)
        status = moira_exec_stats_add_speeds(stats, &s->placement.topology, &profile);
    moira_atomic_file_t file;
    memset(&file, 0, sizeof(file));
    if (!status) status = moira_atomic_open(path, &file);
    if (!status)
        status = moira_profile_write_stream(&profile, s->model.config.name, path, file.stream);
    if (!status)
        status = moira_atomic_commit(&file);
    else
        moira_atomic_abort(&file);
    moira_profile_free(&profile);
    return status;
}

static moira_status_t run(const generate_args_t *a) {
    generate_session_t s;
    generate_options_t common = a->common;
    common.record_expert_load = a->record_profile != NULL;
    moira_status_t status = generate_session_open_model(&common, &s);
    /* The prompt before the weights: reading it (stdin, a large file) may take a while, and under
     * mpirun the other ranks start waiting for steps once the engine is up. Only rank 0 reads it.
     */
    moira_cluster_t *cluster = moira_cluster_current();
    bool reads_prompt = !cluster || moira_cluster_rank(cluster) == 0;
    moira_token_ids_t prompt = {0};
    if (!status && reads_prompt) status = prompt_ids(a, s.model.tokenizer, &prompt);
    if (!status) status = generate_session_start_engine(VERB, &common, &s);
    if (!status && !moira_engine_leads(s.engine)) {
        /* Another host's rank (mpirun): it serves its experts while rank 0 generates. */
        status = moira_engine_follow(s.engine);
        generate_session_close(&s);
        return status;
    }
    moira_generation_result_t result;
    memset(&result, 0, sizeof(result));
    logits_log_t log = {0};
    if (!status) {
        moira_generation_request_t r =
            generate_request(&a->common, &s, prompt.ids, (int64_t)prompt.count);
        if (a->logits_out) {
            r.on_logits = keep_logits;
            r.logits_context = &log;
        }
        status =
            moira_generate(s.engine, &s.model, 0, &r, a->json ? NULL : print_text, NULL, &result);
    }
    if (!status) moira_engine_release(s.engine); /* the other ranks' figures, for the profile */
    if (!status && a->logits_out) status = write_logits(a->logits_out, &log, &result.ids);
    if (!status && a->record_profile) status = write_profile(a->record_profile, &s);
    free(log.values);
    if (!status && a->json) print_json(&prompt, &result);
    if (!status && !a->json) {
        printf("\n");
        fprintf(stderr,
                "moira: %zu prompt tokens at %.1f tokens/s, %zu generated at %.1f tokens/s "
                "(%s)\n",
                prompt.count, per_second(result.prefill_tokens, result.prefill_s), result.ids.count,
                per_second(result.decode_tokens, result.decode_s), result.finish_reason);
    }
    moira_generation_result_free(&result);
    moira_token_ids_free(&prompt);
    generate_session_close(&s);
    return status;
}

int moira_cli_generate(int argc, char **argv) {
    generate_args_t a;
    memset(&a, 0, sizeof(a));
    a.common.max_tokens = -1;
    int code = parse_args(argc, argv, &a);
    if (code) return code < 0 ? 0 : code;
    return moira_status_report(run(&a));
}
