/* `moira plan`: decide where every expert replica lives, write the plan, draw it. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/home.h"
#include "placement/plan.h"
#include "placement/profile.h"
#include "placement/reserve.h"
#include "placement/speed.h"
#include "placement/topology.h"
#include "runtime/atomic_file.h"
#include "runtime/backend.h"
#include "runtime/cli/cli.h"
#include "runtime/distinct_paths.h"

/* Tokens in the batch a synthetic profile describes when --tokens is not given. */
#define DEFAULT_SYNTHETIC_TOKENS 4096

static const char plan_help[] =
    "usage: moira plan [--topology FILE] [--model FILE] [--profile FILE | --skew uniform|zipf:S]\n"
    "                  [--tokens N] [--redundant N] [--slots N] [-o PLAN.yaml] [--svg FILE]\n"
    "                  [--json] [--check PLAN] [--with-emulated] [--reserve GIB]\n\n"
    "Places every expert replica of every MoE layer on the topology's GPUs, NPUs and CPU NUMA\n"
    "memory so that each layer is predicted to finish as early as possible.\n\n"
    "  --topology FILE   topology YAML (default: this machine, discovered with hwloc)\n"
    "  --model FILE      model config, YAML or Hugging Face config.json (default: moira-tiny)\n"
    "  --profile FILE    expert load profile (tokens per expert per MoE layer)\n"
    "  --skew S          synthesise the profile instead: uniform (default) or zipf:S\n"
    "  --tokens N        tokens in a synthesised batch (default 4096)\n"
    "  --redundant N     extra replicas per layer for hot experts (default 0)\n"
    "  --slots N         at most N replicas per device per layer (default: memory decides)\n"
    "  -o FILE           write the plan there (else it goes to stdout)\n"
    "  --json            write the plan as JSON (same structure as the YAML)\n"
    "  --svg FILE        draw the plan: devices as columns, layers as rows\n"
    "  --with-emulated   plan for emulated devices too (the npu emulator; also when\n"
    "                    MOIRA_NPU_DEVICES is set), costed as the host CPU they run on\n"
    "  --reserve GIB     memory to leave free on each device, besides the 3% kept for\n"
    "                    workspaces and the home's weights kept in CPU memory (default 0)\n"
    "  --check PLAN      load and validate a plan against the topology instead of planning;\n"
    "                    with --model its predictions are recomputed (for the loads of\n"
    "                    --profile or --skew when given: score a plan against a new load)\n\n"
    "With -o the standard output gets a summary, including the predicted time of two naive\n"
    "placements (all experts in CPU memory; fastest device filled first) for comparison.\n";

typedef struct plan_args {
    const char *topology_path, *model_path, *profile_path, *skew, *output, *svg, *check;
    long long tokens, redundant, slots, reserve_gib;
    bool json, with_emulated;
} plan_args_t;

/* Returns 0 when parsed, else the exit code (help: -1 meaning "exit 0"). */
static int parse_args(int argc, char **argv, plan_args_t *a) {
    enum {
        OPT_TOPOLOGY = 256,
        OPT_MODEL,
        OPT_PROFILE,
        OPT_SKEW,
        OPT_TOKENS,
        OPT_REDUNDANT,
        OPT_SLOTS,
        OPT_SVG,
        OPT_JSON,
        OPT_CHECK,
        OPT_WITH_EMULATED,
        OPT_RESERVE
    };
    static const struct option options[] = {{"topology", required_argument, NULL, OPT_TOPOLOGY},
                                            {"model", required_argument, NULL, OPT_MODEL},
                                            {"profile", required_argument, NULL, OPT_PROFILE},
                                            {"skew", required_argument, NULL, OPT_SKEW},
                                            {"tokens", required_argument, NULL, OPT_TOKENS},
                                            {"redundant", required_argument, NULL, OPT_REDUNDANT},
                                            {"slots", required_argument, NULL, OPT_SLOTS},
                                            {"svg", required_argument, NULL, OPT_SVG},
                                            {"json", no_argument, NULL, OPT_JSON},
                                            {"check", required_argument, NULL, OPT_CHECK},
                                            {"with-emulated", no_argument, NULL, OPT_WITH_EMULATED},
                                            {"reserve", required_argument, NULL, OPT_RESERVE},
                                            {"output", required_argument, NULL, 'o'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    memset(a, 0, sizeof(*a));
    a->tokens = DEFAULT_SYNTHETIC_TOKENS;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "ho:", options, NULL)) != -1) {
        switch (c) {
        case OPT_TOPOLOGY:
            a->topology_path = optarg;
            break;
        case OPT_MODEL:
            a->model_path = optarg;
            break;
        case OPT_PROFILE:
            a->profile_path = optarg;
            break;
        case OPT_SKEW:
            a->skew = optarg;
            break;
        case OPT_SVG:
            a->svg = optarg;
            break;
        case OPT_JSON:
            a->json = true;
            break;
        case OPT_CHECK:
            a->check = optarg;
            break;
        case OPT_WITH_EMULATED:
            a->with_emulated = true;
            break;
        case OPT_RESERVE:
            if (!moira_cli_parse_int("plan", "--reserve", optarg, 0, 1 << 20, &a->reserve_gib))
                return 2;
            break;
        case 'o':
            a->output = optarg;
            break;
        case OPT_TOKENS:
            if (!moira_cli_parse_int("plan", "--tokens", optarg, 1, 1LL << 30, &a->tokens))
                return 2;
            break;
        case OPT_REDUNDANT:
            if (!moira_cli_parse_int("plan", "--redundant", optarg, 0, 1 << 20, &a->redundant))
                return 2;
            break;
        case OPT_SLOTS:
            if (!moira_cli_parse_int("plan", "--slots", optarg, 1, 1 << 20, &a->slots)) return 2;
            break;
        case 'h':
            fputs(plan_help, stdout);
            return -1;
        default:
            return moira_cli_usage_error("plan", "unknown option or missing value \"%s\"",
                                         argv[optind - 1]);
        }
    }
    if (optind < argc) return moira_cli_usage_error("plan", "unexpected \"%s\"", argv[optind]);
    if (a->profile_path && a->skew)
        return moira_cli_usage_error("plan", "give --profile or --skew, not both");
    if (a->check && a->output)
        return moira_cli_usage_error("plan", "--check writes no plan: leave out -o");
    if (a->check && (a->profile_path || a->skew) && !a->model_path)
        return moira_cli_usage_error("plan", "--check with --profile or --skew needs --model");
    return 0;
}

/* Predicted time per layer of a naive strategy, or a negative number when it cannot place. */
static double baseline_us(const moira_topology_t *topology, const moira_model_config_t *model,
                          const moira_profile_t *profile, moira_plan_strategy_t strategy,
                          int home) {
    moira_plan_options_t options = {0, 0, strategy};
    moira_plan_t plan;
    moira_status_t status = moira_plan_make(topology, model, profile, &options, &plan);
    if (status) {
        moira_status_free(status);
        return -1;
    }
    if (home >= 0) moira_plan_set_home(&plan, topology, model, home);
    moira_plan_summary_t summary;
    moira_plan_summarise(&plan, &summary);
    moira_plan_free(&plan);
    return summary.predicted_us_per_layer;
}

/* The predicted time next to the naive placements (negative: not placed), balance, traffic. */
static void print_prediction(FILE *out, const moira_plan_summary_t *s, double all_cpu_us,
                             double fill_fastest_us) {
    fprintf(out, "\npredicted: %.1f us per layer", s->predicted_us_per_layer);
    if (all_cpu_us >= 0 || fill_fastest_us >= 0) {
        fprintf(out, " (");
        if (all_cpu_us >= 0) fprintf(out, "all experts in CPU memory: %.1f us", all_cpu_us);
        if (all_cpu_us >= 0 && fill_fastest_us >= 0) fprintf(out, "; ");
        if (fill_fastest_us >= 0)
            fprintf(out, "fastest device filled first: %.1f us", fill_fastest_us);
        fprintf(out, ")");
    }
    fprintf(out, "\nmean max/mean load %.3f; %.0f link bytes and %.0f network bytes per token\n",
            s->max_over_mean, s->link_bytes_per_token, s->network_bytes_per_token);
}

/* Each target's share of the replicas and memory. */
static void print_devices(FILE *out, const moira_plan_t *plan, const moira_topology_t *topology) {
    fprintf(out, "%-24s %-5s %-8s %9s %12s %12s\n", "DEVICE", "KIND", "HOST_NUMA", "REPLICAS",
            "USED GiB", "MEMORY GiB");
    for (int t = 0; t < topology->n_targets; t++) {
        const moira_target_t *target = &topology->targets[t];
        int replicas = 0;
        for (int l = 0; l < plan->n_layers; l++)
            for (int r = 0; r < plan->layers[l].n_replicas; r++)
                replicas += plan->layers[l].replica_target[r] == t;
        fprintf(out, "%-24s %-5s %-8d %9d %12.2f %12.2f\n", target->name,
                moira_target_kind_name(target->kind), target->numa, replicas,
                (double)moira_plan_target_used_bytes(plan, t) / 1073741824.0,
                (double)target->memory_bytes / 1073741824.0);
    }
}

/* The summary printed when the plan goes to a file: the prediction next to the two naive
 * placements, balance, traffic, and each target's share of the replicas and memory. Figures the
 * cost model did not compute here (`predicted` false: a checked plan without --model) are left
 * out rather than echoed from the file. */
static void print_summary(FILE *out, const moira_plan_t *plan, const moira_topology_t *topology,
                          bool predicted, double all_cpu_us, double fill_fastest_us) {
    moira_plan_summary_t s;
    moira_plan_summarise(plan, &s);
    fprintf(out,
            "plan: %s on %s: %d MoE layers, %lld experts in %.1f replicas per layer (%lld "
            "redundant allowed)",
            plan->model, plan->topology, plan->n_layers, (long long)plan->experts,
            s.replicas_per_layer, (long long)plan->redundant);
    if (plan->slots > 0) fprintf(out, ", at most %lld per device", (long long)plan->slots);
    if (!predicted)
        fprintf(out, "\npredictions: not computed (give --model, and --profile or --skew to "
                     "score another load)\n");
    else
        print_prediction(out, &s, all_cpu_us, fill_fastest_us);
    print_devices(out, plan, topology);
}

/* The plan file (-o, not with --check) and its picture (--svg) are written together: both
 * temporaries are filled before either is renamed into place, and a failed second rename puts
 * the first back, so a failure in either (a missing folder, a full disk) leaves neither new. */
static moira_status_t write_outputs(const plan_args_t *a, const moira_plan_t *plan,
                                    const moira_topology_t *topology,
                                    const moira_model_config_t *model) {
    const char *plan_path = a->check ? NULL : a->output;
    moira_atomic_file_t plan_file, svg_file;
    memset(&plan_file, 0, sizeof(plan_file));
    memset(&svg_file, 0, sizeof(svg_file));
    moira_status_t status = MOIRA_OK_STATUS;
    if (plan_path) status = moira_atomic_open(plan_path, &plan_file);
    if (!status && a->svg) status = moira_atomic_open(a->svg, &svg_file);
    if (!status && plan_path)
        status = moira_plan_write_stream(plan, topology, plan_file.stream, a->json);
    if (!status && a->svg)
        status = moira_plan_write_svg_stream(plan, topology, model, svg_file.stream);
    moira_atomic_file_t files[2] = {plan_file, svg_file};
    if (!status) return moira_atomic_commit_all(files, 2);
    moira_atomic_abort(&plan_file);
    moira_atomic_abort(&svg_file);
    return status;
}

/* Tokens in the profile's batch: its first layer's load over k. */
static double profile_tokens(const moira_profile_t *profile, const moira_model_config_t *model) {
    double load = 0;
    for (int64_t e = 0; profile->n_layers > 0 && e < profile->experts; e++)
        load += profile->load[e];
    return model->num_experts_per_tok > 0 ? load / (double)model->num_experts_per_tok : 0;
}

/* The profile --profile or --skew describes (uniform over --tokens when neither is given). */
static moira_status_t make_profile(const plan_args_t *a, const moira_model_config_t *model,
                                   moira_topology_t *topology, moira_profile_t *out) {
    MOIRA_RETURN_IF_ERROR(
        a->profile_path
            ? moira_profile_load(a->profile_path, model, out)
            : moira_profile_synthesise(model, a->skew ? a->skew : "uniform", a->tokens, out));
    /* A recorded run's speeds: each device is costed as fast as it really ran. */
    moira_topology_apply_speeds(topology, out, stderr);
    return MOIRA_OK_STATUS;
}

/* --check with --model: the plan must be for the model; its predictions are recomputed, for the
 * loads of --profile or --skew when given (or when the plan gives none). */
static moira_status_t rescore(const plan_args_t *a, moira_plan_t *plan, moira_topology_t *topology,
                              const moira_model_config_t *model) {
    MOIRA_RETURN_IF_ERROR(moira_plan_check_model(plan, model, a->check));
    if (a->profile_path || a->skew || !moira_plan_has_load(plan)) {
        moira_profile_t profile;
        MOIRA_RETURN_IF_ERROR(make_profile(a, model, topology, &profile));
        moira_status_t status = moira_plan_apply_profile(plan, &profile);
        moira_profile_free(&profile);
        MOIRA_RETURN_IF_ERROR(status);
    }
    moira_plan_evaluate(plan, topology, model);
    return MOIRA_OK_STATUS;
}

/* Loads the inputs, plans (or checks a plan), writes what was asked for. */
static moira_status_t run_plan(const plan_args_t *a) {
    moira_topology_t topology;
    MOIRA_RETURN_IF_ERROR(moira_cli_load_topology(a->topology_path, a->with_emulated, &topology));
    moira_status_t status = MOIRA_OK_STATUS;
    moira_model_config_t model;
    if (a->model_path)
        status = moira_model_config_load(a->model_path, &model);
    else
        moira_model_config_default(&model);
    moira_profile_t profile;
    memset(&profile, 0, sizeof(profile));
    moira_plan_t plan;
    memset(&plan, 0, sizeof(plan));
    if (!status && !a->check) status = make_profile(a, &model, &topology, &profile);
    int home = !status && !a->check
                   ? moira_home_choose(&topology, &model, profile_tokens(&profile, &model))
                   : -1;
    if (!status)
        moira_topology_reserve(&topology, &model, (double)a->reserve_gib * 1073741824.0, home);
    if (!status && a->check) {
        status =
            moira_plan_load_for_model(a->check, &topology, a->model_path ? &model : NULL, &plan);
        if (!status && a->model_path) status = rescore(a, &plan, &topology, &model);
        /* Without the model, the file's own predictions cannot be trusted: drawn as unknown. */
        for (int l = 0; !status && !a->model_path && l < plan.n_layers; l++)
            memset(&plan.layers[l].cost, 0, sizeof(plan.layers[l].cost));
    } else if (!status) {
        moira_plan_options_t options = {a->redundant, a->slots, MOIRA_PLAN_BALANCED};
        status = moira_plan_make(&topology, &model, &profile, &options, &plan);
        if (!status && home >= 0) moira_plan_set_home(&plan, &topology, &model, home);
    }
    if (!status && !a->check && !a->output)
        status = moira_plan_write_stream(&plan, &topology, stdout, a->json);
    if (!status) status = write_outputs(a, &plan, &topology, &model);
    if (!status && !a->check && a->output) {
        print_summary(stdout, &plan, &topology, true,
                      baseline_us(&topology, &model, &profile, MOIRA_PLAN_ALL_CPU, home),
                      baseline_us(&topology, &model, &profile, MOIRA_PLAN_FILL_FASTEST, home));
    } else if (!status && a->check) {
        printf("%s: valid plan for topology %s\n", a->check, topology.name);
        print_summary(stdout, &plan, &topology, a->model_path != NULL, -1, -1);
    }
    moira_plan_free(&plan);
    moira_profile_free(&profile);
    moira_topology_free(&topology);
    return status;
}

int moira_cli_plan(int argc, char **argv) {
    plan_args_t args;
    int code = parse_args(argc, argv, &args);
    if (code) return code < 0 ? 0 : code;
    const moira_path_use_t uses[] = {{"-o", args.output, true},
                                     {"--svg", args.svg, true},
                                     {"--topology", args.topology_path, false},
                                     {"--model", args.model_path, false},
                                     {"--profile", args.profile_path, false},
                                     {"--check", args.check, false}};
    moira_status_t status = moira_check_distinct_paths(uses, 6);
    if (!status) status = run_plan(&args);
    return status ? moira_status_report(status) : 0;
}
