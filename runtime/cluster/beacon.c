/* Beacons: how a waiting rank tells a peer that is slow from one that has stopped
 * (runtime/cluster/cluster_internal.h). A thread of each rank sends a one-byte message to every
 * other rank a few times per timeout and receives theirs, noting when it last heard from each.
 * Waits then time out only after the timeout has passed without a word from the rank waited for:
 * a rank whose device computes for minutes keeps beaconing; a stopped process (SIGSTOP, a hung
 * host) or a stalled network does not. The beacons use a communicator of their own, so they never
 * match the exchange's messages. */
#include <time.h>

#include "runtime/clock.h"
#include "runtime/cluster/cluster_internal.h"

/* Beacons go out every quarter of the timeout, at most every 5 s and at least every 50 ms; the
 * thread looks for incoming ones every 20 ms. */
static double beacon_interval(const moira_cluster_t *c) {
    double interval = c->timeout_s / 4;
    return interval > 5 ? 5 : interval < 0.05 ? 0.05 : interval;
}

/* Sends one beacon to every other rank; the sends need no completion to be waited for (a
 * one-byte message goes out at once), so their requests are released right away. */
static void send_beacons(moira_cluster_t *c) {
    static const char alive = 1;
    for (int r = 0; r < c->size; r++) {
        if (r == c->rank) continue;
        MPI_Request request;
        if (MPI_Isend(&alive, 1, MPI_BYTE, r, TAG_BEACON, c->beacons, &request) == MPI_SUCCESS)
            MPI_Request_free(&request);
    }
}

/* Takes every beacon that has arrived and notes its sender's time. */
static void receive_beacons(moira_cluster_t *c) {
    for (;;) {
        int arrived = 0;
        MPI_Status status;
        if (MPI_Iprobe(MPI_ANY_SOURCE, TAG_BEACON, c->beacons, &arrived, &status) != MPI_SUCCESS ||
            !arrived)
            return;
        char byte;
        MPI_Recv(&byte, 1, MPI_BYTE, status.MPI_SOURCE, TAG_BEACON, c->beacons, MPI_STATUS_IGNORE);
        c->heard_s[status.MPI_SOURCE] = moira_now_seconds();
    }
}

static void *beacon_loop(void *arg) {
    moira_cluster_t *c = arg;
    double last_send = -1e30;
    while (!atomic_load(&c->beacon_stop)) {
        /* The interval is read afresh each time: the command line sets the timeout after this
         * thread started with the default one. */
        double now = moira_now_seconds();
        if (now - last_send >= beacon_interval(c)) {
            send_beacons(c);
            last_send = now;
        }
        receive_beacons(c);
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    return NULL;
}

moira_status_t moira_cluster_beacon_start(moira_cluster_t *c) {
    double now = moira_now_seconds();
    for (int r = 0; r < c->size; r++)
        c->heard_s[r] = now;
    if (MPI_Comm_dup(MPI_COMM_WORLD, &c->beacons) != MPI_SUCCESS)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED, "MPI could not make the beacons' "
                                                         "communicator");
    atomic_store(&c->beacon_stop, false);
    int err = pthread_create(&c->beacon_thread, NULL, beacon_loop, c);
    if (err) return moira_thread_start_error(err, "the cluster's beacon thread");
    c->beacon_running = true;
    return MOIRA_OK_STATUS;
}

void moira_cluster_beacon_stop(moira_cluster_t *c) {
    if (!c->beacon_running) return;
    atomic_store(&c->beacon_stop, true);
    pthread_join(c->beacon_thread, NULL);
    c->beacon_running = false;
}

double moira_cluster_heard_since(const moira_cluster_t *c, int rank, double since) {
    double heard = c->heard_s[rank];
    return heard > since ? heard : since;
}
