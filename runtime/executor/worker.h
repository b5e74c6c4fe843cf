/* A worker thread that runs one job at a time for the executor: each target's expert stage runs
 * on its own worker, so every device's blocking calls (uploads, its queue's finish) proceed
 * concurrently and the stage's wall time is that device's alone. */
#ifndef MOIRA_RUNTIME_EXECUTOR_WORKER_H
#define MOIRA_RUNTIME_EXECUTOR_WORKER_H

#include <pthread.h>
#include <stdbool.h>

#include "runtime/status.h"

typedef void (*moira_exec_job_fn)(void *context);

typedef struct moira_exec_worker {
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    moira_exec_job_fn job; /* the posted job; NULL when idle */
    void *context;         /* borrowed by the job */
    bool started, stopping;
} moira_exec_worker_t;

/* Starts the thread. Stop it with moira_exec_worker_stop. */
moira_status_t moira_exec_worker_start(moira_exec_worker_t *worker);

/* Hands `job(context)` to the worker; the worker must be idle (after start or wait). */
void moira_exec_worker_post(moira_exec_worker_t *worker, moira_exec_job_fn job, void *context);

/* Blocks until the posted job (if any) has returned. */
void moira_exec_worker_wait(moira_exec_worker_t *worker);

/* Waits for the job in hand, ends the thread and releases it. Accepts a never-started worker. */
void moira_exec_worker_stop(moira_exec_worker_t *worker);

#endif
