/* Entry point of `moira`: finds the verb and hands it the rest of the command line. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend.h"
#include "runtime/cli/cli.h"
#include "runtime/cluster/cluster.h"
#include "runtime/json_string.h"

typedef struct verb {
    const char *name;
    moira_cli_verb_fn run;
    const char *summary;
} verb_t;

static const verb_t verbs[] = {
    {"devices", moira_cli_devices, "list the devices every backend found"},
    {"op", moira_cli_op, "run one op (gate, moe, mla, layer) on a device from safetensors inputs"},
    {"check", moira_cli_check, "compare every op on every backend against the reference"},
    {"run", moira_cli_run,
     "run a model, its experts where a plan puts them (bare: the default model, planned "
     "here)"},
    {"plan", moira_cli_plan, "place expert replicas on a topology's devices and CPU memory"},
    {"calibrate", moira_cli_calibrate,
     "time each device on a model's shapes and write the topology with measured figures"},
    {"bench", moira_cli_bench, "run a named benchmark against its peer (moira bench --help)"},
    {"generate", moira_cli_generate,
     "continue a prompt or a conversation with a Hugging Face model directory"},
    {"chat", moira_cli_chat, "talk with a model interactively, its replies streamed"},
    {"serve", moira_cli_serve,
     "serve a model over the OpenAI HTTP API, requests batched together as they come"},
    {"tokenize", moira_cli_tokenize,
     "text or a conversation to token ids with a model's Hugging Face tokenizer, and back"},
    {"compare", moira_cli_compare, "compare the tensors two safetensors files share (NMSE)"},
    {"quantize", moira_cli_quantize, "write a checkpoint's routed experts as mxfp4 or int8"},
};

static void print_usage(FILE *out) {
    fprintf(out, "usage: moira VERB [options]   (moira VERB --help for a verb's options)\n\n");
    fprintf(out,
            "Moira runs DeepSeek-style Mixture-of-Experts models on CPUs, OpenCL GPUs and\n"
            "Ascend-style NPUs, and proves every backend computes the same thing.\n\nverbs:\n");
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        fprintf(out, "  %-9s %s\n", verbs[i].name, verbs[i].summary);
    fprintf(out, "\nmoira --version prints the version and the backends this build has.\n");
    fprintf(out, "exit codes: 0 success, 1 a run or check failed, 2 bad usage or bad input\n");
}

int moira_cli_usage_error(const char *verb, const char *fmt, ...) {
    fprintf(stderr, "moira %s: ", verb);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fprintf(stderr, " (see moira %s --help)\n", verb);
    return 2;
}

bool moira_cli_parse_int(const char *verb, const char *option, const char *text, long long min,
                         long long max, long long *out_value) {
    char *end = NULL;
    long long value = text ? strtoll(text, &end, 10) : 0;
    if (!text || !*text || *end || value < min || value > max) {
        moira_cli_usage_error(verb, "%s expects an integer in [%lld, %lld], got \"%s\"", option,
                              min, max, text ? text : "");
        return false;
    }
    *out_value = value;
    return true;
}

void moira_cli_json_string(FILE *out, const char *text) {
    moira_json_write_string(out, text);
}

/* Everything a command printed must have reached its destination: `moira plan > plan.yaml` on a
 * full disk, or any output into /dev/full, is a failed command (exit 1), not an empty file with
 * exit 0. stdout is buffered, so only the final flush (and the close) can tell. */
static int finish_stdout(int code) {
    bool failed = fflush(stdout) != 0 || ferror(stdout);
    int err = errno;
    /* Closing reports what a flush cannot (NFS, some pipes); nothing writes to stdout after. A
     * stdout closed before Moira started (EBADF) only matters if something was written, which
     * the flush has already caught. */
    if (fclose(stdout) != 0 && !failed && errno != EBADF) {
        failed = true;
        err = errno;
    }
    if (!failed) return code;
    fprintf(stderr, "moira: cannot write to standard output: %s\n",
            err ? strerror(err) : "a write failed");
    return code == 0 ? 1 : code;
}

/* Written at build time (cmake/version.cmake). */
extern const char moira_version_string[];
extern const char moira_version_commit[];

/* The version, the commit, and what this build can run on. */
static void print_version(void) {
    printf("moira %s (git %s)\nbackends:", moira_version_string, moira_version_commit);
    for (int i = 0; i < moira_backend_count(); i++)
        printf(" %s", moira_backend_name(i));
    printf("\n");
}

/* How the process ends. Under mpirun a rank that succeeded leaves the job (MPI_Finalize); one
 * that failed exits at once, and mpirun ends the others (runtime/cluster/cluster.h). */
static int leave(int code) {
    if (!moira_cluster_current()) return code;
    if (code) moira_cluster_exit(code);
    moira_cluster_leave();
    return 0;
}

/* Under mpirun (DESIGN.md §6, "Multi-host") each rank joins the job first; `run`, `generate`,
 * `serve` and `bench alltoall` spread over the ranks, and any other verb runs only in a job of
 * one rank. */
static int run_verb(const verb_t *verb, int argc, char **argv) {
    moira_cluster_t *cluster = moira_cluster_current();
    bool spreads = !strcmp(verb->name, "run") || !strcmp(verb->name, "generate") ||
                   !strcmp(verb->name, "serve") ||
                   !strcmp(verb->name, "bench"); /* bench alltoall; the others refuse */
    if (cluster && moira_cluster_size(cluster) > 1 && !spreads) {
        if (moira_cluster_rank(cluster) == 0)
            fprintf(stderr,
                    "moira %s: runs on one host; under mpirun only run, generate, serve and "
                    "bench alltoall spread over several ranks (start it with -np 1)\n",
                    verb->name);
        return leave(2);
    }
    int code = verb->run(argc, argv);
    moira_runtime_shutdown();
    return leave(finish_stdout(code));
}

int main(int argc, char **argv) {
    if (moira_cluster_launched()) {
        moira_status_t status = moira_cluster_join(&argc, &argv);
        if (status) return leave(moira_status_report(status));
        moira_cluster_t *cluster = moira_cluster_current();
        if (moira_cluster_size(cluster) > 1) {
            char origin[32];
            snprintf(origin, sizeof(origin), "rank %d", moira_cluster_rank(cluster));
            moira_status_set_origin(origin);
        }
    }
    if (argc < 2) {
        print_usage(stderr);
        return leave(2);
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        moira_status_t status = moira_runtime_init();
        if (status) return leave(moira_status_report(status));
        print_version();
        moira_runtime_shutdown();
        return leave(finish_stdout(0));
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        print_usage(stdout);
        return leave(finish_stdout(0));
    }
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        if (!strcmp(argv[1], verbs[i].name)) return run_verb(&verbs[i], argc - 1, argv + 1);
    }
    fprintf(stderr, "moira: unknown verb \"%s\"\n\n", argv[1]);
    print_usage(stderr);
    return leave(2);
}
