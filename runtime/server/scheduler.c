/* The engine loop: continuous batching with a prefix cache (runtime/server/scheduler.h). */
#include "runtime/server/scheduler.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/clock.h"

/* A batch slot: one of the engine's sequences, and the request it runs. */
typedef struct serve_slot {
    int index;
    serve_request_t *request;       /* a reference, or NULL when free */
    moira_completion_t *completion; /* owned */
    int32_t *ids;                   /* owned [context]: the tokens the slot's cache holds */
    int64_t n_ids;
    bool decoding;     /* the prompt is in; `next` is the token to feed */
    int32_t next;      /* valid while decoding */
    double last_token; /* when the request's latest token was chosen */
    uint64_t admitted; /* admission order: earlier prompts prefill first */
    uint64_t used;     /* when the slot last took a request: the oldest free slot is reused */
} serve_slot_t;

struct serve_scheduler {
    moira_engine_t *engine;           /* borrowed */
    const moira_model_files_t *model; /* borrowed */
    serve_metrics_t *metrics;         /* borrowed */
    serve_scheduler_options_t options;
    int64_t context, max_rows, vocab;
    serve_slot_t *slots; /* owned [n_slots] */
    int n_slots;
    int max_running;              /* slots that may hold a request at once; the rest keep caches */
    moira_engine_input_t *inputs; /* owned [n_slots]: one step's inputs */
    serve_slot_t **input_slots;   /* owned [n_slots]: the slot of each input */
    uint64_t admissions;

    pthread_mutex_t step_lock; /* held through each engine step: readers of the engine's
                                  counts wait for the step to end */
    pthread_mutex_t lock;      /* guards what follows */
    pthread_cond_t wake;
    serve_request_t **queue; /* owned ring [max_queue] of references */
    int queue_head, queue_count;
    bool stopping;
    double stop_deadline;
    pthread_t thread;
    bool thread_started;
};

/* Streams a slot's new text to its request's connection. */
static bool on_text(void *context, const char *text, size_t len) {
    serve_slot_t *slot = context;
    int64_t count;
    moira_completion_ids(slot->completion, &count);
    serve_request_append(slot->request, text, len, count);
    return true;
}

/* How many leading tokens two id lists share. */
static int64_t common_prefix(const int32_t *a, int64_t na, const int32_t *b, int64_t nb) {
    int64_t n = 0;
    while (n < na && n < nb && a[n] == b[n])
        n++;
    return n;
}

/* Slots holding a request. */
static int running_count(const serve_scheduler_t *s) {
    int n = 0;
    for (int i = 0; i < s->n_slots; i++)
        n += s->slots[i].request != NULL;
    return n;
}

/* A shared prefix shorter than this (a BOS token, a chat template's opening) is not worth
 * overwriting another cache for. */
#define MIN_PREFIX_REUSE 16

/* The free slot for `r`: the one whose cached tokens share the longest prefix with its prompt,
 * else the one unused longest (its cache is the least likely to be asked for again). A short
 * shared prefix counts only when taking it loses nothing (the slot's whole cache is that prefix),
 * so an unrelated request does not overwrite a conversation's cache for its BOS token. At least
 * one prompt token is always left to prefill, since its logits choose the first new token. */
static serve_slot_t *choose_slot(serve_scheduler_t *s, const serve_request_t *r, int64_t *reuse) {
    serve_slot_t *best = NULL;
    int64_t best_score = 0;
    *reuse = 0;
    if (running_count(s) >= s->max_running) return NULL;
    for (int i = 0; i < s->n_slots; i++) {
        serve_slot_t *slot = &s->slots[i];
        if (slot->request) continue;
        int64_t n = common_prefix(slot->ids, slot->n_ids, r->prompt, r->n_prompt - 1);
        int64_t score = n >= MIN_PREFIX_REUSE || n == slot->n_ids ? n : 0;
        if (!best || score > best_score || (score == best_score && slot->used < best->used)) {
            best = slot;
            best_score = score;
            *reuse = n;
        }
    }
    return best;
}

/* Ends a slot's request (the slot keeps its cached tokens for later prefixes). */
static void release_slot(serve_scheduler_t *s, serve_slot_t *slot, const char *finish_reason,
                         const char *error) {
    int64_t count;
    moira_completion_ids(slot->completion, &count);
    serve_request_t *r = slot->request;
    bool cancelled = serve_request_cancelled(r);
    serve_request_finish(r, finish_reason, count, error);
    pthread_mutex_lock(&s->metrics->lock);
    s->metrics->running--;
    if (cancelled)
        s->metrics->requests_cancelled++;
    else if (error)
        s->metrics->requests_failed++;
    else
        s->metrics->requests_ok++;
    s->metrics->prompt_tokens += (uint64_t)r->n_prompt;
    s->metrics->cached_prompt_tokens += (uint64_t)r->cached_tokens;
    pthread_mutex_unlock(&s->metrics->lock);
    serve_request_release(r);
    slot->request = NULL;
    slot->decoding = false;
}

/* Gives a queued request a slot: its cached prefix is kept, the rest of the cache dropped. */
static void admit(serve_scheduler_t *s, serve_request_t *r, serve_slot_t *slot, int64_t reuse) {
    slot->request = r;
    slot->decoding = false;
    slot->admitted = ++s->admissions;
    slot->used = slot->admitted;
    moira_engine_truncate(s->engine, slot->index, reuse);
    slot->n_ids = reuse;
    r->cached_tokens = reuse;
    pthread_mutex_lock(&r->lock);
    r->running = true;
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_lock(&s->metrics->lock);
    s->metrics->running++;
    pthread_mutex_unlock(&s->metrics->lock);
    moira_status_t status = moira_completion_start(slot->completion, &r->params, on_text, slot);
    if (status) {
        release_slot(s, slot, NULL, moira_status_message(status));
        moira_status_free(status);
    }
}

/* The oldest queued request (the queue must hold one); the caller holds the lock. */
static serve_request_t *queue_pop(serve_scheduler_t *s) {
    serve_request_t *r = s->queue[s->queue_head];
    s->queue_head = (s->queue_head + 1) % s->options.max_queue;
    s->queue_count--;
    pthread_mutex_lock(&s->metrics->lock);
    s->metrics->queued--;
    pthread_mutex_unlock(&s->metrics->lock);
    return r;
}

/* Under the lock: moves queued requests into free slots, dropping those already cancelled, and
 * waits while there is nothing to do. False when the loop should end. */
static bool take_work(serve_scheduler_t *s) {
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (s->queue_count) {
            serve_request_t *head = s->queue[s->queue_head];
            int64_t reuse;
            serve_slot_t *slot =
                serve_request_cancelled(head) ? NULL : choose_slot(s, head, &reuse);
            if (!slot && !serve_request_cancelled(head)) break;
            queue_pop(s);
            if (slot) {
                admit(s, head, slot, reuse);
            } else {
                serve_request_finish(head, "stop", 0, NULL);
                pthread_mutex_lock(&s->metrics->lock);
                s->metrics->requests_cancelled++;
                pthread_mutex_unlock(&s->metrics->lock);
                serve_request_release(head);
            }
        }
        if (running_count(s)) break;
        if (s->stopping) {
            pthread_mutex_unlock(&s->lock);
            return false;
        }
        pthread_cond_wait(&s->wake, &s->lock);
    }
    bool past_grace = s->stopping && moira_now_seconds() > s->stop_deadline;
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->n_slots; i++) {
        serve_slot_t *slot = &s->slots[i];
        if (!slot->request) continue;
        if (past_grace) {
            serve_request_refuse(slot->request, "the server stopped before this request finished");
            release_slot(s, slot, NULL, "the server stopped before this request finished");
        } else if (serve_request_cancelled(slot->request))
            release_slot(s, slot, "stop", NULL);
    }
    return true;
}

/* One step's inputs: a token of every decoding slot, then prompt chunks in admission order in
 * the rows left. Returns the number of inputs. */
static int gather_step(serve_scheduler_t *s) {
    int n = 0;
    int64_t rows = 0;
    for (int i = 0; i < s->n_slots; i++) {
        serve_slot_t *slot = &s->slots[i];
        if (!slot->request || !slot->decoding) continue;
        s->inputs[n] = (moira_engine_input_t){.sequence = slot->index, .ids = &slot->next, .n = 1};
        s->input_slots[n++] = slot;
        rows++;
    }
    for (;;) {
        serve_slot_t *first = NULL;
        for (int i = 0; i < s->n_slots; i++) {
            serve_slot_t *slot = &s->slots[i];
            bool taken = false;
            for (int k = 0; k < n; k++)
                taken |= s->input_slots[k] == slot;
            if (slot->request && !slot->decoding && !taken &&
                (!first || slot->admitted < first->admitted))
                first = slot;
        }
        if (!first || rows == s->max_rows) break;
        int64_t left = first->request->n_prompt - first->n_ids;
        int64_t chunk = left < s->max_rows - rows ? left : s->max_rows - rows;
        s->inputs[n] = (moira_engine_input_t){
            .sequence = first->index, .ids = first->request->prompt + first->n_ids, .n = chunk};
        s->input_slots[n++] = first;
        rows += chunk;
    }
    return n;
}

/* One latency into a histogram of the metrics. */
static void observe(serve_scheduler_t *s, serve_histogram_t *h, double value) {
    pthread_mutex_lock(&s->metrics->lock);
    serve_histogram_observe(h, value);
    pthread_mutex_unlock(&s->metrics->lock);
}

/* After a step: records what each slot's cache now holds; a slot whose prompt is complete
 * chooses its next token from the logits, and its request ends when the completion does. */
static void finish_step(serve_scheduler_t *s, int n, const float *logits, double now) {
    for (int i = 0; i < n; i++) {
        serve_slot_t *slot = s->input_slots[i];
        const moira_engine_input_t *in = &s->inputs[i];
        memcpy(slot->ids + slot->n_ids, in->ids, (size_t)in->n * sizeof(int32_t));
        slot->n_ids += in->n;
        if (!slot->decoding && slot->n_ids < slot->request->n_prompt) continue;
        bool first = !slot->decoding, finished = false;
        moira_status_t status =
            moira_completion_next(slot->completion, logits + i * s->vocab, &slot->next, &finished);
        if (first) {
            pthread_mutex_lock(&slot->request->lock);
            slot->request->first_token = now;
            pthread_mutex_unlock(&slot->request->lock);
            observe(s, &s->metrics->ttft, now - slot->request->submitted);
        } else {
            observe(s, &s->metrics->itl, now - slot->last_token);
        }
        slot->last_token = now;
        pthread_mutex_lock(&s->metrics->lock);
        s->metrics->generated_tokens++;
        pthread_mutex_unlock(&s->metrics->lock);
        slot->decoding = true;
        if (status) {
            release_slot(s, slot, NULL, moira_status_message(status));
            moira_status_free(status);
        } else if (finished) {
            release_slot(s, slot, moira_completion_finish_reason(slot->completion), NULL);
        }
    }
}

/* A failed step fails the requests it carried; their slots' caches are no longer known good. */
static void fail_step(serve_scheduler_t *s, int n, moira_status_t status) {
    for (int i = 0; i < n; i++) {
        serve_slot_t *slot = s->input_slots[i];
        if (!slot->request) continue;
        moira_engine_reset(s->engine, slot->index);
        slot->n_ids = 0;
        release_slot(s, slot, NULL, moira_status_message(status));
    }
    moira_status_free(status);
}

/* The engine loop's thread: take work, run a step, hand out its tokens, until stopped. */
static void *engine_loop(void *arg) {
    serve_scheduler_t *s = arg;
    while (take_work(s)) {
        int n = gather_step(s);
        if (!n) continue;
        double start = moira_now_seconds();
        const float *logits = NULL;
        pthread_mutex_lock(&s->step_lock);
        moira_status_t status = moira_engine_step(s->engine, s->inputs, n, &logits);
        pthread_mutex_unlock(&s->step_lock);
        double end = moira_now_seconds();
        pthread_mutex_lock(&s->metrics->lock);
        s->metrics->busy_s += end - start;
        serve_histogram_observe(&s->metrics->batch, n);
        pthread_mutex_unlock(&s->metrics->lock);
        if (status)
            fail_step(s, n, status);
        else
            finish_step(s, n, logits, end);
    }
    return NULL;
}

moira_status_t serve_scheduler_create(moira_engine_t *engine, const moira_model_files_t *model,
                                      serve_metrics_t *metrics,
                                      const serve_scheduler_options_t *options,
                                      serve_scheduler_t **out) {
    *out = NULL;
    const moira_engine_options_t *eo = moira_engine_options(engine);
    int64_t step_rows = options->step_rows > 0 && options->step_rows < eo->max_rows
                            ? options->step_rows
                            : eo->max_rows;
    int max_running = options->max_running > 0 && options->max_running < eo->max_sequences
                          ? options->max_running
                          : eo->max_sequences;
    if (step_rows < max_running)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "serve: a step of %lld tokens cannot hold a token of each of %d "
                                 "sequences",
                                 (long long)step_rows, max_running);
    serve_scheduler_t *s = calloc(1, sizeof(*s));
    if (!s) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "serve: out of memory");
    s->engine = engine;
    s->model = model;
    s->metrics = metrics;
    s->options = *options;
    if (s->options.max_queue < 1) s->options.max_queue = 1;
    s->context = eo->context;
    s->max_rows = step_rows;
    s->vocab = moira_engine_vocab(engine);
    s->n_slots = eo->max_sequences;
    s->max_running = max_running;
    pthread_mutex_init(&s->step_lock, NULL);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    s->slots = calloc((size_t)s->n_slots, sizeof(*s->slots));
    s->inputs = calloc((size_t)s->n_slots, sizeof(*s->inputs));
    s->input_slots = calloc((size_t)s->n_slots, sizeof(*s->input_slots));
    s->queue = calloc((size_t)s->options.max_queue, sizeof(*s->queue));
    moira_status_t status = MOIRA_OK_STATUS;
    if (!s->slots || !s->inputs || !s->input_slots || !s->queue)
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "serve: out of memory");
    for (int i = 0; !status && i < s->n_slots; i++) {
        s->slots[i].index = i;
        s->slots[i].ids = malloc((size_t)s->context * sizeof(int32_t));
        if (!s->slots[i].ids)
            status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "serve: out of memory");
        if (!status) status = moira_completion_create(model, &s->slots[i].completion);
        if (!status) moira_engine_reset(engine, i);
    }
    if (!status && pthread_create(&s->thread, NULL, engine_loop, s))
        status = moira_status_make(MOIRA_CODE_INTERNAL, "serve: cannot start the engine loop");
    s->thread_started = !status;
    if (status) {
        serve_scheduler_destroy(s);
        return status;
    }
    *out = s;
    return MOIRA_OK_STATUS;
}

serve_submit_result_t serve_scheduler_submit(serve_scheduler_t *s, serve_request_t *r) {
    pthread_mutex_lock(&s->lock);
    serve_submit_result_t result = SERVE_SUBMITTED;
    if (s->stopping)
        result = SERVE_STOPPING;
    else if (s->queue_count == s->options.max_queue)
        result = SERVE_QUEUE_FULL;
    if (result == SERVE_SUBMITTED) {
        serve_request_retain(r);
        s->queue[(s->queue_head + s->queue_count++) % s->options.max_queue] = r;
        pthread_mutex_lock(&s->metrics->lock);
        s->metrics->queued++;
        pthread_mutex_unlock(&s->metrics->lock);
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->lock);
    return result;
}

bool serve_scheduler_read_expert_load(serve_scheduler_t *s, double *out, size_t count) {
    pthread_mutex_lock(&s->step_lock);
    const double *load = moira_engine_expert_load(s->engine);
    if (load) memcpy(out, load, count * sizeof(double));
    pthread_mutex_unlock(&s->step_lock);
    return load != NULL;
}

moira_status_t serve_scheduler_add_speeds(serve_scheduler_t *s, moira_profile_t *profile) {
    pthread_mutex_lock(&s->step_lock);
    const moira_exec_stats_t *stats = moira_engine_placement_stats(s->engine);
    const moira_engine_placement_t *placement = moira_engine_options(s->engine)->placement;
    moira_status_t status = stats && placement
                                ? moira_exec_stats_add_speeds(stats, placement->topology, profile)
                                : MOIRA_OK_STATUS;
    pthread_mutex_unlock(&s->step_lock);
    return status;
}

int serve_scheduler_read_device_busy(serve_scheduler_t *s, serve_device_busy_t *out, int max) {
    int n = 0;
    pthread_mutex_lock(&s->step_lock);
    const moira_exec_stats_t *stats = moira_engine_placement_stats(s->engine);
    for (int t = 0; stats && t < stats->n_targets; t++) {
        const char *name = stats->targets[t].device_name;
        int k = 0;
        while (k < n && strcmp(out[k].device, name))
            k++;
        if (k == n && n == max) continue;
        if (k == n) out[n++] = (serve_device_busy_t){.device = name};
        out[k].busy_s += stats->targets[t].busy_s;
    }
    pthread_mutex_unlock(&s->step_lock);
    return n;
}

void serve_scheduler_stop(serve_scheduler_t *s, double grace_s) {
    pthread_mutex_lock(&s->lock);
    if (!s->stopping) {
        s->stopping = true;
        s->stop_deadline = moira_now_seconds() + grace_s;
        while (s->queue_count) {
            serve_request_t *r = queue_pop(s);
            serve_request_refuse(r, "the server is shutting down");
            pthread_mutex_lock(&s->metrics->lock);
            s->metrics->requests_rejected++;
            pthread_mutex_unlock(&s->metrics->lock);
            serve_request_release(r);
        }
    }
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    if (s->thread_started) pthread_join(s->thread, NULL);
    s->thread_started = false;
}

void serve_scheduler_destroy(serve_scheduler_t *s) {
    if (!s) return;
    serve_scheduler_stop(s, 0);
    for (int i = 0; s->slots && i < s->n_slots; i++) {
        if (s->slots[i].request)
            serve_request_finish(s->slots[i].request, NULL, 0, "the server stopped");
        serve_request_release(s->slots[i].request);
        moira_completion_destroy(s->slots[i].completion);
        free(s->slots[i].ids);
    }
    pthread_mutex_destroy(&s->step_lock);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->wake);
    free(s->slots);
    free(s->inputs);
    free(s->input_slots);
    free(s->queue);
    free(s);
}
