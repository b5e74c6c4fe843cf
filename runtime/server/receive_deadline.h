/* A deadline for receiving each request: a client gets `receive_s` seconds from opening a
 * connection (or from the end of its previous answer) to send a whole request, headers and body.
 * libmicrohttpd's idle timeout restarts with every byte, so a client that sends one byte every
 * few seconds would hold its connection (and its thread) forever; a watchdog thread shuts such a
 * socket down. */
#ifndef MOIRA_RUNTIME_SERVER_RECEIVE_DEADLINE_H
#define MOIRA_RUNTIME_SERVER_RECEIVE_DEADLINE_H

#include "runtime/status.h"

typedef struct serve_deadlines serve_deadlines_t;
typedef struct serve_deadline serve_deadline_t; /* one connection's */

/* Starts the watchdog for up to `capacity` connections at once. Caller destroys *out. */
moira_status_t serve_deadlines_create(double receive_s, int capacity, serve_deadlines_t **out);

/* Stops the watchdog and frees. Accepts NULL. */
void serve_deadlines_destroy(serve_deadlines_t *deadlines);

/* A connection on socket `fd` opened: its first request is due. NULL when the table is full (the
 * connection then has no deadline beyond the idle timeout). */
serve_deadline_t *serve_deadlines_open(serve_deadlines_t *deadlines, int fd);

/* Its request arrived whole: no deadline while it is answered. Accepts NULL. */
void serve_deadlines_received(serve_deadlines_t *deadlines, serve_deadline_t *deadline);

/* Its answer is done and the connection is kept alive: the next request is due. Accepts NULL. */
void serve_deadlines_rearm(serve_deadlines_t *deadlines, serve_deadline_t *deadline);

/* The connection closed: forget its socket. Accepts NULL. */
void serve_deadlines_close(serve_deadlines_t *deadlines, serve_deadline_t *deadline);

#endif
