/* What `GET /metrics` reports, in Prometheus' text format: requests running and queued, prompt
 * and generated tokens, time to first token and inter-token latency as histograms, sequences per
 * engine step, how busy the device that runs the model is, and the prompt tokens a cached prefix
 * spared. The engine loop and the connections update it from their threads. */
#ifndef MOIRA_RUNTIME_SERVER_METRICS_H
#define MOIRA_RUNTIME_SERVER_METRICS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define SERVE_HISTOGRAM_BUCKETS 14

typedef struct serve_histogram {
    const double *bounds; /* static, SERVE_HISTOGRAM_BUCKETS upper bounds, ascending */
    uint64_t counts[SERVE_HISTOGRAM_BUCKETS + 1]; /* the last is +Inf */
    double sum;
    uint64_t count;
} serve_histogram_t;

/* A device's busy time, for the busy fraction. */
typedef struct serve_device_busy {
    const char *device; /* borrowed: the device's name */
    double busy_s;
} serve_device_busy_t;

typedef struct serve_metrics {
    pthread_mutex_t lock;
    const char *device; /* borrowed: the device that runs the model */
    double started;     /* when the engine was ready */
    int64_t running, queued;
    uint64_t requests_ok, requests_bad, requests_rejected, requests_failed, requests_cancelled;
    uint64_t prompt_tokens, generated_tokens, cached_prompt_tokens;
    double busy_s; /* engine steps' time */
    serve_histogram_t ttft, itl, batch;
} serve_metrics_t;

void serve_metrics_init(serve_metrics_t *metrics, const char *device);
void serve_metrics_destroy(serve_metrics_t *metrics);

/* Adds `value` to a histogram; call with the metrics' lock held. */
void serve_histogram_observe(serve_histogram_t *histogram, double value);

/* The Prometheus text (malloc'd, owned by the caller); NULL when out of memory. `experts` (n of
 * them) are the busy times of a placement's expert devices, reported beside the engine's. */
char *serve_metrics_render(serve_metrics_t *metrics, double now, const serve_device_busy_t *experts,
                           int n, size_t *len);

#endif
