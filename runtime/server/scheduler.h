/* Continuous batching: one engine loop runs every request the server accepted. Each step feeds
 * one token of every decoding sequence and, in the rows left, a chunk of the prompts still being
 * prefilled, so a long prompt joins the batch without stalling the streams already running; a
 * finished or cancelled sequence leaves at once and its slot takes the next queued request.
 *
 * A slot keeps the tokens its cache holds after its request ends. A new request goes to the free
 * slot whose cached tokens share the longest prefix with its prompt (a shared system prompt, the
 * earlier turns of a chat), and only the rest of the prompt is prefilled. */
#ifndef MOIRA_RUNTIME_SERVER_SCHEDULER_H
#define MOIRA_RUNTIME_SERVER_SCHEDULER_H

#include "runtime/engine/engine.h"
#include "runtime/server/metrics.h"
#include "runtime/server/serve_request.h"

typedef struct serve_scheduler serve_scheduler_t;

typedef struct serve_scheduler_options {
    int max_queue; /* requests waiting for a slot; more are refused */
    /* Tokens one step may run (0: the engine's max_rows): a running sequence's next token waits
     * for the prompt chunk that shares its step, so a smaller budget evens out inter-token
     * latency and a larger one brings first tokens sooner. At least the engine's sequences. */
    int64_t step_rows;
    /* Sequences generating at once (0: all the engine's). The engine's other sequences only keep
     * the caches of finished requests for the prefix cache. */
    int max_running;
} serve_scheduler_options_t;

typedef enum serve_submit_result {
    SERVE_SUBMITTED,
    SERVE_QUEUE_FULL,
    SERVE_STOPPING,
} serve_submit_result_t;

/* Starts the engine loop over `engine`'s sequences (one batch slot each). `engine`, `model` and
 * `metrics` are borrowed and must outlive the scheduler. Caller destroys *out. */
moira_status_t serve_scheduler_create(moira_engine_t *engine, const moira_model_files_t *model,
                                      serve_metrics_t *metrics,
                                      const serve_scheduler_options_t *options,
                                      serve_scheduler_t **out);

/* Queues `request` (the scheduler takes its own reference when it accepts it). */
serve_submit_result_t serve_scheduler_submit(serve_scheduler_t *scheduler,
                                             serve_request_t *request);

/* Copies the engine's expert load (moira_engine_expert_load: [layers, experts]) into `out`
 * between two steps; false when the engine does not record it. */
bool serve_scheduler_read_expert_load(serve_scheduler_t *scheduler, double *out, size_t count);

/* With a placement, adds each expert device's measured speed per step since the start to
 * `profile` (moira_exec_stats_add_speeds); nothing on one device. */
moira_status_t serve_scheduler_add_speeds(serve_scheduler_t *scheduler, moira_profile_t *profile);

/* Time the devices of a placement spent on routed experts since start (the executor's busy time of
 * each expert device, targets on one device summed), copied between two steps into `out`
 * (at most `max`); returns how many. 0 on one device. */
int serve_scheduler_read_device_busy(serve_scheduler_t *scheduler, serve_device_busy_t *out,
                                     int max);

/* Stops accepting, fails what waits in the queue, lets running requests finish for at most
 * `grace_s` seconds and then cancels them, and ends the loop. */
void serve_scheduler_stop(serve_scheduler_t *scheduler, double grace_s);

/* Stops (with no grace) if still running, then frees. Accepts NULL. */
void serve_scheduler_destroy(serve_scheduler_t *scheduler);

#endif
