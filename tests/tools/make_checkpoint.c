/* moira-test-checkpoint: writes a seeded random DeepSeek checkpoint in the Hugging Face layout
 * (ops/random_checkpoint.h) for the end-to-end generation tests. A test tool: built with the
 * tests, never installed. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/random_checkpoint.h"
#include "tests/tools/tool_args.h"

#define TOOL "moira-test-checkpoint"

static const char usage[] =
    "usage: " TOOL " --out DIR --dtype bf16|f32|fp8 [--preset v3-tiny|v2-lite] [--shards N]\n"
    "       [--layers L] [--vocab V] [--hidden D] [--seed S] [--tokenizer DIR] [--mtp]\n"
    "\n"
    "Writes a new directory holding a random DeepSeek checkpoint exactly as Hugging Face ships\n"
    "one: config.json, generation_config.json, model.safetensors (or N shards and\n"
    "model.safetensors.index.json), and with --tokenizer the tokenizer.json and\n"
    "tokenizer_config.json of DIR. The same seed gives the same values in every dtype.\n"
    "\n"
    "  --preset NAME    v3-tiny (default: DeepSeek-V3 in miniature, 3 layers, vocabulary 129280)\n"
    "                   or v2-lite (DeepSeek-V2-Lite's real sizes, 2 layers unless --layers)\n"
    "  --dtype T        bf16, f32, or fp8 (e4m3 with 128x128 block scales, as DeepSeek-V3)\n"
    "  --shards N       split the weights over N files (default 1: model.safetensors)\n"
    "  --layers L       decoder layers (num_hidden_layers)\n"
    "  --vocab V        vocabulary size (must cover the tokenizer's ids)\n"
    "  --hidden D       hidden size\n"
    "  --seed S         generator seed (default 0)\n"
    "  --tokenizer DIR  copy DIR/tokenizer.json and DIR/tokenizer_config.json\n"
    "  --mtp            add one MTP layer (num_nextn_predict_layers 1) that engines must skip\n";

/* The option values, applied over the preset once all are read. */
typedef struct options {
    const char *out;
    const char *dtype;
    const char *preset;
    const char *tokenizer;
    long long shards, layers, vocab, hidden, seed;
    bool mtp;
} options_t;

static bool parse_dtype(const char *name, moira_dtype_t *out) {
    if (!strcmp(name, "bf16"))
        *out = MOIRA_DTYPE_BF16;
    else if (!strcmp(name, "f32"))
        *out = MOIRA_DTYPE_F32;
    else if (!strcmp(name, "fp8"))
        *out = MOIRA_DTYPE_F8_E4M3;
    else
        return false;
    return true;
}

/* Reads argv into `o`; returns -1 to go on, else the exit code (0 for --help, 2 for bad usage). */
static int parse_options(int argc, char **argv, options_t *o) {
    enum { OPT_OUT = 256, OPT_DTYPE, OPT_PRESET, OPT_SHARDS, OPT_LAYERS, OPT_VOCAB, OPT_HIDDEN };
    enum { OPT_SEED = 300, OPT_TOKENIZER, OPT_MTP };
    static const struct option long_options[] = {
        {"out", required_argument, NULL, OPT_OUT},
        {"dtype", required_argument, NULL, OPT_DTYPE},
        {"preset", required_argument, NULL, OPT_PRESET},
        {"shards", required_argument, NULL, OPT_SHARDS},
        {"layers", required_argument, NULL, OPT_LAYERS},
        {"vocab", required_argument, NULL, OPT_VOCAB},
        {"hidden", required_argument, NULL, OPT_HIDDEN},
        {"seed", required_argument, NULL, OPT_SEED},
        {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
        {"mtp", no_argument, NULL, OPT_MTP},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", long_options, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'h':
            fputs(usage, stdout);
            return 0;
        case OPT_OUT:
            o->out = optarg;
            break;
        case OPT_DTYPE:
            o->dtype = optarg;
            break;
        case OPT_PRESET:
            o->preset = optarg;
            break;
        case OPT_TOKENIZER:
            o->tokenizer = optarg;
            break;
        case OPT_MTP:
            o->mtp = true;
            break;
        case OPT_SHARDS:
            ok = moira_tool_parse_int(TOOL, "--shards", optarg, 1, 99999, &o->shards);
            break;
        case OPT_LAYERS:
            ok = moira_tool_parse_int(TOOL, "--layers", optarg, 1, 4096, &o->layers);
            break;
        case OPT_VOCAB:
            ok = moira_tool_parse_int(TOOL, "--vocab", optarg, 2, 1 << 24, &o->vocab);
            break;
        case OPT_HIDDEN:
            ok = moira_tool_parse_int(TOOL, "--hidden", optarg, 1, 1 << 16, &o->hidden);
            break;
        case OPT_SEED:
            ok = moira_tool_parse_int(TOOL, "--seed", optarg, 0, INT64_MAX, &o->seed);
            break;
        case ':':
            return moira_tool_usage_error(TOOL, "%s needs a value", argv[optind - 1]);
        default:
            return moira_tool_usage_error(TOOL, "unknown option %s", argv[optind - 1]);
        }
        if (!ok) return 2;
    }
    if (optind < argc)
        return moira_tool_usage_error(TOOL, "unexpected argument \"%s\"", argv[optind]);
    if (!o->out) return moira_tool_usage_error(TOOL, "--out DIR is required");
    if (!o->dtype) return moira_tool_usage_error(TOOL, "--dtype bf16|f32|fp8 is required");
    return -1;
}

/* The preset with the options laid over it. Returns -1 to go on, else the exit code. */
static int make_spec(const options_t *o, moira_random_checkpoint_spec_t *spec) {
    moira_status_t status = moira_random_checkpoint_preset(o->preset ? o->preset : "v3-tiny", spec);
    if (status) {
        moira_tool_usage_error(TOOL, "--preset: %s", moira_status_message(status));
        moira_status_free(status);
        return 2;
    }
    if (!parse_dtype(o->dtype, &spec->dtype))
        return moira_tool_usage_error(TOOL, "--dtype takes bf16, f32 or fp8, got \"%s\"", o->dtype);
    if (o->shards) spec->n_shards = (int)o->shards;
    if (o->layers) spec->config.num_hidden_layers = o->layers;
    if (o->vocab) spec->config.vocab_size = o->vocab;
    if (o->hidden) spec->config.hidden_size = o->hidden;
    spec->seed = (uint64_t)o->seed;
    spec->tokenizer = o->tokenizer;
    spec->mtp_layers = o->mtp ? 1 : 0;
    /* A vocabulary smaller than the preset's special ids keeps them inside it. */
    if (spec->bos_token_id >= spec->config.vocab_size) spec->bos_token_id = 0;
    if (spec->eos_token_id >= spec->config.vocab_size) spec->eos_token_id = 1;
    return -1;
}

int main(int argc, char **argv) {
    options_t o = {0};
    int rc = parse_options(argc, argv, &o);
    if (rc >= 0) return rc;
    moira_random_checkpoint_spec_t spec;
    rc = make_spec(&o, &spec);
    if (rc >= 0) return rc;
    moira_status_t status = moira_random_checkpoint_write(&spec, o.out);
    if (status) {
        fprintf(stderr, "%s: %s: %s\n", TOOL, moira_code_name(moira_status_code(status)),
                moira_status_message(status));
        rc = moira_status_exit_code(status);
        moira_status_free(status);
        return rc;
    }
    printf("%s: %s, %lld layers%s, vocabulary %lld, hidden %lld, %s, %d shard%s, seed %llu\n",
           o.out, spec.config.name, (long long)spec.config.num_hidden_layers,
           spec.mtp_layers ? " + 1 MTP" : "", (long long)spec.config.vocab_size,
           (long long)spec.config.hidden_size, o.dtype, spec.n_shards,
           spec.n_shards == 1 ? "" : "s", (unsigned long long)spec.seed);
    return 0;
}
