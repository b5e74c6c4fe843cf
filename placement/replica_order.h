/* Each target's replicas kept in order of load (then a rank the caller gives), so that the
 * planner's local search finds the replica whose load is nearest a wanted amount by descending a
 * tree, in O(log n), instead of scanning every replica of the target. One treap per target, its
 * nodes the replicas themselves (a replica sits on at most one target), priorities a fixed hash of
 * the replica index so that the trees, and so the plans, are the same on every run. */
#ifndef MOIRA_PLACEMENT_REPLICA_ORDER_H
#define MOIRA_PLACEMENT_REPLICA_ORDER_H

#include <stdbool.h>

#include "runtime/status.h"

/* Owns left, right and root; borrows load and rank, which must not change for a replica while
 * it is in a target's order (take it out, change them, put it back). */
typedef struct moira_replica_order {
    int *left;  /* per replica: the subtree of smaller keys, -1 when empty */
    int *right; /* per replica: the subtree of larger keys, -1 when empty */
    int *root;  /* per target: the tree's root, -1 when the target holds no replica */
    int n_targets;
    const double *load; /* per replica: the key */
    const int *rank;    /* per replica: orders equal loads; distinct within a target */
} moira_replica_order_t;

/* Room for replicas 0 .. max_replicas - 1 over n_targets targets, all empty. */
moira_status_t moira_replica_order_init(moira_replica_order_t *o, int max_replicas, int n_targets,
                                        const double *load, const int *rank);

/* Releases what init allocated; accepts a zeroed or partly initialised order. */
void moira_replica_order_free(moira_replica_order_t *o);

/* Empties every target. */
void moira_replica_order_clear(moira_replica_order_t *o);

/* Adds replica r (not in any order) to target t's order. */
void moira_replica_order_insert(moira_replica_order_t *o, int t, int r);

/* Takes replica r out of target t's order, where it must be. */
void moira_replica_order_remove(moira_replica_order_t *o, int t, int r);

/* Target t's replica of least load, -1 when t holds none. */
int moira_replica_order_first(const moira_replica_order_t *o, int t);

/* Target t's replica of greatest load, -1 when t holds none. */
int moira_replica_order_last(const moira_replica_order_t *o, int t);

/* The replica after (next) or before (prev) replica r in target t's order, -1 at the end. */
int moira_replica_order_next(const moira_replica_order_t *o, int t, int r);
int moira_replica_order_prev(const moira_replica_order_t *o, int t, int r);

/* Splits target t's order at `load`: *out_low gets the last replica whose load is below `load`
 * (or equal to it when `inclusive`), *out_high the one after it; -1 where there is none. */
void moira_replica_order_split(const moira_replica_order_t *o, int t, double load, bool inclusive,
                               int *out_low, int *out_high);

/* The first replica of target t's order for which `is_past` is true, given that it is true for
 * every replica after one for which it is: found by descending the tree, calling `is_past` on
 * O(log n) replicas. -1 when it is true for none. */
int moira_replica_order_first_where(const moira_replica_order_t *o, int t,
                                    bool (*is_past)(int r, const void *context),
                                    const void *context);

/* Writes target t's replicas in ascending order into out (room for all of them); returns how
 * many. */
int moira_replica_order_list(const moira_replica_order_t *o, int t, int *out);

#endif
