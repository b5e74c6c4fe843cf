/* `moira calibrate` (docs/cli.md): times each device of a topology on a model's own shapes and
 * writes the topology back with `measured:` figures, which the cost model then prefers to a
 * data sheet's. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/atomic_file.h"
#include "runtime/backend.h"
#include "runtime/cli/calibrate.h"
#include "runtime/cli/cli.h"
#include "runtime/distinct_paths.h"

static const char calibrate_help[] =
    "usage: moira calibrate [--topology FILE] [--model FILE] [-o TOPOLOGY.yaml] [--iters N]\n"
    "                       [--with-emulated] [--json]\n\n"
    "Times each device and NUMA node of this host's part of the topology on the model's own\n"
    "shapes - every routed expert on it at 1 token, at enough tokens to read every expert, and\n"
    "at many tokens; the home path (attention, router, shared experts) where the device can run\n"
    "it; host <-> device copies - and fits the cost model's figures to what it measured:\n"
    "launch_us + max(expert reads / bandwidth_gbs, FLOPs / tflops) per layer, link_gbs, and the\n"
    "home's launch, throughput and attention throughput. -o writes the topology with a\n"
    "measured: entry per device (docs/formats.md); moira plan, run and generate then cost with\n"
    "those figures.\n\n"
    "  --topology FILE   machine to calibrate (default: this machine, discovered)\n"
    "  --model FILE      model config whose shapes are timed (default: moira-tiny)\n"
    "  -o FILE           the topology with measured figures (written whole or not at all)\n"
    "  --iters N         timed forwards per batch size at least (default 3; more while they\n"
    "                    take under 0.25 s), the median kept\n"
    "  --with-emulated   calibrate emulated devices too (the npu emulator)\n"
    "  --json            the figures as JSON\n";

typedef struct calibrate_args {
    const char *topology, *model, *output;
    long long iters;
    bool json, with_emulated;
} calibrate_args_t;

/* Returns 0 when parsed, else the exit code (help: -1 meaning "exit 0"). */
static int parse_args(int argc, char **argv, calibrate_args_t *a) {
    static const struct option options[] = {
        {"topology", required_argument, NULL, 'T'}, {"model", required_argument, NULL, 'm'},
        {"output", required_argument, NULL, 'o'},   {"iters", required_argument, NULL, 'n'},
        {"with-emulated", no_argument, NULL, 'E'},  {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
    memset(a, 0, sizeof(*a));
    a->iters = 3;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "ho:", options, NULL)) != -1) {
        switch (c) {
        case 'T':
            a->topology = optarg;
            break;
        case 'm':
            a->model = optarg;
            break;
        case 'o':
            a->output = optarg;
            break;
        case 'n':
            if (!moira_cli_parse_int("calibrate", "--iters", optarg, 1, 64, &a->iters)) return 2;
            break;
        case 'E':
            a->with_emulated = true;
            break;
        case 'j':
            a->json = true;
            break;
        case 'h':
            fputs(calibrate_help, stdout);
            return -1;
        default:
            return moira_cli_usage_error("calibrate", "unknown option");
        }
    }
    if (optind < argc) return moira_cli_usage_error("calibrate", "unexpected \"%s\"", argv[optind]);
    return 0;
}

/* The batch sizes timed: 1 token (a few experts read), enough tokens that nearly every expert is
 * read (2 E / k: each is missed with probability about e^-2), and a large batch where compute
 * dominates. */
static int pick_points(const moira_model_config_t *model, int64_t *points) {
    int64_t k = model->num_experts_per_tok > 0 ? model->num_experts_per_tok : 1;
    int64_t all = (2 * model->n_routed_experts + k - 1) / k;
    if (all < 2) all = 2;
    if (all > 256) all = 256;
    points[0] = 1;
    points[1] = all;
    points[2] = 512;
    return 3;
}

static void print_text(const moira_topology_t *topology, const calibrate_result_t *results,
                       moira_dtype_t dtype) {
    printf("calibrated %s on %s's shapes (per MoE layer):\n", topology->name,
           moira_dtype_name(dtype));
    for (int i = 0; i < topology->n_targets; i++) {
        const calibrate_result_t *r = &results[i];
        const moira_target_t *t = &topology->targets[i];
        if (t->host != 0) continue;
        if (!r->measured) {
            printf("  %-16s skipped: %s\n", t->name, r->why);
            continue;
        }
        const moira_measured_t *f = &r->figures;
        printf("  %-16s %-10s launch %.1f us, %.3g GB/s, %.3g TFLOP/s", t->name, r->device,
               f->launch_us, f->bandwidth_gbs, f->tflops[dtype]);
        if (f->link_gbs > 0) printf(", link %.3g GB/s", f->link_gbs);
        printf(" (fit within %.2fx)", r->worst_ratio);
        if (r->home_measured)
            printf("; home launch %.1f us, %.3g TFLOP/s, attention %.3g TFLOP/s (within %.2fx)",
                   f->home_launch_us, f->home_tflops, f->home_attention_tflops,
                   r->home_worst_ratio);
        printf("\n    tokens/busy us:");
        for (int p = 0; p < r->n_points; p++)
            printf(" %g/%.1f", r->tokens[p], r->busy_us[p]);
        printf("\n");
    }
}

static void print_json(const moira_topology_t *topology, const calibrate_result_t *results,
                       moira_dtype_t dtype) {
    printf("{\"topology\": ");
    moira_cli_json_string(stdout, topology->name);
    printf(", \"dtype\": \"%s\", \"targets\": [", moira_dtype_name(dtype));
    int written = 0;
    for (int i = 0; i < topology->n_targets; i++) {
        const calibrate_result_t *r = &results[i];
        if (topology->targets[i].host != 0) continue;
        printf("%s{\"name\": ", written++ ? ", " : "");
        moira_cli_json_string(stdout, topology->targets[i].name);
        printf(", \"measured\": %s", r->measured ? "true" : "false");
        if (!r->measured) {
            printf(", \"why\": ");
            moira_cli_json_string(stdout, r->why);
            printf("}");
            continue;
        }
        const moira_measured_t *f = &r->figures;
        printf(", \"device\": ");
        moira_cli_json_string(stdout, r->device);
        printf(", \"launch_us\": %.6g, \"bandwidth_gbs\": %.6g, \"tflops\": %.6g, \"link_gbs\": "
               "%.6g, \"worst_ratio\": %.6g",
               f->launch_us, f->bandwidth_gbs, f->tflops[dtype], f->link_gbs, r->worst_ratio);
        if (r->home_measured)
            printf(", \"home_launch_us\": %.6g, \"home_tflops\": %.6g, "
                   "\"home_attention_tflops\": %.6g, \"home_worst_ratio\": %.6g",
                   f->home_launch_us, f->home_tflops, f->home_attention_tflops,
                   r->home_worst_ratio);
        printf(", \"points\": [");
        for (int p = 0; p < r->n_points; p++)
            printf("%s{\"tokens\": %g, \"busy_us\": %.6g, \"home_us\": %.6g}", p ? ", " : "",
                   r->tokens[p], r->busy_us[p], r->home_us[p]);
        printf("]}");
    }
    printf("]}\n");
}

/* What was measured replaces the target's earlier figures; a dtype not timed keeps its own. */
static void apply(moira_topology_t *topology, const calibrate_result_t *results,
                  moira_dtype_t dtype) {
    for (int i = 0; i < topology->n_targets; i++) {
        const calibrate_result_t *r = &results[i];
        if (!r->measured) continue;
        moira_measured_t *m = &topology->targets[i].measured;
        m->bandwidth_gbs = r->figures.bandwidth_gbs;
        m->tflops[dtype] = r->figures.tflops[dtype];
        m->launch_us = r->figures.launch_us;
        m->link_gbs = r->figures.link_gbs;
        if (r->home_measured) {
            m->home_launch_us = r->figures.home_launch_us;
            m->home_tflops = r->figures.home_tflops;
            m->home_attention_tflops = r->figures.home_attention_tflops;
        }
    }
}

static bool write_topology(FILE *out, void *context) {
    return moira_topology_write_stream(context, out, false);
}

/* Model and topology first (bad input stops here), then the weights, each target in turn, the
 * output. */
static moira_status_t calibrate(const calibrate_args_t *a) {
    run_model_t m;
    memset(&m, 0, sizeof(m));
    moira_topology_t topology;
    memset(&topology, 0, sizeof(topology));
    calibrate_result_t *results = NULL;
    moira_status_t status = MOIRA_OK_STATUS;
    if (a->model)
        status = moira_model_config_load(a->model, &m.config);
    else
        moira_model_config_default(&m.config);
    if (!status) status = moira_runtime_init();
    if (!status) status = moira_cli_load_topology(a->topology, a->with_emulated, &topology);
    int64_t points[CALIBRATE_MAX_POINTS];
    int n_points = pick_points(&m.config, points);
    run_args_t run_args = {.tokens = points[n_points - 1], .seed = 1};
    moira_device_t *cpu = NULL;
    if (!status) status = moira_device_find("cpu:0", &cpu);
    if (!status) status = run_model_check_fits(&m.config, &run_args, cpu);
    if (!status) status = run_model_load_inputs(&m, &run_args);
    if (!status) status = run_model_load_weights(&m, &run_args);
    if (!status) {
        results = calloc((size_t)topology.n_targets + 1, sizeof(*results));
        if (!results) status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    }
    for (int i = 0; !status && i < topology.n_targets; i++) {
        if (topology.targets[i].host != 0) { /* one process times the host it runs on */
            snprintf(results[i].why, sizeof(results[i].why), "on another host");
            continue;
        }
        status = calibrate_target(&topology, i, &m, points, n_points, (int)a->iters, &results[i]);
    }
    if (!status) {
        apply(&topology, results, m.config.weight_dtype);
        if (a->json)
            print_json(&topology, results, m.config.weight_dtype);
        else
            print_text(&topology, results, m.config.weight_dtype);
    }
    if (!status && a->output)
        status = moira_write_file_atomically(a->output, write_topology, &topology);
    free(results);
    moira_topology_free(&topology);
    run_model_release(&m);
    return status;
}

int moira_cli_calibrate(int argc, char **argv) {
    calibrate_args_t args;
    int rc = parse_args(argc, argv, &args);
    if (rc) return rc < 0 ? 0 : rc;
    const moira_path_use_t uses[] = {{"-o", args.output, true},
                                     {"--model", args.model, false},
                                     {"--topology", args.topology, false}};
    moira_status_t status = moira_check_distinct_paths(uses, 3);
    if (!status) status = calibrate(&args);
    return status ? moira_status_report(status) : 0;
}
