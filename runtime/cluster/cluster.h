/* The cluster: one Moira process per host of a topology, started by mpirun (DESIGN.md §6,
 * "Multi-host"). Rank r runs hosts[r]. This is the whole of what Moira asks of MPI: who is who,
 * a few small messages, and the expert exchange of an MoE layer (moira_cluster_exchange_*).
 * Every wait is bounded: a thread of each rank sends beacons to the others, and a rank waits for
 * a peer only while it hears from it; past the timeout of silence, it ends the job with a message
 * naming the peer instead of hanging every rank. A peer that is slow but alive (a long prefill, a
 * slow device) is waited for. A rank that dies is mpirun's to notice: it ends the others.
 *
 * The calls below are made one at a time, from whichever thread drives the executor (a server's
 * engine thread, say); the executor's device workers never touch MPI. */
#ifndef MOIRA_RUNTIME_CLUSTER_CLUSTER_H
#define MOIRA_RUNTIME_CLUSTER_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/status.h"

typedef struct moira_cluster moira_cluster_t;

/* Whether an MPI launcher (mpirun, mpiexec, srun) started this process: only then does Moira
 * join a job, so a plain `moira run` never initialises MPI. */
bool moira_cluster_launched(void);

/* Joins the job (MPI_Init_thread) and becomes the process's cluster (moira_cluster_current).
 * Errors are UNSUPPORTED (a launcher started us but MPI cannot run). */
moira_status_t moira_cluster_join(int *argc, char ***argv);

/* Leaves the job (MPI_Finalize) after every rank got here; a no-op without a cluster. */
void moira_cluster_leave(void);

/* The process's cluster: NULL when not started by a launcher, or before moira_cluster_join. */
moira_cluster_t *moira_cluster_current(void);

int moira_cluster_rank(const moira_cluster_t *cluster);
int moira_cluster_size(const moira_cluster_t *cluster);

/* Names rank r's host in messages ("rank 1 (node1)"): hosts[r] of the topology, borrowed until
 * leave. Ranks are named by number until this is called. */
void moira_cluster_name_hosts(moira_cluster_t *cluster, const char *const *host_names, int n);

/* Ends this rank with `exit_code` without leaving the job, so mpirun ends the others. */
_Noreturn void moira_cluster_exit(int exit_code);

/* Seconds of silence from a peer after which a wait for it ends the job (default 60). */
void moira_cluster_set_timeout(moira_cluster_t *cluster, double seconds);
double moira_cluster_timeout(const moira_cluster_t *cluster);

/* Ends this rank now with `exit_code`, after printing "moira: rank R (HOST): WHY" on stderr,
 * without leaving the job: mpirun sees a rank end early and ends every other rank (Open MPI
 * prints which). For a failure part way through a collective step, where the ranks can no
 * longer agree on what comes next. A failure before any collective step simply exits the same
 * way (moira_cluster_exit). Does not return. */
_Noreturn void moira_cluster_abort(moira_cluster_t *cluster, int exit_code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Waits until every rank got here (the end of setting up, which takes each rank its own time),
 * ending the job after `timeout_s` of silence from a rank that has not. */
void moira_cluster_barrier(moira_cluster_t *cluster, double timeout_s, const char *what);

/* Every rank offers `value` (a fingerprint of what it is about to run); returns the first rank
 * whose value differs from rank 0's, or -1 when all agree. Bounded by the timeout. */
int moira_cluster_first_different(moira_cluster_t *cluster, uint64_t value, const char *what);

/* Rank `root` sends `bytes` at `data` to every other rank, which receive them into `data`. */
void moira_cluster_broadcast(moira_cluster_t *cluster, int root, void *data, size_t bytes,
                             const char *what);

/* Each rank sends `bytes` to rank `root`, which receives rank r's into out + r * bytes (its own
 * included). Bounded by the timeout (the root names the rank it waits for). */
void moira_cluster_gather(moira_cluster_t *cluster, int root, const void *data, size_t bytes,
                          void *out, const char *what);

/* One all-to-all exchange of bytes: rank r's part of send is send_bytes[r] at send_offsets[r],
 * and what rank r sends here lands at recv_offsets[r]. The counts travel first (each rank
 * tells each other rank how much it sends, point to point, so a silent peer is named), then the
 * payload through MPI_Ialltoallv, which moira_cluster_exchange_wait completes; work can run
 * between the two. recv_bytes[r] is filled by start; a peer announcing more than `recv_capacity`
 * bytes (the room of each rank's block of recv) or a count that is not a multiple of `unit` ends
 * the job before anything is received. Buffers stay untouched until wait returns. Counts above
 * INT32_MAX bytes abort the job (MPI counts are int). */
typedef struct moira_cluster_exchange {
    bool pending; /* started and not yet waited for (the cluster holds the request) */
    double started_s;
    const char *what; /* for the timeout's message; static */
} moira_cluster_exchange_t;

void moira_cluster_exchange_start(moira_cluster_t *cluster, const void *send,
                                  const int64_t *send_bytes, const int64_t *send_offsets,
                                  void *recv, int64_t *recv_bytes, const int64_t *recv_offsets,
                                  int64_t recv_capacity, int64_t unit, const char *what,
                                  moira_cluster_exchange_t *out);

/* Blocks until the payload of `exchange` has been sent and received; aborts the job when it takes
 * longer than the timeout. */
void moira_cluster_exchange_wait(moira_cluster_t *cluster, moira_cluster_exchange_t *exchange);

#endif
