/* `moira bench NAME`: a table of named benchmarks (runtime/cli/bench.h), each measuring Moira and
 * its peer in the same run (DESIGN.md §7). This file parses the shared options and dispatches. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "runtime/cli/bench.h"
#include "runtime/cli/cli.h"
#include "runtime/cluster/cluster.h"

typedef struct bench {
    const char *name;
    int (*run)(const moira_bench_args_t *args);
    const char *summary;
} bench_t;

static const bench_t benches[] = {
    {"plan", moira_bench_plan,
     "plan DeepSeek-V3 on 8 hosts x 8 GPUs with 64 redundant experts; compare with EPLB"},
    {"moe", moira_bench_moe,
     "dispatch + grouped SwiGLU FFN + combine, 1/16/128/512 tokens, f32 and bf16 weights,\n"
     "         against a per-expert OpenBLAS loop (cpu) or CLBlast SGEMM loop (opencl)"},
    {"mla", moira_bench_mla,
     "absorbed decode attention, 1 and 8 tokens over a 1K/4K/16K latent cache (f32 and\n"
     "         bf16), against the STREAM triad and the roofline of the FMA peak and read\n"
     "         bandwidth measured in the same run (opencl also: absorbed projections against\n"
     "         CLBlast)"},
    {"linear", moira_bench_linear,
     "dense projections (q, kv_a, kv_b, o, lm_head), 1/8/64/512 tokens, f32 and bf16 weights:\n"
     "         decode against the read bandwidth, prefill against an OpenBLAS sgemm (cpu)"},
    {"generate", moira_bench_generate,
     "a DeepSeek-V2-Lite-shaped model (3 layers, bf16 and f32, or --model DIR): prefill\n"
     "         tokens/s at 512 tokens, decode at 1 and 8 sequences, against PyTorch eager\n"
     "         (bench/generate.sh) and decode against its weight-bandwidth bound"},
    {"serve", moira_bench_serve,
     "moira serve under 1, 4 and 16 streaming clients (512-token prompts, 128 tokens each,\n"
     "         or --model DIR): aggregate decode tokens/s against one client's, TTFT and\n"
     "         inter-token latency p50/p99"},
    {"alltoall", moira_bench_alltoall,
     "the expert exchange between hosts on 2 ranks of this machine (starts mpirun): dispatch\n"
     "         + combine per MoE layer against message size, against memcpy of the same bytes,\n"
     "         and the share of a layer's time in communication at 1, 16 and 512 tokens"},
    {"tokenize", moira_bench_tokenize,
     "load a model directory's tokenizer and encode a text (--model DIR --text FILE);\n"
     "         bench/tokenize.sh runs it against Hugging Face's tokenizers.js"},
};

double moira_bench_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Lists the benches from the table, so a new bench documents itself. */
static void print_bench_help(FILE *out) {
    fprintf(out,
            "usage: moira bench NAME [--backend DEVICE] [--model FILE] [--tokens N] [--iters N]\n"
            "                        [--dtype NAME] [--json]\n\nbenches:\n");
    for (size_t i = 0; i < sizeof(benches) / sizeof(benches[0]); i++)
        fprintf(out, "  %-8s %s\n", benches[i].name, benches[i].summary);
    fprintf(out, "\n  --backend DEVICE  device for moe, mla, linear and generate (default cpu:0)\n"
                 "  --model FILE      model config for the shape (moe, mla and linear default: "
                 "DeepSeek-V2-Lite;\n"
                 "                    plan: DeepSeek-V3); generate: a model folder to run instead\n"
                 "                    of the written ones\n"
                 "  --tokens N        tokens per batch (moe: only N instead of 1, 16, 128, 512;\n"
                 "                    mla: only N instead of 1, 8;\n"
                 "                    linear: only N instead of 1, 8, 64, 512;\n"
                 "                    generate: the prefill prompt, default 512)\n"
                 "  --text FILE       the text tokenize encodes\n"
                 "  --dtype NAME      moe: only this weight format (f32, bf16, mxfp4, int8)\n"
                 "                    instead of every one the device computes\n"
                 "  --iters N         timed rounds, best kept\n"
                 "  --json            one JSON object (moe, mla, linear, generate: "
                 "{\"rows\": [...]})\n");
}

int moira_cli_bench(int argc, char **argv) {
    static const struct option options[] = {{"backend", required_argument, NULL, 'b'},
                                            {"model", required_argument, NULL, 'm'},
                                            {"tokens", required_argument, NULL, 't'},
                                            {"iters", required_argument, NULL, 'i'},
                                            {"text", required_argument, NULL, 'x'},
                                            {"json", no_argument, NULL, 'j'},
                                            {"dtype", required_argument, NULL, 'd'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    moira_bench_args_t args = {0};
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (c) {
        case 'b':
            args.backend = optarg;
            break;
        case 'm':
            args.model = optarg;
            break;
        case 'x':
            args.text = optarg;
            break;
        case 'd':
            args.dtype = optarg;
            break;
        case 'j':
            args.json = true;
            break;
        case 't':
            if (!moira_cli_parse_int("bench", "--tokens", optarg, 1, 1LL << 30, &args.tokens))
                return 2;
            break;
        case 'i':
            if (!moira_cli_parse_int("bench", "--iters", optarg, 1, 1000, &args.iters)) return 2;
            break;
        case 'h':
            print_bench_help(stdout);
            return 0;
        default:
            return moira_cli_usage_error("bench", "unknown option \"%s\"", argv[optind - 1]);
        }
    }
    if (optind != argc - 1) return moira_cli_usage_error("bench", "give one bench NAME");
    moira_cluster_t *cluster = moira_cluster_current();
    if (cluster && moira_cluster_size(cluster) > 1 && strcmp(argv[optind], "alltoall")) {
        if (moira_cluster_rank(cluster) == 0)
            fprintf(stderr,
                    "moira bench %s: runs on one host; under mpirun only the alltoall "
                    "bench spreads over several ranks\n",
                    argv[optind]);
        return 2;
    }
    for (size_t i = 0; i < sizeof(benches) / sizeof(benches[0]); i++)
        if (!strcmp(argv[optind], benches[i].name)) return benches[i].run(&args);
    return moira_cli_usage_error("bench", "unknown bench \"%s\"", argv[optind]);
}
