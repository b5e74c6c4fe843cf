/* The receive deadline's watchdog (runtime/server/receive_deadline.h). */
#include "runtime/server/receive_deadline.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "runtime/clock.h"

/* How often the watchdog looks: a late client is cut within this of its deadline. */
#define CHECK_INTERVAL_S 0.25

struct serve_deadline {
    int fd;
    double due; /* moira_now_seconds() by which the request must have arrived; 0: none */
    bool in_use;
};

struct serve_deadlines {
    double receive_s;
    int capacity;
    serve_deadline_t *entries; /* owned [capacity] */
    pthread_mutex_t lock;      /* guards entries and stopping; held while a socket is shut down,
                                  so a closed connection's descriptor is never touched */
    pthread_cond_t wake;
    bool stopping;
    pthread_t thread;
    bool started;
};

/* Shuts down the sockets past their deadline; the connection's thread then sees the error and
 * closes it (which calls serve_deadlines_close). */
static void *watch(void *arg) {
    serve_deadlines_t *d = arg;
    pthread_mutex_lock(&d->lock);
    while (!d->stopping) {
        double now = moira_now_seconds();
        for (int i = 0; i < d->capacity; i++) {
            serve_deadline_t *e = &d->entries[i];
            if (!e->in_use || !e->due || now < e->due) continue;
            shutdown(e->fd, SHUT_RDWR);
            e->due = 0;
        }
        struct timespec until = moira_monotonic_after(CHECK_INTERVAL_S);
        pthread_cond_timedwait(&d->wake, &d->lock, &until);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

moira_status_t serve_deadlines_create(double receive_s, int capacity, serve_deadlines_t **out) {
    *out = NULL;
    serve_deadlines_t *d = calloc(1, sizeof(*d));
    if (d) d->entries = calloc((size_t)capacity, sizeof(*d->entries));
    if (!d || !d->entries) {
        free(d);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "serve: out of memory");
    }
    d->receive_s = receive_s;
    d->capacity = capacity;
    pthread_mutex_init(&d->lock, NULL);
    moira_monotonic_cond_init(&d->wake);
    if (pthread_create(&d->thread, NULL, watch, d)) {
        serve_deadlines_destroy(d);
        return moira_status_make(MOIRA_CODE_INTERNAL, "serve: cannot start the receive watchdog");
    }
    d->started = true;
    *out = d;
    return MOIRA_OK_STATUS;
}

void serve_deadlines_destroy(serve_deadlines_t *d) {
    if (!d) return;
    pthread_mutex_lock(&d->lock);
    d->stopping = true;
    pthread_cond_signal(&d->wake);
    pthread_mutex_unlock(&d->lock);
    if (d->started) pthread_join(d->thread, NULL);
    pthread_mutex_destroy(&d->lock);
    pthread_cond_destroy(&d->wake);
    free(d->entries);
    free(d);
}

serve_deadline_t *serve_deadlines_open(serve_deadlines_t *d, int fd) {
    serve_deadline_t *found = NULL;
    pthread_mutex_lock(&d->lock);
    for (int i = 0; i < d->capacity && !found; i++)
        if (!d->entries[i].in_use) found = &d->entries[i];
    if (found)
        *found =
            (serve_deadline_t){.fd = fd, .due = moira_now_seconds() + d->receive_s, .in_use = true};
    pthread_mutex_unlock(&d->lock);
    return found;
}

void serve_deadlines_received(serve_deadlines_t *d, serve_deadline_t *e) {
    if (!e) return;
    pthread_mutex_lock(&d->lock);
    e->due = 0;
    pthread_mutex_unlock(&d->lock);
}

void serve_deadlines_rearm(serve_deadlines_t *d, serve_deadline_t *e) {
    if (!e) return;
    pthread_mutex_lock(&d->lock);
    e->due = moira_now_seconds() + d->receive_s;
    pthread_mutex_unlock(&d->lock);
}

void serve_deadlines_close(serve_deadlines_t *d, serve_deadline_t *e) {
    if (!e) return;
    pthread_mutex_lock(&d->lock);
    e->in_use = false;
    e->due = 0;
    pthread_mutex_unlock(&d->lock);
}
