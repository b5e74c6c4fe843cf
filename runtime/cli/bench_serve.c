/* `moira bench serve`: the server under 1, 4 and 16 concurrent streaming clients, each sending a
 * 512-token prompt and reading 128 generated tokens over HTTP on the loopback, as a serving
 * benchmark (vLLM's benchmark_serving, llama-bench's server mode) reports it: aggregate decode
 * tokens/s, time to first token and inter-token latency at p50 and p99. The peer of N clients is
 * one client: continuous batching is worth its ratio (the experts' weights read once per step for
 * every sequence in it).
 *
 * Without --model it writes a DeepSeek-V2-Lite-shaped bf16 checkpoint with 3 layers (one dense,
 * two MoE) and the DeepSeek-V3 tokenizer's vocabulary (the tokenizer files `make deps` puts in
 * .deps/deepseek-v3, or $MOIRA_REFS/deepseek-v3). */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ops/random_checkpoint.h"
#include "runtime/backend.h"
#include "runtime/cli/bench.h"
#include "runtime/cli/generate.h"
#include "runtime/remove_tree.h"
#include "runtime/server/http_server.h"

#define PROMPT_TOKENS 512
#define GENERATED_TOKENS 128
#define MAX_CLIENTS 16
#define MAX_EVENTS (GENERATED_TOKENS + 8)

/* One streaming client: its request, and when each event of the answer arrived. */
typedef struct client {
    int port, index, round;
    int64_t vocab;
    double start, times[MAX_EVENTS];
    int events;
    long long tokens; /* from the usage chunk */
    bool failed;
} client_t;

/* A prompt of ids no other client or round shares from its first token, so the prefix cache has
 * nothing to give and every client prefills all of it. */
static char *request_body(const client_t *c) {
    size_t capacity = PROMPT_TOKENS * 8 + 256, at = 0;
    char *body = malloc(capacity);
    if (!body) return NULL;
    at += (size_t)snprintf(body, capacity, "{\"prompt\": [");
    for (int i = 0; i < PROMPT_TOKENS; i++)
        at += (size_t)snprintf(
            body + at, capacity - at, "%s%lld", i ? "," : "",
            (long long)((c->round * 131 + c->index * 7919 + i * 104729 + 3) % (c->vocab - 2) + 2));
    snprintf(body + at, capacity - at,
             "], \"max_tokens\": %d, \"temperature\": 0, \"ignore_eos\": true, \"stream\": true, "
             "\"stream_options\": {\"include_usage\": true}}",
             GENERATED_TOKENS);
    return body;
}

/* Sends the request over HTTP/1.0 (the answer then ends when the server closes) and timestamps
 * each SSE event carrying text. */
static void *run_client(void *arg) {
    client_t *c = arg;
    c->failed = true;
    char *body = request_body(c);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    if (!body || fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof(to))) goto done;
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     strlen(body));
    c->start = moira_bench_seconds();
    if (write(fd, head, (size_t)n) != n || write(fd, body, strlen(body)) != (ssize_t)strlen(body))
        goto done;
    char buf[65536];
    size_t held = 0;
    for (;;) {
        ssize_t got = read(fd, buf + held, sizeof(buf) - 1 - held);
        if (got <= 0) break;
        double now = moira_bench_seconds();
        held += (size_t)got;
        buf[held] = '\0';
        char *line, *end;
        size_t used = 0;
        while ((line = strstr(buf + used, "data: ")) && (end = strstr(line, "\n\n"))) {
            const char *tokens = strstr(line, "\"completion_tokens\":");
            if (tokens && tokens < end)
                c->tokens = atoll(tokens + 20);
            else if (strstr(line, "\"text\":\"") && strstr(line, "\"text\":\"") < end &&
                     strncmp(strstr(line, "\"text\":\"") + 8, "\"", 1) && c->events < MAX_EVENTS)
                c->times[c->events++] = now;
            used = (size_t)(end + 2 - buf);
        }
        memmove(buf, buf + used, held - used);
        held -= used;
    }
    c->failed = c->tokens != GENERATED_TOKENS || c->events < 2;
done:
    if (fd >= 0) close(fd);
    free(body);
    return NULL;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double *values, int n, double p) {
    qsort(values, (size_t)n, sizeof(double), compare_doubles);
    int i = (int)ceil(p * n) - 1;
    return values[i < 0 ? 0 : i];
}

typedef struct serve_row {
    int clients;
    int64_t step_rows;
    double tokens_per_s, output_per_s, steady_per_s, ttft_p50, ttft_p99, itl_p50, itl_p99;
} serve_row_t;

/* N clients at once. Aggregate decode tokens/s is the sum of each client's own decode rate (its
 * tokens after the first over the time from its first token to its last), so prompts still
 * prefilling beside a client's decode count against it; output tokens/s is every generated token
 * over the whole round, prefill included. Steady tokens/s counts only the span in which every
 * client is decoding (from the last first token to the first last token): the batch of N sharing
 * each step's weight reads, free of prefill; NAN when there is no such span. */
static double steady_rate(const client_t *c, int clients) {
    double from = 0, to = INFINITY;
    for (int i = 0; i < clients; i++) {
        from = fmax(from, c[i].times[0]);
        to = fmin(to, c[i].times[c[i].events - 1]);
    }
    long long inside = 0;
    for (int i = 0; i < clients; i++)
        for (int e = 1; e < c[i].events; e++)
            inside += c[i].times[e] > from && c[i].times[e] <= to;
    return to > from && inside >= 4 * clients ? (double)inside / (to - from) : NAN;
}

static moira_status_t run_round(int port, int64_t vocab, int clients, int round, serve_row_t *row) {
    client_t c[MAX_CLIENTS];
    pthread_t threads[MAX_CLIENTS];
    static double ttft[MAX_CLIENTS], itl[MAX_CLIENTS * MAX_EVENTS];
    for (int i = 0; i < clients; i++) {
        c[i] = (client_t){.port = port, .index = i, .round = round, .vocab = vocab};
        pthread_create(&threads[i], NULL, run_client, &c[i]);
    }
    for (int i = 0; i < clients; i++)
        pthread_join(threads[i], NULL);
    double start = INFINITY, last = 0, decode_rate = 0;
    long long generated = 0;
    int n_itl = 0;
    for (int i = 0; i < clients; i++) {
        if (c[i].failed)
            return moira_status_make(MOIRA_CODE_INTERNAL,
                                     "bench serve: client %d of %d got %lld tokens in %d events", i,
                                     clients, c[i].tokens, c[i].events);
        ttft[i] = c[i].times[0] - c[i].start;
        for (int e = 1; e < c[i].events; e++)
            itl[n_itl++] = c[i].times[e] - c[i].times[e - 1];
        start = fmin(start, c[i].start);
        last = fmax(last, c[i].times[c[i].events - 1]);
        decode_rate += (double)(c[i].tokens - 1) / (c[i].times[c[i].events - 1] - c[i].times[0]);
        generated += c[i].tokens;
    }
    *row = (serve_row_t){.clients = clients,
                         .tokens_per_s = decode_rate,
                         .output_per_s = (double)generated / (last - start),
                         .steady_per_s = steady_rate(c, clients),
                         .ttft_p50 = percentile(ttft, clients, 0.5),
                         .ttft_p99 = percentile(ttft, clients, 0.99),
                         .itl_p50 = percentile(itl, n_itl, 0.5),
                         .itl_p99 = percentile(itl, n_itl, 0.99)};
    return MOIRA_OK_STATUS;
}

/* The V2-Lite-shaped checkpoint with the DeepSeek-V3 tokenizer's vocabulary. */
static moira_status_t write_model(const char *dir) {
    const char *refs = getenv("MOIRA_REFS");
    char tokenizer[1024];
    snprintf(tokenizer, sizeof(tokenizer), "%s/deepseek-v3",
             refs && *refs ? refs : MOIRA_BENCH_DIR "/../.deps");
    char probe[1100];
    snprintf(probe, sizeof(probe), "%s/tokenizer.json", tokenizer);
    if (access(probe, R_OK))
        return moira_status_make(MOIRA_CODE_NOT_FOUND,
                                 "bench serve: %s is missing (make deps installs it), or give "
                                 "--model DIR",
                                 probe);
    moira_random_checkpoint_spec_t spec;
    MOIRA_RETURN_IF_ERROR(moira_random_checkpoint_preset("v2-lite", &spec));
    spec.config.num_hidden_layers = 3;
    spec.config.vocab_size = 129280;
    spec.tokenizer = tokenizer;
    fprintf(stderr,
            "moira bench serve: writing a 3-layer DeepSeek-V2-Lite-shaped bf16 checkpoint "
            "to %s\n",
            dir);
    return moira_random_checkpoint_write(&spec, dir);
}

/* A JSON number, or null for NAN (static buffer: one use per printf). */
static const char *steady_text(double value) {
    static char text[32];
    if (isnan(value)) return "null";
    snprintf(text, sizeof(text), "%.3f", value);
    return text;
}

static void print_rows(const serve_row_t *rows, int n, bool json) {
    if (json) {
        printf("{\"rows\": [");
        for (int i = 0; i < n; i++)
            printf("%s\n  {\"bench\": \"serve\", \"clients\": %d, \"step_tokens\": %lld, "
                   "\"prompt_tokens\": %d, "
                   "\"generated_tokens\": %d, \"decode_tokens_per_s\": %.3f, \"vs_one\": %.3f, "
                   "\"output_tokens_per_s\": %.3f, \"steady_decode_tokens_per_s\": %s, "
                   "\"ttft_p50_ms\": %.3f, \"ttft_p99_ms\": %.3f, \"itl_p50_ms\": %.3f, "
                   "\"itl_p99_ms\": %.3f}",
                   i ? "," : "", rows[i].clients, (long long)rows[i].step_rows, PROMPT_TOKENS,
                   GENERATED_TOKENS, rows[i].tokens_per_s,
                   rows[i].tokens_per_s / rows[0].tokens_per_s, rows[i].output_per_s,
                   steady_text(rows[i].steady_per_s), rows[i].ttft_p50 * 1e3,
                   rows[i].ttft_p99 * 1e3, rows[i].itl_p50 * 1e3, rows[i].itl_p99 * 1e3);
        printf("\n]}\n");
        return;
    }
    printf("serve: %d-token prompts, %d generated tokens per streaming client (peer: 1 client)\n"
           "%7s %5s %12s %7s %12s %12s %10s %10s %9s %9s %8s\n",
           PROMPT_TOKENS, GENERATED_TOKENS, "clients", "step", "decode tok/s", "vs one",
           "output tok/s", "steady tok/s", "ttft p50", "ttft p99", "itl p50", "itl p99", "p99/one");
    for (int i = 0; i < n; i++)
        printf("%7d %5lld %12.1f %7.2f %12.1f %12.1f %8.1fms %8.1fms %7.1fms %7.1fms %8.2f\n",
               rows[i].clients, (long long)rows[i].step_rows, rows[i].tokens_per_s,
               rows[i].tokens_per_s / rows[0].tokens_per_s, rows[i].output_per_s,
               rows[i].steady_per_s, rows[i].ttft_p50 * 1e3, rows[i].ttft_p99 * 1e3,
               rows[i].itl_p50 * 1e3, rows[i].itl_p99 * 1e3, rows[i].itl_p99 / rows[0].itl_p99);
}

/* The rounds: 1, 4 and 16 clients with steps of 256 tokens (the server's default --chunk), then
 * 16 with steps of 32, which trades first-token time for even inter-token latency. */
static const struct {
    int clients;
    int64_t step_rows;
} rounds[] = {{1, 256}, {4, 256}, {16, 256}, {16, 32}};
#define ROUNDS (int)(sizeof(rounds) / sizeof(rounds[0]))

/* One round on a scheduler of its own (the step budget is the scheduler's) over the engine. */
static moira_status_t bench_round(generate_session_t *session, serve_http_t *http,
                                  serve_api_model_t *api, serve_metrics_t *metrics, int clients,
                                  int64_t step_rows, int round, serve_row_t *row) {
    serve_scheduler_t *scheduler = NULL;
    serve_scheduler_options_t so = {.max_queue = MAX_CLIENTS, .step_rows = step_rows};
    MOIRA_RETURN_IF_ERROR(
        serve_scheduler_create(session->engine, &session->model, metrics, &so, &scheduler));
    serve_http_backend_t backend = {.api = api, .scheduler = scheduler, .metrics = metrics};
    serve_http_ready(http, &backend);
    moira_status_t status =
        run_round(serve_http_port(http), session->model.vocab, clients, round, row);
    row->step_rows = step_rows;
    serve_scheduler_destroy(scheduler);
    return status;
}

/* The server in this process on a free loopback port, its engine sized for 16 clients. */
static moira_status_t bench_model(const moira_bench_args_t *args, const char *dir,
                                  serve_row_t *rows, int *n_rows) {
    generate_options_t o = {.model = dir,
                            .backend = args->backend,
                            .context = PROMPT_TOKENS + GENERATED_TOKENS,
                            .max_sequences = MAX_CLIENTS,
                            .max_rows = 256};
    generate_session_t session;
    serve_metrics_t metrics;
    serve_metrics_init(&metrics, args->backend ? args->backend : "cpu:0");
    serve_http_t *http = NULL;
    moira_status_t status = generate_session_open("bench serve", &o, &session);
    serve_api_model_t api = {.name = "bench", .model = &session.model};
    if (!status) {
        api.defaults = session.sampling;
        api.context = moira_engine_options(session.engine)->context;
    }
    serve_http_options_t ho = {.max_body = 1 << 20, .max_connections = 64};
    if (!status) status = serve_http_start(&ho, &http);
    /* A warm-up round first: the first steps pay for page faults and thread start-up. */
    for (int i = -1; i < ROUNDS && !status; i++) {
        serve_row_t row;
        status = bench_round(&session, http, &api, &metrics, i < 0 ? 2 : rounds[i].clients,
                             i < 0 ? 256 : rounds[i].step_rows, i + 1, &row);
        if (status || i < 0) continue;
        rows[(*n_rows)++] = row;
        fprintf(stderr, "moira bench serve: %d clients, steps of %lld: %.1f tokens/s\n",
                row.clients, (long long)row.step_rows, row.tokens_per_s);
    }
    serve_http_stop(http);
    generate_session_close(&session);
    serve_metrics_destroy(&metrics);
    return status;
}

int moira_bench_serve(const moira_bench_args_t *args) {
    serve_row_t rows[ROUNDS];
    int n_rows = 0;
    char base[] = "/tmp/moira-bench-serve-XXXXXX", dir[64];
    moira_status_t status = MOIRA_OK_STATUS;
    if (args->model) {
        status = bench_model(args, args->model, rows, &n_rows);
    } else if (!mkdtemp(base)) {
        status = moira_status_make(MOIRA_CODE_IO, "cannot make a folder under /tmp");
    } else {
        snprintf(dir, sizeof(dir), "%s/model", base);
        status = write_model(dir);
        if (!status) status = bench_model(args, dir, rows, &n_rows);
        moira_remove_tree(base);
    }
    if (!status) print_rows(rows, n_rows, args->json);
    moira_runtime_shutdown();
    return moira_status_report(status);
}
