/* What the planner's files share (planner.c, planner_state.c, planner_search.c,
 * planner_counts.c): one layer's placement state, the cost keys its search compares, and the
 * steps that build and improve a placement. Not part of the placement API (plan.h is). */
#ifndef MOIRA_PLACEMENT_PLANNER_INTERNAL_H
#define MOIRA_PLACEMENT_PLANNER_INTERNAL_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "placement/cost_model.h"
#include "placement/plan_progress.h"
#include "placement/replica_order.h"
#include "placement/topology.h"

/* What the search compares: a target's predicted time, then its tokens per TFLOP/s, so that when
 * times tie (weight-bound targets holding as many replicas) tokens are still balanced. */
typedef struct cost_key {
    double time;
    double norm;
} cost_key_t;

/* Orders keys by time, then by normalised load, treating differences within 1e-9 relative as
 * ties so that rounding cannot make the search cycle. */
static inline int key_compare(cost_key_t a, cost_key_t b) {
    double tol = 1e-9 * fmax(fabs(a.time), fabs(b.time));
    if (a.time < b.time - tol) return -1;
    if (a.time > b.time + tol) return 1;
    tol = 1e-9 * fmax(fabs(a.norm), fabs(b.norm));
    if (a.norm < b.norm - tol) return -1;
    if (a.norm > b.norm + tol) return 1;
    return 0;
}

/* The larger of two keys: what a pair of targets costs together. */
static inline cost_key_t key_max(cost_key_t a, cost_key_t b) {
    return key_compare(a, b) >= 0 ? a : b;
}

/* A change the local search may make (planner_search.c). */
typedef struct planner_change {
    int r;             /* the busiest target's replica that moves, swaps or sheds tokens */
    int other;         /* the replica it swaps with or hands tokens to; -1 for a move */
    int t;             /* where r goes; -1 for a shift */
    double shift;      /* tokens r hands to `other` in a shift */
    cost_key_t key;    /* the larger of the two targets' keys after the change */
    cost_key_t before; /* the larger of the two targets' keys now */
    uint64_t order;    /* among changes of equal keys the lowest wins */
} planner_change_t;

/* Everything one layer's search works on. Arrays are borrowed from the planner's workspace
 * (planner.c owns them); `order` is owned by the workspace too. */
typedef struct layer_state {
    const moira_topology_t *topology;
    const moira_cost_model_t *cost;
    const int64_t *capacity; /* per target */
    const double *peak;      /* per target, TFLOP/s for this model's weights */
    int n_targets;
    int64_t experts;
    double *tokens;               /* per target */
    double *active;               /* per target: expected replicas read (cost_model.h) */
    double batch;                 /* tokens in the layer's batch: its load over k */
    bool partial_reads;           /* some replica's read probability is below 1 */
    int *count;                   /* per target: replicas */
    unsigned char *holds;         /* experts x targets */
    cost_key_t *now;              /* per target: its key at the start of an improving step */
    int *on_worst;                /* scratch: the busiest target's replicas */
    planner_change_t *candidates; /* scratch: 6 x targets changes the search weighs together */
    double *cross;                /* scratch: per place in the domain, where keys cross */
    double *threshold;            /* scratch: 2 per target, where shifts even two targets */
    int *first_copy; /* experts + 1: expert e's replicas are first_copy[e] .. [e+1] - 1 */
    /* Per replica: its place in the order greedy packing took the domain's replicas (heaviest
     * first). Among changes the search cannot tell apart, the one of the lowest ranks wins. */
    int *rank;
    /* Per target, its replicas ordered by load: what the search descends instead of scanning. */
    moira_replica_order_t order;
    /* Per target, a list of its replicas whose expert has other copies (the only ones a load
     * shift can involve), linked through shared_next / shared_prev (per replica, -1 ends). */
    int *shared_head;
    int *shared_next;
    int *shared_prev;
    int n; /* replicas so far */
    moira_plan_progress_t progress;
    int64_t layers_done;
    int *target;
    int32_t *expert;
    double *load;
    double *reads; /* per replica: reads_of(load), kept with the load */
} layer_state_t;

/* The probability that a replica with `load` tokens is read (cost_model.h). */
static inline double reads_of(const layer_state_t *s, double load) {
    return moira_cost_read_probability(load, s->batch);
}

/* The key a target would have with `tokens` tokens over `active` expected replica reads. */
static inline cost_key_t key_of(const layer_state_t *s, int t, double tokens, double active) {
    cost_key_t k;
    k.time = moira_cost_target_us(s->cost, &s->topology->targets[t], tokens, active);
    k.norm = tokens / s->peak[t];
    return k;
}

/* The key a target has now. */
static inline cost_key_t key_now(const layer_state_t *s, int t) {
    return key_of(s, t, s->tokens[t], s->active[t]);
}

/* How many replicas of expert e target t holds: a target gains nothing from two copies. */
static inline unsigned char *holds_at(const layer_state_t *s, int32_t e, int t) {
    return &s->holds[(size_t)e * s->n_targets + t];
}

/* Empties every target before a new start. */
void moira_planner_reset(layer_state_t *s);

/* Puts replica r on target t, updating the target's totals, its load order and shared list. */
void moira_planner_place(layer_state_t *s, int r, int t);

/* Takes replica r off its target, undoing moira_planner_place(). */
void moira_planner_unplace(layer_state_t *s, int r);

/* One improving step of the local search over the targets in `domain` (see planner_search.c).
 * Returns false when nothing improves. */
bool moira_planner_improve_once(layer_state_t *s, const int *domain, int n_domain);

/* Gives the `budget` extra replicas to the experts with the most tokens per replica (EPLB's
 * replication rule), one at a time, within each domain's spare slots and never more replicas of
 * an expert than its domain has targets. domain_of_expert[e] indexes spare[] and max_copies[].
 * `heap` is scratch for `experts` ints (borrowed). */
void moira_planner_choose_counts(const double *load, int64_t experts, const int *domain_of_expert,
                                 int64_t *spare, const int64_t *max_copies, int64_t budget,
                                 int *count, int *heap);

#endif
