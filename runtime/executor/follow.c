/* Driving a cluster: rank 0 owns the tokens and tells the other ranks when a forward starts;
 * they serve the rows sent to their experts until it says stop, then send it what they
 * measured (runtime/executor/executor.h). */
#include <stdlib.h>
#include <string.h>

#include "runtime/executor/executor_internal.h"

enum { STEP_FORWARD = 1, STEP_CHECKED_FORWARD = 2, STEP_STOP = 3 };
/* Or'ed into a forward's step when rank 0 reset its figures since the last one (after a warm-up
 * forward), so every rank counts the same forwards. */
enum { STEP_RESET_STATS = 16 };

bool moira_executor_leads(const moira_executor_t *e) {
    return !e->exchange.cluster || e->data_parallel || moira_cluster_rank(e->exchange.cluster) == 0;
}

/* The command of a step, from rank 0 to every rank. The others wait for it as long as rank 0
 * is alive (a server idles between requests; runtime/cluster/beacon.c). */
static int32_t broadcast_step(moira_executor_t *e, int32_t step) {
    moira_cluster_broadcast(e->exchange.cluster, 0, &step, sizeof(step), "the next step's start");
    return step;
}

void moira_exec_announce(moira_executor_t *e, bool check_devices) {
    if (!e->exchange.cluster || e->data_parallel) return;
    int32_t step = check_devices ? STEP_CHECKED_FORWARD : STEP_FORWARD;
    if (e->stats_reset_pending) step |= STEP_RESET_STATS;
    e->stats_reset_pending = false;
    broadcast_step(e, step);
}

moira_status_t moira_exec_settle(moira_executor_t *e, moira_status_t status) {
    if (status && e->exchange.cluster)
        moira_cluster_abort(e->exchange.cluster, 1, "%s", moira_status_message(status));
    return status;
}

/* This rank's figures as they travel to rank 0: its stats records themselves (every rank runs the
 * same build), one per topology target (zero where the target is another rank's), then one per
 * layer; the device and home pointers mean nothing on another rank and are cleared. */
static void pack(const moira_executor_t *e, moira_exec_target_stats_t *targets,
                 moira_exec_layer_stats_t *layers) {
    memset(targets, 0, (size_t)e->topology->n_targets * sizeof(*targets));
    for (int i = 0; i < e->stats.n_targets; i++) {
        targets[e->stats.targets[i].target] = e->stats.targets[i];
        targets[e->stats.targets[i].target].device = NULL;
    }
    for (int l = 0; l < e->stats.n_layers; l++) {
        layers[l] = e->stats.layers[l];
        layers[l].home = NULL;
    }
}

/* Rank 0 adds the other ranks' targets after its own, and their network bytes and predictions
 * to its layers' (its exchange time stays its own: the wait the token owner saw). A target a rank
 * holds carries its device's name. */
static void merge(moira_executor_t *e, const moira_exec_target_stats_t *targets,
                  const moira_exec_layer_stats_t *layers, int ranks) {
    int n_topology = e->topology->n_targets, n_layers = e->stats.n_layers;
    for (int r = 1; r < ranks; r++) {
        for (int t = 0; t < n_topology; t++) {
            const moira_exec_target_stats_t *w = &targets[(size_t)r * (size_t)n_topology + t];
            if (!w->device_name[0] || e->stats.n_targets >= n_topology) continue;
            moira_exec_target_stats_t *s = &e->stats.targets[e->stats.n_targets++];
            *s = *w;
            s->device_name[sizeof(s->device_name) - 1] = '\0';
        }
        for (int l = 0; l < n_layers; l++) {
            const moira_exec_layer_stats_t *w = &layers[(size_t)r * (size_t)n_layers + l];
            e->stats.layers[l].network_bytes += w->network_bytes;
            e->stats.layers[l].predicted_network_bytes += w->predicted_network_bytes;
            e->stats.layers[l].predicted_network_us += w->predicted_network_us;
        }
    }
}

/* Every rank's figures to rank 0. Allocates: it runs once, after the last forward. */
static void gather_stats(moira_executor_t *e) {
    moira_cluster_t *c = e->exchange.cluster;
    int ranks = moira_cluster_size(c), n_topology = e->topology->n_targets;
    size_t n_layers = (size_t)e->stats.n_layers;
    moira_exec_target_stats_t *mine = calloc((size_t)n_topology + 1, sizeof(*mine));
    moira_exec_layer_stats_t *my_layers = calloc(n_layers + 1, sizeof(*my_layers));
    moira_exec_target_stats_t *all = calloc((size_t)ranks * (size_t)n_topology + 1, sizeof(*all));
    moira_exec_layer_stats_t *all_layers =
        calloc((size_t)ranks * n_layers + 1, sizeof(*all_layers));
    if (!mine || !my_layers || !all || !all_layers)
        moira_cluster_abort(c, 1, "out of memory gathering the ranks' measurements");
    pack(e, mine, my_layers);
    moira_cluster_gather(c, 0, mine, (size_t)n_topology * sizeof(*mine), all,
                         "gathering the devices' measurements");
    moira_cluster_gather(c, 0, my_layers, n_layers * sizeof(*my_layers), all_layers,
                         "gathering the layers' measurements");
    if (moira_cluster_rank(c) == 0) merge(e, all, all_layers, ranks);
    free(mine);
    free(my_layers);
    free(all);
    free(all_layers);
}

moira_status_t moira_executor_follow(moira_executor_t *e) {
    if (!e->exchange.cluster || moira_executor_leads(e)) return MOIRA_OK_STATUS;
    for (;;) {
        int32_t step = broadcast_step(e, 0);
        if (step == STEP_STOP) break;
        if (step & STEP_RESET_STATS) moira_executor_reset_stats(e);
        step &= ~STEP_RESET_STATS;
        if (step != STEP_FORWARD && step != STEP_CHECKED_FORWARD)
            moira_cluster_abort(e->exchange.cluster, 1, "rank 0 sent step %d, which is none",
                                (int)step);
        moira_exec_settle(
            e, moira_exec_run_layers(e, 0, NULL, NULL, step == STEP_CHECKED_FORWARD, NULL));
    }
    e->released = true;
    gather_stats(e);
    return MOIRA_OK_STATUS;
}

void moira_executor_release(moira_executor_t *e) {
    if (!e->exchange.cluster || e->released || !moira_executor_leads(e)) return;
    e->released = true;
    if (!e->data_parallel) broadcast_step(e, STEP_STOP);
    gather_stats(e);
}
