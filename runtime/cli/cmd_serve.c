/* `moira serve`: a model behind the OpenAI HTTP API. The model directory is checked first (bad
 * input exits 2 before anything listens), then the server listens and answers /health with 503
 * while the weights upload, then requests run through one engine loop with continuous batching.
 * SIGINT or SIGTERM stops accepting, lets running requests finish (for --shutdown-grace seconds)
 * and exits 0. */
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/cli/cli.h"
#include "runtime/cli/generate.h"
#include "runtime/clock.h"
#include "runtime/cluster/cluster.h"
#include "runtime/server/expert_load.h"
#include "runtime/server/http_server.h"

#define VERB "serve"

typedef struct serve_args {
    generate_options_t common;
    const char *host, *model_name;
    long long port, max_batch, max_queue, max_body, chunk, cache_slots, receive_s;
    double grace_s;
} serve_args_t;

static void print_help(void) {
    printf("usage: moira serve --model DIR [--host ADDR] [--port N] [--max-batch N]\n"
           "                   [--max-queue N] [--ctx N] [--topology F] [--plan F]\n"
           "                   [--backend DEVICE]\n\n"
           "Serves the model over the OpenAI HTTP API: POST /v1/completions and\n"
           "/v1/chat/completions (\"stream\": true for server-sent events), GET /v1/models,\n"
           "/health (503 while loading), /metrics (Prometheus). Requests run together: a new\n"
           "one joins the running batch at the next step, its prompt prefilled in chunks.\n\n"
           "  --host ADDR        the address to listen on (default 127.0.0.1: this machine only)\n"
           "  --port N           the port (default 8080; 0 picks a free one, printed at start)\n"
           "  --max-batch N      sequences generated together (default 8); each holds --ctx\n"
           "                     tokens of latent cache, allocated at start\n"
           "  --max-queue N      requests waiting for a free sequence; more get 429 (default 64)\n"
           "  --cache-slots N    latent caches kept for the prefix cache, at least --max-batch\n"
           "                     (default: --max-batch); each holds --ctx tokens\n"
           "  --chunk N          tokens one engine step runs: prompts prefill in chunks of at\n"
           "                     most this, beside the running sequences' tokens (default 256)\n"
           "  --model-name NAME  the model id clients send (default: the directory's name)\n"
           "  --max-body BYTES   the largest request body (default 4194304)\n"
           "  --receive-timeout S seconds a client has to send a whole request, from opening\n"
           "                     the connection or from its previous answer (default 30)\n"
           "  --shutdown-grace S seconds running requests may finish after SIGINT/SIGTERM\n"
           "                     (default 10); then they are cut\n");
    generate_print_common_help(false);
    printf("\nexit codes: 0 stopped by SIGINT/SIGTERM, 1 a device failed, 2 bad usage or bad "
           "input\n");
}

static int parse_args(int argc, char **argv, serve_args_t *a) {
    for (int i = 1; i < argc; i++) {
        int common = generate_parse_option(VERB, argc, argv, &i, &a->common);
        if (common == 2) return 2;
        if (common == 1) continue;
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            print_help();
            return -1;
        }
        static const char *const with_value[] = {
            "--host",  "--port",       "--max-batch",      "--max-queue",   "--max-body",
            "--chunk", "--model-name", "--shutdown-grace", "--cache-slots", "--receive-timeout"};
        bool known = false;
        for (size_t k = 0; k < sizeof(with_value) / sizeof(*with_value); k++)
            known |= !strcmp(arg, with_value[k]);
        if (!known) return moira_cli_usage_error(VERB, "unknown option \"%s\"", arg);
        if (i + 1 >= argc) return moira_cli_usage_error(VERB, "%s needs a value", arg);
        const char *v = argv[++i];
        long long grace = 0;
        bool ok = true;
        if (!strcmp(arg, "--host"))
            a->host = v;
        else if (!strcmp(arg, "--model-name"))
            a->model_name = v;
        else if (!strcmp(arg, "--port"))
            ok = moira_cli_parse_int(VERB, arg, v, 0, 65535, &a->port);
        else if (!strcmp(arg, "--max-batch"))
            ok = moira_cli_parse_int(VERB, arg, v, 1, 256, &a->max_batch);
        else if (!strcmp(arg, "--max-queue"))
            ok = moira_cli_parse_int(VERB, arg, v, 1, 1 << 20, &a->max_queue);
        else if (!strcmp(arg, "--max-body"))
            ok = moira_cli_parse_int(VERB, arg, v, 1024, 1LL << 30, &a->max_body);
        else if (!strcmp(arg, "--receive-timeout"))
            ok = moira_cli_parse_int(VERB, arg, v, 1, 3600, &a->receive_s);
        else if (!strcmp(arg, "--cache-slots"))
            ok = moira_cli_parse_int(VERB, arg, v, 1, 4096, &a->cache_slots);
        else if (!strcmp(arg, "--chunk"))
            ok = moira_cli_parse_int(VERB, arg, v, 1, 1 << 16, &a->chunk);
        else if ((ok = moira_cli_parse_int(VERB, arg, v, 0, 3600, &grace)))
            a->grace_s = (double)grace;
        if (!ok) return 2;
    }
    if (!a->common.model) return moira_cli_usage_error(VERB, "--model DIR is required");
    if (a->common.max_tokens > 0 || a->common.n_stops)
        return moira_cli_usage_error(VERB, "--max-tokens and --stop belong to each request "
                                           "(max_tokens, stop), not to the server");
    if (a->model_name && !*a->model_name)
        return moira_cli_usage_error(VERB, "--model-name needs a non-empty name");
    if (!a->cache_slots) a->cache_slots = a->max_batch;
    if (a->cache_slots < a->max_batch)
        return moira_cli_usage_error(VERB, "--cache-slots %lld is fewer than --max-batch %lld",
                                     a->cache_slots, a->max_batch);
    if (a->chunk < a->max_batch)
        return moira_cli_usage_error(VERB,
                                     "--chunk %lld is smaller than --max-batch %lld: one step "
                                     "must hold a token of every running sequence",
                                     a->chunk, a->max_batch);
    return 0;
}

/* The server while it runs: the loader thread fills in the engine, the main thread waits for a
 * signal (or the loader's word that it failed). */
typedef struct server {
    serve_args_t *args;
    generate_session_t session;
    serve_http_t *http;
    serve_metrics_t metrics;
    serve_api_model_t api;
    serve_scheduler_t *scheduler;
    serve_expert_load_t expert_load;
    char *default_name; /* owned */
    pthread_t main_thread;
    moira_status_t load_status;
    atomic_bool ready, load_failed; /* set by the loader, read by the main thread */
} server_t;

static void *load(void *arg) {
    server_t *s = arg;
    serve_args_t *a = s->args;
    a->common.max_sequences = (int)a->cache_slots;
    a->common.max_rows = a->chunk;
    a->common.record_expert_load = true;
    moira_status_t status = generate_session_start_engine(VERB, &a->common, &s->session);
    if (!status) {
        const moira_engine_options_t *eo = moira_engine_options(s->session.engine);
        s->api = (serve_api_model_t){.name = s->api.name,
                                     .model = &s->session.model,
                                     .chat_format = a->common.chat_format,
                                     .defaults = s->session.sampling,
                                     .context = eo->context,
                                     .created = (int64_t)time(NULL)};
        serve_scheduler_options_t options = {.max_queue = (int)a->max_queue,
                                             .step_rows = a->chunk,
                                             .max_running = (int)a->max_batch};
        status = serve_scheduler_create(s->session.engine, &s->session.model, &s->metrics, &options,
                                        &s->scheduler);
    }
    if (!status) {
        pthread_mutex_lock(&s->metrics.lock);
        s->metrics.device = moira_device_info(s->session.device)->name;
        s->metrics.started = moira_now_seconds();
        pthread_mutex_unlock(&s->metrics.lock);
        s->expert_load = (serve_expert_load_t){.scheduler = s->scheduler,
                                               .config = &s->session.model.config,
                                               .model_name = s->api.name};
        serve_http_backend_t backend = {.api = &s->api,
                                        .scheduler = s->scheduler,
                                        .metrics = &s->metrics,
                                        .expert_load = serve_expert_load_yaml,
                                        .expert_load_context = &s->expert_load};
        serve_http_ready(s->http, &backend);
        fprintf(stderr,
                "moira serve: ready (%d sequences at once, %d latent caches of %lld tokens)\n",
                (int)a->max_batch, (int)a->cache_slots, (long long)s->api.context);
    }
    s->load_status = status;
    atomic_store(status ? &s->load_failed : &s->ready, true);
    if (status) pthread_kill(s->main_thread, SIGUSR1);
    return NULL;
}

/* Waits for SIGINT or SIGTERM, or SIGUSR1 when the loader says it failed (a SIGUSR1 from
 * anyone else is ignored); returns the signal. */
static int wait_for_signal(const server_t *s) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    int signal = 0;
    while (sigwait(&set, &signal) || (signal == SIGUSR1 && !atomic_load(&s->load_failed)))
        ;
    return signal;
}

/* Another host's rank under mpirun: no HTTP; it loads the model, then serves its experts to rank
 * 0's engine for as long as rank 0 runs, however long it idles between requests. */
static int follow(server_t *s) {
    serve_args_t *a = s->args;
    a->common.max_sequences = (int)a->cache_slots;
    a->common.max_rows = a->chunk;
    a->common.record_expert_load = true;
    moira_status_t status = generate_session_start_engine(VERB, &a->common, &s->session);
    if (!status) status = moira_engine_follow(s->session.engine);
    return status ? moira_status_report(status) : 0;
}

static int run(server_t *s) {
    serve_args_t *a = s->args;
    moira_status_t status = generate_session_open_model(&a->common, &s->session);
    if (status) return moira_status_report(status);
    moira_cluster_t *cluster = moira_cluster_current();
    if (cluster && moira_cluster_rank(cluster) > 0) return follow(s);
    if (!a->model_name) {
        s->default_name = strdup(a->common.model);
        a->model_name = s->default_name ? basename(s->default_name) : "model";
        size_t n = strlen(a->model_name);
        if (!n) a->model_name = "model";
    }
    s->api.name = a->model_name;
    serve_metrics_init(&s->metrics, NULL); /* the device is named once the engine runs on it */
    serve_http_options_t http = {.host = a->host,
                                 .port = (int)a->port,
                                 .max_body = (size_t)a->max_body,
                                 .max_connections = (int)(a->max_batch + a->max_queue + 64),
                                 .receive_s = (double)a->receive_s};
    status = serve_http_start(&http, &s->http);
    if (status) return moira_status_report(status);
    fprintf(stderr, "moira serve: listening on http://%s:%d (model \"%s\", loading)\n",
            a->host ? a->host : "127.0.0.1", serve_http_port(s->http), a->model_name);
    pthread_t loader;
    if (pthread_create(&loader, NULL, load, s))
        return moira_status_report(
            moira_status_make(MOIRA_CODE_INTERNAL, "cannot start the loading thread"));
    int signal = wait_for_signal(s);
    if (signal == SIGUSR1 || !atomic_load(&s->ready)) {
        serve_http_quiesce(s->http);
        if (signal != SIGUSR1) {
            /* The upload cannot be interrupted; nothing is written, so leave at once. */
            fprintf(stderr, "moira serve: stopped while loading\n");
            _exit(0);
        }
        pthread_join(loader, NULL);
        serve_http_stop(s->http);
        s->http = NULL;
        return moira_status_report(s->load_status);
    }
    pthread_join(loader, NULL);
    fprintf(stderr, "moira serve: stopping (%s): running requests have %.0f s to finish\n",
            signal == SIGINT ? "SIGINT" : "SIGTERM", a->grace_s);
    serve_http_quiesce(s->http);
    serve_scheduler_stop(s->scheduler, a->grace_s);
    /* Every request is done now; their answers may still be on their way out. */
    serve_http_drain(s->http, 5);
    serve_http_stop(s->http);
    s->http = NULL;
    fprintf(stderr, "moira serve: stopped after %llu requests, %llu tokens generated\n",
            (unsigned long long)(s->metrics.requests_ok + s->metrics.requests_cancelled +
                                 s->metrics.requests_failed),
            (unsigned long long)s->metrics.generated_tokens);
    return 0;
}

int moira_cli_serve(int argc, char **argv) {
    serve_args_t a = {.common = {.max_tokens = -1},
                      .port = 8080,
                      .max_batch = 8,
                      .max_queue = 64,
                      .max_body = 4 << 20,
                      .chunk = 256,
                      .receive_s = 30,
                      .grace_s = 10};
    int parsed = parse_args(argc, argv, &a);
    if (parsed) return parsed < 0 ? 0 : parsed;
    /* Every thread started from here on leaves these signals to sigwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    server_t s = {.args = &a, .main_thread = pthread_self()};
    int code = run(&s);
    serve_http_stop(s.http);
    serve_scheduler_destroy(s.scheduler);
    generate_session_close(&s.session);
    serve_metrics_destroy(&s.metrics);
    free(s.default_name);
    return code;
}
