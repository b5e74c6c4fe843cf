/* The server's counters and histograms in Prometheus' text format (runtime/server/metrics.h). */
#include "runtime/server/metrics.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Seconds from a millisecond (a fast decode step) to a minute (a long prompt behind a queue). */
static const double latency_bounds[SERVE_HISTOGRAM_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60};
/* Sequences in one engine step. */
static const double batch_bounds[SERVE_HISTOGRAM_BUCKETS] = {1,  2,  3,  4,  6,  8,   12,
                                                             16, 24, 32, 48, 64, 128, 256};

void serve_metrics_init(serve_metrics_t *m, const char *device) {
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
    m->device = device;
    m->ttft.bounds = latency_bounds;
    m->itl.bounds = latency_bounds;
    m->batch.bounds = batch_bounds;
}

void serve_metrics_destroy(serve_metrics_t *m) {
    pthread_mutex_destroy(&m->lock);
}

void serve_histogram_observe(serve_histogram_t *h, double value) {
    int b = 0;
    while (b < SERVE_HISTOGRAM_BUCKETS && value > h->bounds[b])
        b++;
    h->counts[b]++;
    h->sum += value;
    h->count++;
}

/* Text that grows as the exposition is written. */
typedef struct text {
    char *data;
    size_t len, capacity;
    bool failed;
} text_t;

/* Appends printf-style text, growing the buffer; a failure sticks and is reported once. */
static void add(text_t *t, const char *format, ...) {
    if (t->failed) return;
    for (;;) {
        va_list args;
        va_start(args, format);
        int n = vsnprintf(t->data + t->len, t->capacity - t->len, format, args);
        va_end(args);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < t->capacity - t->len) {
            t->len += (size_t)n;
            return;
        }
        char *grown = realloc(t->data, t->capacity * 2 + (size_t)n);
        if (!grown) {
            t->failed = true;
            return;
        }
        t->data = grown;
        t->capacity = t->capacity * 2 + (size_t)n;
    }
}

static void add_metric(text_t *t, const char *name, const char *type, const char *help,
                       double value) {
    add(t, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, value);
}

static void add_histogram(text_t *t, const char *name, const char *help,
                          const serve_histogram_t *h) {
    add(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cumulative = 0;
    for (int b = 0; b < SERVE_HISTOGRAM_BUCKETS; b++) {
        cumulative += h->counts[b];
        add(t, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[b], (unsigned long long)cumulative);
    }
    cumulative += h->counts[SERVE_HISTOGRAM_BUCKETS];
    add(t, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n", name,
        (unsigned long long)cumulative, name, h->sum, name, (unsigned long long)h->count);
}

char *serve_metrics_render(serve_metrics_t *m, double now, const serve_device_busy_t *experts,
                           int n, size_t *len) {
    text_t t = {.capacity = 8192};
    t.data = malloc(t.capacity);
    if (!t.data) return NULL;
    pthread_mutex_lock(&m->lock);
    add_metric(&t, "moira_requests_running", "gauge", "Requests being generated.",
               (double)m->running);
    add_metric(&t, "moira_requests_queued", "gauge", "Requests waiting for a batch slot.",
               (double)m->queued);
    add(&t, "# HELP moira_requests_total Requests by outcome.\n# TYPE moira_requests_total "
            "counter\n");
    add(&t, "moira_requests_total{outcome=\"ok\"} %llu\n", (unsigned long long)m->requests_ok);
    add(&t, "moira_requests_total{outcome=\"bad_request\"} %llu\n",
        (unsigned long long)m->requests_bad);
    add(&t, "moira_requests_total{outcome=\"rejected\"} %llu\n",
        (unsigned long long)m->requests_rejected);
    add(&t, "moira_requests_total{outcome=\"cancelled\"} %llu\n",
        (unsigned long long)m->requests_cancelled);
    add(&t, "moira_requests_total{outcome=\"failed\"} %llu\n",
        (unsigned long long)m->requests_failed);
    add_metric(&t, "moira_prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
               (double)m->prompt_tokens);
    add_metric(&t, "moira_prompt_tokens_cached_total", "counter",
               "Prompt tokens a cached prefix spared from prefill.",
               (double)m->cached_prompt_tokens);
    add_metric(&t, "moira_generation_tokens_total", "counter", "Tokens generated.",
               (double)m->generated_tokens);
    add_histogram(&t, "moira_time_to_first_token_seconds",
                  "From a request's arrival to its first generated token.", &m->ttft);
    add_histogram(&t, "moira_inter_token_latency_seconds",
                  "Between consecutive tokens of one request.", &m->itl);
    add_histogram(&t, "moira_batch_size", "Sequences in one engine step.", &m->batch);
    double up = m->started > 0 ? now - m->started : 0;
    add(&t,
        "# HELP moira_device_busy_fraction Share of the time since start a device was busy: the "
        "engine's device in steps, a placement's expert devices in their experts' work.\n# TYPE "
        "moira_device_busy_fraction gauge\n"
        "moira_device_busy_fraction{device=\"%s\",role=\"engine\"} %.6f\n",
        m->device ? m->device : "", up > 0 ? m->busy_s / up : 0.0);
    for (int i = 0; i < n; i++)
        add(&t, "moira_device_busy_fraction{device=\"%s\",role=\"experts\"} %.6f\n",
            experts[i].device, up > 0 ? experts[i].busy_s / up : 0.0);
    pthread_mutex_unlock(&m->lock);
    if (t.failed) {
        free(t.data);
        return NULL;
    }
    *len = t.len;
    return t.data;
}
