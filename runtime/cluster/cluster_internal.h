/* The cluster's insides, shared by its files: the job (cluster_mpi.c) and the beacons that tell
 * a slow peer from a stopped one (beacon.c). Not for use outside runtime/cluster/. */
#ifndef MOIRA_RUNTIME_CLUSTER_CLUSTER_INTERNAL_H
#define MOIRA_RUNTIME_CLUSTER_CLUSTER_INTERNAL_H

#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>

#include "runtime/cluster/cluster.h"

enum { TAG_COUNTS = 1, TAG_GATHER = 2, TAG_BEACON = 3 };

struct moira_cluster {
    int rank, size;
    _Atomic double timeout_s;      /* read by the beacon thread too */
    const char *const *host_names; /* borrowed; NULL: ranks named by number */
    int n_host_names;
    /* Per peer, allocated at join (owned): the requests and counts of one exchange. */
    MPI_Request *requests;
    int *request_peer; /* [2 * size]: the rank each of `requests` waits on, to name it */
    int64_t *count_out, *count_in;
    int *send_counts, *send_displs, *recv_counts, *recv_displs;
    MPI_Request payload; /* the exchange in flight, MPI_REQUEST_NULL when none */
    /* Beacons (beacon.c): a communicator of their own, the thread that sends and receives them,
     * and when each rank was last heard from (monotonic seconds; written by that thread). */
    MPI_Comm beacons;
    pthread_t beacon_thread;
    bool beacon_running;
    atomic_bool beacon_stop;
    _Atomic double *heard_s; /* owned [size] */
};

/* Starts the beacon thread: every rank tells every other it is alive several times per timeout,
 * from a thread of its own, so a rank busy computing (a slow device, a long prefill, the fp64
 * check) keeps its peers waiting for it; a stopped process or a stalled network falls silent. */
moira_status_t moira_cluster_beacon_start(moira_cluster_t *cluster);

/* Stops and joins it; a no-op when it never started. */
void moira_cluster_beacon_stop(moira_cluster_t *cluster);

/* The later of `since` and when `rank` was last heard from. */
double moira_cluster_heard_since(const moira_cluster_t *cluster, int rank, double since);

#endif
