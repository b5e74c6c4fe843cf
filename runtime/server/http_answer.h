/* Answering a generation over HTTP: the whole completion once it is done, or its text streamed
 * as server-sent events while it is generated. Both watch their client: one that leaves cancels
 * its request, and the connection's idle timeout is lifted only while tokens are awaited. */
#ifndef MOIRA_RUNTIME_SERVER_HTTP_ANSWER_H
#define MOIRA_RUNTIME_SERVER_HTTP_ANSWER_H

#include <microhttpd.h>

#include "runtime/server/openai_api.h"

/* Seconds a connection may sit idle (sending nothing, or being sent nothing) before it is closed:
 * a guard against clients that open connections and dribble. A connection answering a
 * generation is exempt while it waits for tokens (a queued request may wait minutes); it watches
 * its client itself. */
#define SERVE_IDLE_TIMEOUT_S 30

/* Queues `text` (owned; NULL means out of memory, answered as a 500) with its content type and
 * optionally one more header. */
enum MHD_Result serve_answer_text(struct MHD_Connection *connection, unsigned status,
                                  const char *type, char *text, const char *header,
                                  const char *value);

/* Streams `call`'s generation (taken over: *call is emptied) as server-sent events. */
enum MHD_Result serve_answer_stream(struct MHD_Connection *connection, serve_api_call_t *call);

/* Waits for `call`'s whole generation (borrowed) and answers it; MHD_NO when the client left. */
enum MHD_Result serve_answer_whole(struct MHD_Connection *connection, serve_api_call_t *call);

#endif
