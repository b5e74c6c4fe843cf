/* Events: one-shot completion flags that order work across queues and devices.
 *
 * An event belongs to no device: any backend's queue can signal it (when the queue reaches the
 * point where it was enqueued) and any queue or host thread can wait for it. That is what lets a
 * cpu queue wait for an OpenCL transfer without either backend knowing the other. Events are
 * reference counted; the creator holds one reference. */
#ifndef MOIRA_RUNTIME_EVENT_H
#define MOIRA_RUNTIME_EVENT_H

#include <stdbool.h>

#include "runtime/status.h"

typedef struct moira_event moira_event_t;

/* Creates an unsignalled event. Caller releases it with moira_event_release. */
moira_status_t moira_event_create(moira_event_t **out_event);

void moira_event_retain(moira_event_t *event);
void moira_event_release(moira_event_t *event);

/* Marks the event done. `failure` (owned by the event after the call; may be OK) is what waiters
 * see: a queue that failed before reaching the event passes its error on. Signalling twice keeps
 * the first result. */
void moira_event_signal(moira_event_t *event, moira_status_t failure);

/* Blocks the calling thread until the event is signalled; returns a copy of its failure status
 * (caller owns it), or OK. */
moira_status_t moira_event_wait(moira_event_t *event);

/* Whether the event has been signalled. Never blocks. */
bool moira_event_is_signalled(moira_event_t *event);

#endif
