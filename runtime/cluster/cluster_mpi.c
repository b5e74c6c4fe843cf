/* The cluster over Open MPI (runtime/cluster/cluster.h). Waits are MPI_Test loops against a
 * deadline rather than blocking calls, because a blocking MPI call waits forever for a peer
 * that has stopped. The deadline counts from the last sign of life of the peer waited for
 * (beacon.c), so a peer that is slow but alive is waited for, and one that has stopped is named
 * once the timeout has passed without a word from it. */
#include <mpi.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/clock.h"
#include "runtime/cluster/cluster_internal.h"

static moira_cluster_t *current;

/* The environment variables Open MPI, MPICH/Hydra, PMIx launchers and Slurm set in every rank. */
bool moira_cluster_launched(void) {
    static const char *const markers[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE",
                                          "PMI_RANK"};
    for (size_t i = 0; i < sizeof(markers) / sizeof(markers[0]); i++)
        if (getenv(markers[i])) return true;
    return false;
}

moira_cluster_t *moira_cluster_current(void) {
    return current;
}

moira_status_t moira_cluster_join(int *argc, char ***argv) {
    int provided = 0;
    /* MULTIPLE: the beacon thread talks while the executor's thread exchanges. */
    if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED, "MPI could not start this rank");
    if (provided < MPI_THREAD_MULTIPLE)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                 "this MPI library cannot be called from several threads at once "
                                 "(MPI_THREAD_MULTIPLE), which Moira needs");
    /* Errors come back as codes, so a failed call is reported by Moira, not by MPI's handler
     * printing a stack and aborting. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    moira_cluster_t *c = calloc(1, sizeof(*c));
    if (!c) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    size_t n = (size_t)c->size;
    c->timeout_s = 60;
    c->payload = MPI_REQUEST_NULL;
    c->requests = calloc(2 * n, sizeof(MPI_Request));
    c->request_peer = calloc(2 * n, sizeof(int));
    c->count_out = calloc(n, sizeof(int64_t));
    c->count_in = calloc(n, sizeof(int64_t));
    c->send_counts = calloc(n, sizeof(int));
    c->send_displs = calloc(n, sizeof(int));
    c->recv_counts = calloc(n, sizeof(int));
    c->recv_displs = calloc(n, sizeof(int));
    c->heard_s = calloc(n, sizeof(*c->heard_s));
    current = c;
    if (!c->requests || !c->request_peer || !c->count_out || !c->count_in || !c->send_counts ||
        !c->send_displs || !c->recv_counts || !c->recv_displs || !c->heard_s)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    return moira_cluster_beacon_start(c);
}

void moira_cluster_leave(void) {
    moira_cluster_t *c = current;
    if (!c) return;
    moira_cluster_beacon_stop(c);
    MPI_Finalize();
    free(c->requests);
    free(c->request_peer);
    free(c->count_out);
    free(c->count_in);
    free(c->send_counts);
    free(c->send_displs);
    free(c->recv_counts);
    free(c->recv_displs);
    free((void *)c->heard_s);
    free(c);
    current = NULL;
}

int moira_cluster_rank(const moira_cluster_t *c) {
    return c->rank;
}

int moira_cluster_size(const moira_cluster_t *c) {
    return c->size;
}

void moira_cluster_name_hosts(moira_cluster_t *c, const char *const *host_names, int n) {
    c->host_names = host_names;
    c->n_host_names = n;
}

void moira_cluster_set_timeout(moira_cluster_t *c, double seconds) {
    c->timeout_s = seconds;
}

double moira_cluster_timeout(const moira_cluster_t *c) {
    return c->timeout_s;
}

/* "rank 1 (node1)", or "rank 1" before the topology is read. */
static const char *rank_name(const moira_cluster_t *c, int rank, char *buffer, size_t size) {
    if (c->host_names && rank < c->n_host_names)
        snprintf(buffer, size, "rank %d (%s)", rank, c->host_names[rank]);
    else
        snprintf(buffer, size, "rank %d", rank);
    return buffer;
}

_Noreturn void moira_cluster_abort(moira_cluster_t *c, int exit_code, const char *fmt, ...) {
    char me[96];
    fprintf(stderr, "moira: %s: ", rank_name(c, c->rank, me, sizeof(me)));
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fprintf(stderr, "; ending every rank\n");
    moira_cluster_exit(exit_code);
}

/* _exit, not exit or MPI_Abort: no MPI_Finalize (which would wait for the others) and no
 * atexit work in a half-finished process; mpirun then ends the rest and says which rank left. */
_Noreturn void moira_cluster_exit(int exit_code) {
    fflush(stdout);
    fflush(stderr);
    _exit(exit_code);
}

/* Pauses between polls, by how long the wait has lasted: polling alone for the first 50 us (a
 * decode step's exchange takes tens of microseconds, and a sleep costs about as much), then
 * yielding the core until 2 ms, then sleeping up to half a millisecond at a time, so a rank
 * waiting on a slow peer leaves the cores to the work it waits for. */
static void back_off(double waited_s) {
    if (waited_s < 50e-6) return;
    if (waited_s < 2e-3) {
        sched_yield();
        return;
    }
    long ns = waited_s < 20e-3 ? 50000 : 500000;
    struct timespec pause = {0, ns};
    nanosleep(&pause, NULL);
}

/* The rank holding up the requests still pending, when it has been silent for longer than the
 * timeout: a request's own peer, or for one without a single peer (a collective) any other rank
 * (-1 when none has been). Silence counts from `started_s` or the rank's last beacon, whichever
 * is later. */
static int silent_rank(const moira_cluster_t *c, const MPI_Request *requests, const int *peers,
                       int n, double started_s, double timeout_s, double now) {
    for (int i = 0; i < n; i++) {
        if (requests[i] == MPI_REQUEST_NULL) continue;
        int first = peers && peers[i] >= 0 ? peers[i] : 0;
        int last = peers && peers[i] >= 0 ? peers[i] : c->size - 1;
        for (int r = first; r <= last; r++)
            if (r != c->rank && now - moira_cluster_heard_since(c, r, started_s) > timeout_s)
                return r;
    }
    return -1;
}

/* Waits for `n` requests (each completed as it finishes, so those left are the pending ones);
 * past the timeout of silence from a rank they wait on, ends this rank naming it. */
static void wait_all(moira_cluster_t *c, MPI_Request *requests, const int *peers, int n,
                     double started_s, double timeout_s, const char *what) {
    for (;;) {
        int pending = 0;
        for (int i = 0; i < n; i++) {
            if (requests[i] == MPI_REQUEST_NULL) continue;
            int done = 0;
            if (MPI_Test(&requests[i], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
                moira_cluster_abort(c, 1, "MPI failed during %s", what);
            pending += !done;
        }
        if (!pending) return;
        double now = moira_now_seconds();
        int silent = silent_rank(c, requests, peers, n, started_s, timeout_s, now);
        if (silent >= 0) {
            char name[96];
            moira_cluster_abort(c, 1, "no answer from %s within %.0f s during %s (stalled or gone)",
                                rank_name(c, silent, name, sizeof(name)), timeout_s, what);
        }
        back_off(now - started_s);
    }
}

void moira_cluster_barrier(moira_cluster_t *c, double timeout_s, const char *what) {
    MPI_Request request;
    if (MPI_Ibarrier(MPI_COMM_WORLD, &request) != MPI_SUCCESS)
        moira_cluster_abort(c, 1, "MPI failed during %s", what);
    wait_all(c, &request, NULL, 1, moira_now_seconds(), timeout_s, what);
}

int moira_cluster_first_different(moira_cluster_t *c, uint64_t value, const char *what) {
    uint64_t *all = calloc((size_t)c->size, sizeof(uint64_t));
    if (!all) moira_cluster_abort(c, 1, "out of memory during %s", what);
    MPI_Request request;
    if (MPI_Iallgather(&value, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD, &request) !=
        MPI_SUCCESS)
        moira_cluster_abort(c, 1, "MPI failed during %s", what);
    wait_all(c, &request, NULL, 1, moira_now_seconds(), c->timeout_s, what);
    int first = -1;
    for (int r = 1; r < c->size && first < 0; r++)
        if (all[r] != all[0]) first = r;
    free(all);
    return first;
}

void moira_cluster_broadcast(moira_cluster_t *c, int root, void *data, size_t bytes,
                             const char *what) {
    MPI_Request request;
    if (MPI_Ibcast(data, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD, &request) != MPI_SUCCESS)
        moira_cluster_abort(c, 1, "MPI failed during %s", what);
    int peer = c->rank == root ? -1 : root;
    wait_all(c, &request, &peer, 1, moira_now_seconds(), c->timeout_s, what);
}

void moira_cluster_gather(moira_cluster_t *c, int root, const void *data, size_t bytes, void *out,
                          const char *what) {
    int n = 0, *peers = c->request_peer;
    MPI_Request *requests = c->requests;
    if (c->rank == root) {
        memcpy((char *)out + (size_t)root * bytes, data, bytes);
        for (int r = 0; r < c->size; r++) {
            if (r == root) continue;
            if (MPI_Irecv((char *)out + (size_t)r * bytes, (int)bytes, MPI_BYTE, r, TAG_GATHER,
                          MPI_COMM_WORLD, &requests[n]) != MPI_SUCCESS)
                moira_cluster_abort(c, 1, "MPI failed during %s", what);
            peers[n++] = r;
        }
    } else {
        if (MPI_Isend(data, (int)bytes, MPI_BYTE, root, TAG_GATHER, MPI_COMM_WORLD, &requests[0]) !=
            MPI_SUCCESS)
            moira_cluster_abort(c, 1, "MPI failed during %s", what);
        peers[0] = root;
        n = 1;
    }
    wait_all(c, requests, peers, n, moira_now_seconds(), c->timeout_s, what);
}

/* A byte count as MPI's int, or the end of the job. */
static int mpi_count(moira_cluster_t *c, int64_t bytes, const char *what) {
    if (bytes < 0 || bytes > INT32_MAX)
        moira_cluster_abort(c, 1, "%s would move %lld bytes in one message (the most is %d)", what,
                            (long long)bytes, INT32_MAX);
    return (int)bytes;
}

/* Counts first, point to point: each rank learns what every peer sends it, and a peer that never
 * answers is named. */
static void exchange_counts(moira_cluster_t *c, const int64_t *send_bytes, int64_t *recv_bytes,
                            const char *what) {
    int n = 0, *peers = c->request_peer;
    for (int r = 0; r < c->size; r++) {
        if (r == c->rank) {
            recv_bytes[r] = send_bytes[r];
            continue;
        }
        c->count_out[r] = send_bytes[r];
        if (MPI_Irecv(&recv_bytes[r], 1, MPI_INT64_T, r, TAG_COUNTS, MPI_COMM_WORLD,
                      &c->requests[n]) != MPI_SUCCESS ||
            MPI_Isend(&c->count_out[r], 1, MPI_INT64_T, r, TAG_COUNTS, MPI_COMM_WORLD,
                      &c->requests[n + 1]) != MPI_SUCCESS)
            moira_cluster_abort(c, 1, "MPI failed during %s", what);
        peers[n] = peers[n + 1] = r;
        n += 2;
    }
    wait_all(c, c->requests, peers, n, moira_now_seconds(), c->timeout_s, what);
}

void moira_cluster_exchange_start(moira_cluster_t *c, const void *send, const int64_t *send_bytes,
                                  const int64_t *send_offsets, void *recv, int64_t *recv_bytes,
                                  const int64_t *recv_offsets, int64_t recv_capacity, int64_t unit,
                                  const char *what, moira_cluster_exchange_t *out) {
    if (c->payload != MPI_REQUEST_NULL)
        moira_cluster_abort(c, 1, "%s started while another exchange is in flight", what);
    exchange_counts(c, send_bytes, recv_bytes, what);
    char name[96];
    for (int r = 0; r < c->size; r++)
        if (recv_bytes[r] < 0 || recv_bytes[r] > recv_capacity || recv_bytes[r] % unit)
            moira_cluster_abort(c, 1,
                                "%s: %s announces %lld bytes, where %lld rows of %lld bytes at "
                                "most fit (do the ranks run the same command?)",
                                what, rank_name(c, r, name, sizeof(name)), (long long)recv_bytes[r],
                                (long long)(recv_capacity / unit), (long long)unit);
    for (int r = 0; r < c->size; r++) {
        c->send_counts[r] = mpi_count(c, send_bytes[r], what);
        c->send_displs[r] = mpi_count(c, send_offsets[r], what);
        c->recv_counts[r] = mpi_count(c, recv_bytes[r], what);
        c->recv_displs[r] = mpi_count(c, recv_offsets[r], what);
    }
    out->what = what;
    out->started_s = moira_now_seconds();
    out->pending = true;
    if (MPI_Ialltoallv(send, c->send_counts, c->send_displs, MPI_BYTE, recv, c->recv_counts,
                       c->recv_displs, MPI_BYTE, MPI_COMM_WORLD, &c->payload) != MPI_SUCCESS)
        moira_cluster_abort(c, 1, "MPI failed during %s", what);
}

void moira_cluster_exchange_wait(moira_cluster_t *c, moira_cluster_exchange_t *exchange) {
    if (!exchange->pending) return;
    wait_all(c, &c->payload, NULL, 1, exchange->started_s, c->timeout_s, exchange->what);
    exchange->pending = false;
}
