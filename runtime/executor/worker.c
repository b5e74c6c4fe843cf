/* The executor's worker threads (runtime/executor/worker.h). */
#include "runtime/executor/worker.h"

#include <string.h>

/* Waits for a job, runs it outside the lock, clears it to say it is done. */
static void *worker_main(void *raw) {
    moira_exec_worker_t *w = raw;
    pthread_mutex_lock(&w->mutex);
    for (;;) {
        while (!w->job && !w->stopping)
            pthread_cond_wait(&w->changed, &w->mutex);
        if (!w->job) break;
        moira_exec_job_fn job = w->job;
        void *context = w->context;
        pthread_mutex_unlock(&w->mutex);
        job(context);
        pthread_mutex_lock(&w->mutex);
        w->job = NULL;
        pthread_cond_broadcast(&w->changed);
    }
    pthread_mutex_unlock(&w->mutex);
    return NULL;
}

/* One thread per target for the executor's lifetime: no thread start per layer. */
moira_status_t moira_exec_worker_start(moira_exec_worker_t *w) {
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mutex, NULL);
    pthread_cond_init(&w->changed, NULL);
    int err = pthread_create(&w->thread, NULL, worker_main, w);
    if (err != 0) {
        pthread_mutex_destroy(&w->mutex);
        pthread_cond_destroy(&w->changed);
        return moira_thread_start_error(err, "an executor thread");
    }
    w->started = true;
    return MOIRA_OK_STATUS;
}

/* Never blocks: the caller goes on to post the other targets' stages. */
void moira_exec_worker_post(moira_exec_worker_t *w, moira_exec_job_fn job, void *context) {
    pthread_mutex_lock(&w->mutex);
    w->job = job;
    w->context = context;
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->mutex);
}

/* The join point of a layer: the host needs every target's partial sums. */
void moira_exec_worker_wait(moira_exec_worker_t *w) {
    pthread_mutex_lock(&w->mutex);
    while (w->job)
        pthread_cond_wait(&w->changed, &w->mutex);
    pthread_mutex_unlock(&w->mutex);
}

/* Lets a posted job finish first, so no stage is cut off half way. */
void moira_exec_worker_stop(moira_exec_worker_t *w) {
    if (!w->started) return;
    pthread_mutex_lock(&w->mutex);
    while (w->job)
        pthread_cond_wait(&w->changed, &w->mutex);
    w->stopping = true;
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->mutex);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->mutex);
    pthread_cond_destroy(&w->changed);
    w->started = false;
}
