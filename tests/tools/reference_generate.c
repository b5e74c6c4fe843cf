/* moira-test-reference: greedy generation by the fp64 whole-model reference
 * (tests/tools/reference_model.h), the independent answer `moira generate` is checked against.
 * A test tool: built with the tests, never installed. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/safetensors.h"
#include "tests/tools/reference_model.h"
#include "tests/tools/tool_args.h"

#define TOOL "moira-test-reference"

static const char usage[] =
    "usage: " TOOL " --model DIR --ids ID,ID,... [--max-tokens N] [--ignore-eos] [--json]\n"
    "       [--logits-out F.safetensors]\n"
    "\n"
    "Greedy-generates from the prompt ids with the fp64 reference of the whole model (no engine,\n"
    "no device code): every step reruns the whole sequence through every decoder layer and takes\n"
    "the argmax of the last position's logits (the lower id on a tie). Stops after N tokens\n"
    "(default 16) or after config.json's eos_token_id (included in the ids) unless --ignore-eos.\n"
    "\n"
    "Per step it prints the id and how clearly it won:\n"
    "  gap        the largest logit minus the second largest\n"
    "  margin     the smallest relative error of the final hidden state (|dx|/|x|) that can make\n"
    "             another token win: an engine closer than this to the reference picks the same\n"
    "             token (bf16 activations are ~4e-3 off, f32 ~1e-6)\n"
    "  sum_sq     the logits' sum of squares, the denominator of an NMSE against them\n"
    "  flip_nmse  gap^2 / (2 sum_sq): an engine whose logits are within this NMSE of these\n"
    "             picks the same token\n"
    "\n"
    "  --json             print {\"ids\":[...],\"gaps\":[...],\"margins\":[...],\"sum_sq\":[...],\n"
    "                     \"flip_nmse\":[...],\"finish_reason\":\"stop\"|\"length\"}\n"
    "  --logits-out FILE  write the last position's logits per step, logits F32 [steps, vocab],\n"
    "                     and the chosen ids, ids I32 [steps]\n";

typedef struct options {
    const char *model;
    const char *ids_text;
    const char *logits_out;
    long long max_tokens;
    bool json;
    bool ignore_eos;
} options_t;

/* Reads argv into `o`; returns -1 to go on, else the exit code (0 for --help, 2 for bad usage). */
static int parse_options(int argc, char **argv, options_t *o) {
    enum { OPT_MODEL = 256, OPT_IDS, OPT_MAX_TOKENS, OPT_JSON, OPT_LOGITS_OUT, OPT_IGNORE_EOS };
    static const struct option long_options[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"ids", required_argument, NULL, OPT_IDS},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"json", no_argument, NULL, OPT_JSON},
        {"logits-out", required_argument, NULL, OPT_LOGITS_OUT},
        {"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    o->max_tokens = 16;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(usage, stdout);
            return 0;
        case OPT_MODEL:
            o->model = optarg;
            break;
        case OPT_IDS:
            o->ids_text = optarg;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_LOGITS_OUT:
            o->logits_out = optarg;
            break;
        case OPT_IGNORE_EOS:
            o->ignore_eos = true;
            break;
        case OPT_MAX_TOKENS:
            if (!moira_tool_parse_int(TOOL, "--max-tokens", optarg, 1, 1 << 16, &o->max_tokens))
                return 2;
            break;
        case ':':
            return moira_tool_usage_error(TOOL, "%s needs a value", argv[optind - 1]);
        default:
            return moira_tool_usage_error(TOOL, "unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return moira_tool_usage_error(TOOL, "unexpected argument \"%s\"", argv[optind]);
    if (!o->model) return moira_tool_usage_error(TOOL, "--model DIR is required");
    if (!o->ids_text) return moira_tool_usage_error(TOOL, "--ids ID,ID,... is required");
    return -1;
}

/* The steps of one generation: what --json and --logits-out report. */
typedef struct generation {
    moira_ref_step_t *steps; /* owned; capacity max_tokens */
    double *margins;         /* owned; capacity max_tokens: moira_ref_model_margin per step */
    float *logits;           /* owned; [max_tokens, vocab] when --logits-out, else NULL */
    int64_t count;
    bool stopped; /* ended at eos */
} generation_t;

/* gap^2 / (2 sum_sq): the smallest NMSE of a logit error that can swap the top two logits. */
static double flip_nmse(const moira_ref_step_t *s) {
    return s->gap * s->gap / (2 * s->sum_sq);
}

/* Runs the greedy loop: `ids` (owned by the caller, room for n + max_tokens) grows by one id per
 * step. */
static moira_status_t generate(const moira_ref_model_t *m, const options_t *o, int32_t *ids,
                               int64_t n, generation_t *g) {
    double *logits = malloc((size_t)m->vocab * sizeof(*logits));
    float *hidden = malloc((size_t)m->config.hidden_size * sizeof(*hidden));
    moira_status_t status = MOIRA_OK_STATUS;
    if (!logits || !hidden)
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "reference: logits");
    while (!status && g->count < o->max_tokens && !g->stopped) {
        status = moira_ref_model_logits(m, ids, n + g->count, logits, hidden);
        moira_ref_step_t step = moira_ref_greedy(logits, m->vocab);
        if (!status)
            status = moira_ref_model_margin(m, logits, hidden, step.id, &g->margins[g->count]);
        if (status) break;
        g->steps[g->count] = step;
        if (g->logits)
            for (int64_t v = 0; v < m->vocab; v++)
                g->logits[g->count * m->vocab + v] = (float)logits[v];
        ids[n + g->count] = step.id;
        if (!o->json)
            printf("step %lld: id %d gap %.6g margin %.3g sum_sq %.6g flip_nmse %.3g\n",
                   (long long)g->count, step.id, step.gap, g->margins[g->count], step.sum_sq,
                   flip_nmse(&step));
        g->count++;
        g->stopped = !o->ignore_eos && step.id == m->eos_token_id;
    }
    free(logits);
    free(hidden);
    return status;
}

/* One JSON array of the steps' values, `field` picking which. */
static void print_array(const char *key, const generation_t *g, int field) {
    printf("\"%s\":[", key);
    for (int64_t i = 0; i < g->count; i++) {
        const moira_ref_step_t *s = &g->steps[i];
        if (i) putchar(',');
        if (field == 0)
            printf("%d", s->id);
        else if (field == 1)
            printf("%.17g", s->gap);
        else if (field == 2)
            printf("%.17g", g->margins[i]);
        else if (field == 3)
            printf("%.17g", s->sum_sq);
        else
            printf("%.17g", flip_nmse(s));
    }
    putchar(']');
}

static void print_result(const options_t *o, const generation_t *g, const int32_t *ids, int64_t n) {
    const char *finish = g->stopped ? "stop" : "length";
    if (o->json) {
        static const char *const keys[] = {"ids", "gaps", "margins", "sum_sq", "flip_nmse"};
        putchar('{');
        for (int field = 0; field < 5; field++) {
            print_array(keys[field], g, field);
            putchar(',');
        }
        printf("\"finish_reason\":\"%s\"}\n", finish);
        return;
    }
    printf("ids:");
    for (int64_t i = 0; i < g->count; i++)
        printf("%s%d", i ? "," : " ", ids[n + i]);
    printf("\nfinish_reason: %s\n", finish);
}

/* logits F32 [steps, vocab] and ids I32 [steps]. */
static moira_status_t write_logits(const char *path, const generation_t *g, const int32_t *ids,
                                   int64_t vocab) {
    int64_t logits_shape[2] = {g->count, vocab}, ids_shape[1] = {g->count};
    moira_tensor_t logits = moira_tensor_view(MOIRA_DTYPE_F32, 2, logits_shape, g->logits);
    moira_tensor_t chosen = moira_tensor_view(MOIRA_DTYPE_I32, 1, ids_shape, (void *)ids);
    moira_named_tensor_t named[2] = {{"logits", &logits}, {"ids", &chosen}};
    return moira_safetensors_write(path, named, 2);
}

/* Opens, generates, prints and writes; everything it allocates is freed on every path. */
static moira_status_t run(const options_t *o) {
    moira_ref_model_t m;
    MOIRA_RETURN_IF_ERROR(moira_ref_model_open(o->model, &m));
    int32_t *prompt = NULL, *ids = NULL;
    int64_t n = 0;
    generation_t g = {0};
    moira_status_t status = moira_tool_parse_ids("--ids", o->ids_text, m.vocab - 1, &prompt, &n);
    if (status) {
        moira_ref_model_close(&m);
        return status;
    }
    ids = malloc((size_t)(n + o->max_tokens) * sizeof(*ids));
    g.steps = malloc((size_t)o->max_tokens * sizeof(*g.steps));
    g.margins = malloc((size_t)o->max_tokens * sizeof(*g.margins));
    if (o->logits_out)
        g.logits = malloc((size_t)o->max_tokens * (size_t)m.vocab * sizeof(*g.logits));
    if (!ids || !g.steps || !g.margins || (o->logits_out && !g.logits))
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "reference: generation buffers");
    if (!status) {
        memcpy(ids, prompt, (size_t)n * sizeof(*ids));
        status = generate(&m, o, ids, n, &g);
    }
    if (!status && o->logits_out) status = write_logits(o->logits_out, &g, ids + n, m.vocab);
    if (!status) print_result(o, &g, ids, n);
    free(g.steps);
    free(g.margins);
    free(g.logits);
    free(ids);
    free(prompt);
    moira_ref_model_close(&m);
    return status;
}

int main(int argc, char **argv) {
    options_t o = {0};
    int rc = parse_options(argc, argv, &o);
    if (rc >= 0) return rc;
    moira_status_t status = run(&o);
    if (!status) return 0;
    fprintf(stderr, "%s: %s: %s\n", TOOL, moira_code_name(moira_status_code(status)),
            moira_status_message(status));
    rc = moira_status_exit_code(status);
    moira_status_free(status);
    return rc;
}
