/* `moira run`: a whole model with its experts spread over devices as a plan says, timed, set
 * beside the planner's prediction and checked against the reference. With no arguments: the
 * built-in default model with seeded random weights, planned for this machine. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/atomic_file.h"
#include "runtime/backend.h"
#include "runtime/cli/cli.h"
#include "runtime/cli/run.h"
#include "runtime/clock.h"
#include "runtime/cluster/cluster.h"
#include "runtime/distinct_paths.h"

static const char run_help[] =
    "usage: moira run [--topology FILE] [--model FILE] [--plan FILE] [--weights PATH]\n"
    "                 [--tokens N] [--iters N] [--backend DEVICE] [--inputs FILE -o OUT]\n"
    "                 [--record-profile FILE] [--seed N] [--with-emulated] [--reserve GIB]\n"
    "                 [--network-timeout S] [--data-parallel] [--json]\n"
    "       mpirun -np H moira run --topology F --plan P ...   (one rank per host of F)\n\n"
    "Runs every decoder layer of a model (prefill over N tokens) with each MoE layer's routed\n"
    "experts on the devices a placement plan names - GPUs, NPUs, CPU NUMA memory - all at once,\n"
    "and attention, router and shared experts on a home device. Prints what ran where (experts\n"
    "held, tokens served, busy time, bytes moved per device, next to the cost model's\n"
    "prediction for the same load), tokens/s, and checks every device's expert outputs and the\n"
    "model's output against the fp64 reference (exit 1 when one disagrees).\n"
    "With no arguments: the built-in default model (configs/models/moira-tiny.yaml) with seeded\n"
    "random weights, planned for this machine (discovered with hwloc).\n\n"
    "  --topology FILE   machine to plan for or that --plan is for (default: this machine)\n"
    "  --model FILE      model config (YAML or Hugging Face config.json)\n"
    "  --plan FILE       placement plan (moira plan -o); default: planned here for a uniform load\n"
    "  --weights PATH    safetensors checkpoint (model.layers.N.* names); default: random\n"
    "  --tokens N        tokens per batch (default 32; from --inputs when given)\n"
    "  --iters N         timed repetitions (default 3)\n"
    "  --backend DEVICE  alone: run everything on DEVICE; with --topology or --plan: the home\n"
    "                    device of attention, router and shared experts (default cpu:0)\n"
    "  --inputs FILE     hidden_states F32 [T, D] to feed, or input_ids I32/I64 [T] embedded\n"
    "                    with --weights' model.embed_tokens.weight; -o writes the output of\n"
    "                    the last layer (before the final norm)\n"
    "  --record-profile FILE  write the observed expert load for moira plan --profile\n"
    "  --seed N          seed of the random weights and inputs (default 1)\n"
    "  --with-emulated   let a plan made here use emulated devices (the npu emulator), as\n"
    "                    setting MOIRA_NPU_DEVICES does; they run on the host's cores\n"
    "  --reserve GIB     memory a plan made here leaves free on each device, besides what it\n"
    "                    keeps for the home's weights and workspaces (default 0)\n"
    "  --data-parallel   under mpirun: every rank runs --tokens random tokens of its own\n"
    "                    (attention on its own home, experts where the plan puts them), as\n"
    "                    DeepSeek deploys; each rank's batch is checked\n"
    "  --network-timeout S  under mpirun: seconds of silence from another rank after which\n"
    "                    a rank waiting for it ends the job, naming it (default 60)\n"
    "  --json            machine-readable summary\n"
    "In the device table TOKENS is the tokens a device received per batch and ASSIGNED the\n"
    "(token, expert) pairs it computed, which is what load profiles count.\n";

/* Returns 0 when parsed, else the exit code (help: -1 meaning "exit 0"). */
static int parse_run_args(int argc, char **argv, run_args_t *a) {
    static const struct option options[] = {{"model", required_argument, NULL, 'm'},
                                            {"weights", required_argument, NULL, 'w'},
                                            {"tokens", required_argument, NULL, 't'},
                                            {"iters", required_argument, NULL, 'n'},
                                            {"backend", required_argument, NULL, 'b'},
                                            {"inputs", required_argument, NULL, 'i'},
                                            {"output", required_argument, NULL, 'o'},
                                            {"seed", required_argument, NULL, 's'},
                                            {"json", no_argument, NULL, 'j'},
                                            {"topology", required_argument, NULL, 'T'},
                                            {"plan", required_argument, NULL, 'P'},
                                            {"record-profile", required_argument, NULL, 'R'},
                                            {"with-emulated", no_argument, NULL, 'E'},
                                            {"reserve", required_argument, NULL, 'V'},
                                            {"network-timeout", required_argument, NULL, 'N'},
                                            {"data-parallel", no_argument, NULL, 'D'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    memset(a, 0, sizeof(*a));
    a->tokens = 32;
    a->iters = 3;
    a->seed = 1;
    a->network_timeout = 60;
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
        case 'T':
            a->topology = optarg;
            break;
        case 'P':
            a->plan = optarg;
            break;
        case 'R':
            a->record_profile = optarg;
            break;
        case 'j':
            a->json = true;
            break;
        case 'E':
            a->with_emulated = true;
            break;
        case 'D':
            a->data_parallel = true;
            break;
        case 'V':
            if (!moira_cli_parse_int("run", "--reserve", optarg, 0, 1 << 20, &a->reserve_gib))
                return 2;
            break;
        case 'N':
            if (!moira_cli_parse_int("run", "--network-timeout", optarg, 1, 86400,
                                     &a->network_timeout))
                return 2;
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
    if (a->data_parallel && (a->inputs || a->record_profile))
        return moira_cli_usage_error("run", "--data-parallel runs a random batch on every rank; "
                                            "--inputs, -o and --record-profile are for one batch");
    return 0;
}

/* The limit every layer is held to: the least precise device's (the home device and every
 * device holding experts). */
static void pick_limit(const run_placement_t *p, const moira_exec_stats_t *stats, run_result_t *r) {
    const moira_device_info_t *home = moira_device_info(p->home);
    r->limit = moira_precision_nmse_limit(home->compute_precision);
    r->limit_device = home->name;
    for (int i = 0; i < stats->n_targets; i++) {
        const moira_exec_target_stats_t *t = &stats->targets[i];
        if (t->nmse_limit > r->limit) {
            r->limit = t->nmse_limit;
            r->limit_device = t->device_name;
        }
    }
}

/* Every layer against the reference on its own input, held to that limit; every device's own
 * check must pass too. The end-to-end NMSE is reported beside it. */
static void judge(const run_model_t *m, const moira_exec_stats_t *stats, run_result_t *r) {
    bool devices_agreed = true;
    for (int i = 0; i < stats->n_targets; i++) {
        const moira_exec_target_stats_t *t = &stats->targets[i];
        if (t->checked && !(t->check_nmse <= t->check_limit)) devices_agreed = false;
    }
    r->nmse = run_model_nmse(&m->out, &m->reference);
    r->agreed = devices_agreed && r->layer_nmse <= r->limit;
}

/* What the run leaves behind on request: the output tensor and the observed load profile,
 * written together or not at all (both temporaries are written before either is renamed, and a
 * failed second rename puts the first back), so a failure never leaves one without the other.
 * Only a run that agreed with the reference writes them (run_model). */
static moira_status_t write_outputs(const run_args_t *a, run_model_t *m,
                                    const moira_executor_t *executor,
                                    const moira_topology_t *topology) {
    moira_atomic_file_t output_file, profile_file;
    memset(&output_file, 0, sizeof(output_file));
    memset(&profile_file, 0, sizeof(profile_file));
    moira_profile_t profile;
    memset(&profile, 0, sizeof(profile));
    moira_status_t status = MOIRA_OK_STATUS;
    if (a->record_profile) status = moira_executor_observed_profile(executor, &profile);
    if (!status && a->record_profile)
        status = moira_exec_stats_add_speeds(moira_executor_stats(executor), topology, &profile);
    if (!status && a->output) status = moira_atomic_open(a->output, &output_file);
    if (!status && a->record_profile) status = moira_atomic_open(a->record_profile, &profile_file);
    if (!status && a->output) {
        moira_named_tensor_t named = {.name = "output", .tensor = &m->out};
        status = moira_safetensors_write_stream(a->output, output_file.stream, &named, 1);
    }
    if (!status && a->record_profile)
        status = moira_profile_write_stream(&profile, m->config.name, a->record_profile,
                                            profile_file.stream);
    moira_atomic_file_t files[2] = {output_file, profile_file};
    if (!status) {
        moira_profile_free(&profile);
        return moira_atomic_commit_all(files, 2);
    }
    moira_atomic_abort(&output_file);
    moira_atomic_abort(&profile_file);
    moira_profile_free(&profile);
    return status;
}

/* A checked warm-up forward (first touches, kernel builds, the device checks), more warm-up,
 * then the timed iterations. Across hosts the other ranks are released right after (they have
 * nothing to do while rank 0 computes the reference), which brings their figures here. */
static moira_status_t run_forwards(const run_args_t *a, run_model_t *m, moira_executor_t *ex) {
    double warm_until = moira_now_seconds() + 0.25;
    MOIRA_RETURN_IF_ERROR(
        moira_executor_forward(ex, &m->x, &m->positions, &m->out, true, m->layer_inputs));
    /* Then untimed forwards until a quarter of a second has passed (at most 200; none when the
     * checked forward took that long): the first few hundred forwards of a small batch run 2-6x
     * slower than the rest (cores waking from idle, caches and pages still cold), which would
     * otherwise be taken for the devices' speed. Data-parallel ranks each drive their own
     * forwards and must run as many: a fixed count there. */
    moira_cluster_t *cluster = moira_cluster_current();
    bool lockstep = a->data_parallel && cluster && moira_cluster_size(cluster) > 1;
    for (int i = 0; lockstep ? i < 20 : i < 200 && moira_now_seconds() < warm_until; i++)
        MOIRA_RETURN_IF_ERROR(
            moira_executor_forward(ex, &m->x, &m->positions, &m->out, false, NULL));
    moira_executor_reset_stats(ex);
    for (long long i = 0; i < a->iters; i++)
        MOIRA_RETURN_IF_ERROR(
            moira_executor_forward(ex, &m->x, &m->positions, &m->out, false, NULL));
    moira_executor_release(ex);
    return MOIRA_OK_STATUS;
}

/* One rank's verdict on its own batch, as it travels to rank 0. */
typedef struct rank_verdict {
    int32_t agreed, near_ties;
    int64_t worst_layer;
    double layer_nmse, nmse;
} rank_verdict_t;

/* Data-parallel: every rank checked its own batch; rank 0's result becomes the worst of them
 * (agreed only when all did), which its report prints. */
static void combine_verdicts(moira_cluster_t *cluster, run_result_t *r) {
    int ranks = moira_cluster_size(cluster);
    rank_verdict_t mine = {r->agreed, r->near_ties, r->worst_layer, r->layer_nmse, r->nmse};
    rank_verdict_t *all = calloc((size_t)ranks, sizeof(*all));
    if (!all) moira_cluster_abort(cluster, 1, "out of memory gathering the ranks' checks");
    moira_cluster_gather(cluster, 0, &mine, sizeof(mine), all, "gathering the ranks' checks");
    r->data_parallel_ranks = ranks;
    for (int i = 1; moira_cluster_rank(cluster) == 0 && i < ranks; i++) {
        r->agreed = r->agreed && all[i].agreed;
        r->near_ties += all[i].near_ties;
        if (!(all[i].layer_nmse <= r->layer_nmse)) {
            r->layer_nmse = all[i].layer_nmse;
            r->worst_layer = all[i].worst_layer;
        }
        if (!(all[i].nmse <= r->nmse)) r->nmse = all[i].nmse;
    }
    free(all);
}

/* Config, batch and placement first (a bad plan stops here, before any weight is read), then
 * the weights, the executor, the forwards, the reference and the summary. */
static moira_status_t run_model(const run_args_t *a, int *out_exit) {
    run_model_t m;
    memset(&m, 0, sizeof(m));
    run_placement_t p;
    memset(&p, 0, sizeof(p));
    moira_executor_t *ex = NULL;
    moira_device_t *home = NULL;
    moira_status_t status = MOIRA_OK_STATUS;
    if (a->model)
        status = moira_model_config_load(a->model, &m.config);
    else
        moira_model_config_default(&m.config);
    if (!status) status = moira_runtime_init();
    if (!status) status = moira_device_find(a->backend ? a->backend : "cpu:0", &home);
    if (!status) status = run_model_check_fits(&m.config, a, home);
    /* Data-parallel: each rank its own batch (rank 0's is the one a single process would run),
     * the same weights. */
    moira_cluster_t *cluster = moira_cluster_current();
    bool data_parallel = a->data_parallel && cluster && moira_cluster_size(cluster) > 1;
    run_args_t batch_args = *a;
    if (data_parallel) batch_args.seed += 1000003LL * moira_cluster_rank(cluster);
    if (!status) status = run_model_load_inputs(&m, &batch_args);
    if (!status) status = run_place(a, &m.config, m.x.shape[0], &p);
    double start = moira_now_seconds();
    run_progress_context_t progress = {"run", run_model_weight_bytes(&m.config)};
    if (!status) status = run_model_load_weights(&m, a);
    if (!status) {
        moira_exec_config_t config = run_exec_config(&m.config, m.layers, &p, m.x.shape[0]);
        config.progress = run_progress;
        config.progress_context = &progress;
        config.data_parallel = data_parallel;
        status = moira_executor_create(&config, &ex);
    }
    run_result_t result = {.args = a, .model = &m, .placement = &p};
    result.load_s = moira_now_seconds() - start;
    if (!status && !moira_executor_leads(ex)) {
        /* Another host's rank: it serves its experts; rank 0 checks, writes and reports. */
        status = moira_executor_follow(ex);
        moira_executor_destroy(ex);
        run_placement_free(&p);
        run_model_release(&m);
        return status;
    }
    if (!status) status = run_forwards(a, &m, ex);
    if (!status) status = run_model_reference(&m);
    if (!status) {
        result.stats = moira_executor_stats(ex);
        pick_limit(&p, result.stats, &result);
        status = run_model_layer_check(&m, result.limit, &result.layer_nmse, &result.worst_layer,
                                       &result.near_ties);
    }
    if (!status) judge(&m, result.stats, &result);
    if (!status && data_parallel) {
        bool own = result.agreed;
        combine_verdicts(cluster, &result);
        if (moira_cluster_rank(cluster) > 0) {
            /* Rank 0 reports for every rank; this one exits on its own batch's verdict. */
            *out_exit = own ? 0 : 1;
            moira_executor_destroy(ex);
            run_placement_free(&p);
            run_model_release(&m);
            return MOIRA_OK_STATUS;
        }
    }
    /* A run that disagreed with the reference exits 1 and writes nothing: its output is wrong,
     * and a profile beside no output would break "both or neither". */
    if (!status && result.agreed) status = write_outputs(a, &m, ex, &p.topology);
    if (!status && !result.agreed && (a->output || a->record_profile))
        fprintf(stderr, "moira run: the check failed, so %s not written\n",
                !a->record_profile ? "-o was"
                : a->output        ? "-o and --record-profile were"
                                   : "--record-profile was");
    if (!status) {
        if (a->json)
            status = run_report_json(&result);
        else
            run_report_text(&result);
        *out_exit = result.agreed ? 0 : 1;
    }
    moira_executor_destroy(ex);
    run_placement_free(&p);
    run_model_release(&m);
    return status;
}

/* Usage errors exit before anything starts; a status carries its own exit code. */
int moira_cli_run(int argc, char **argv) {
    run_args_t args;
    int rc = parse_run_args(argc, argv, &args);
    if (rc) return rc < 0 ? 0 : rc;
    const moira_path_use_t uses[] = {
        {"-o", args.output, true},           {"--record-profile", args.record_profile, true},
        {"--model", args.model, false},      {"--plan", args.plan, false},
        {"--weights", args.weights, false},  {"--inputs", args.inputs, false},
        {"--topology", args.topology, false}};
    int exit_code = 0;
    if (moira_cluster_current())
        moira_cluster_set_timeout(moira_cluster_current(), (double)args.network_timeout);
    moira_status_t status = moira_check_distinct_paths(uses, 7);
    if (!status) status = run_model(&args, &exit_code);
    if (status) return moira_status_report(status);
    return exit_code;
}
