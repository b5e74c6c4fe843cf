#include "runtime/event.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct moira_event {
    atomic_int refs;
    pthread_mutex_t mutex;
    pthread_cond_t done;
    bool signalled;
    moira_status_t failure; /* owned */
};

moira_status_t moira_event_create(moira_event_t **out_event) {
    moira_event_t *event = calloc(1, sizeof(*event));
    if (!event) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate an event");
    atomic_init(&event->refs, 1);
    pthread_mutex_init(&event->mutex, NULL);
    pthread_cond_init(&event->done, NULL);
    *out_event = event;
    return MOIRA_OK_STATUS;
}

void moira_event_retain(moira_event_t *event) {
    atomic_fetch_add(&event->refs, 1);
}

void moira_event_release(moira_event_t *event) {
    if (!event || atomic_fetch_sub(&event->refs, 1) != 1) return;
    pthread_mutex_destroy(&event->mutex);
    pthread_cond_destroy(&event->done);
    moira_status_free(event->failure);
    free(event);
}

void moira_event_signal(moira_event_t *event, moira_status_t failure) {
    pthread_mutex_lock(&event->mutex);
    if (event->signalled) {
        moira_status_free(failure);
    } else {
        event->signalled = true;
        event->failure = failure;
        pthread_cond_broadcast(&event->done);
    }
    pthread_mutex_unlock(&event->mutex);
}

moira_status_t moira_event_wait(moira_event_t *event) {
    pthread_mutex_lock(&event->mutex);
    while (!event->signalled)
        pthread_cond_wait(&event->done, &event->mutex);
    moira_status_t copy = MOIRA_OK_STATUS;
    if (event->failure)
        copy = moira_status_make(moira_status_code(event->failure), "%s",
                                 moira_status_message(event->failure));
    pthread_mutex_unlock(&event->mutex);
    return copy;
}

bool moira_event_is_signalled(moira_event_t *event) {
    pthread_mutex_lock(&event->mutex);
    bool signalled = event->signalled;
    pthread_mutex_unlock(&event->mutex);
    return signalled;
}
