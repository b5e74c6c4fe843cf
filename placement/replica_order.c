/* Load-ordered replica sets per target, as treaps (replica_order.h). */
#include "placement/replica_order.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

moira_status_t moira_replica_order_init(moira_replica_order_t *o, int max_replicas, int n_targets,
                                        const double *load, const int *rank) {
    memset(o, 0, sizeof(*o));
    size_t nr = (size_t)(max_replicas > 0 ? max_replicas : 1);
    size_t nt = (size_t)(n_targets > 0 ? n_targets : 1);
    o->left = malloc(nr * sizeof(int));
    o->right = malloc(nr * sizeof(int));
    o->root = malloc(nt * sizeof(int));
    o->n_targets = n_targets;
    o->load = load;
    o->rank = rank;
    if (!o->left || !o->right || !o->root) {
        moira_replica_order_free(o);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "planner: out of memory");
    }
    moira_replica_order_clear(o);
    return MOIRA_OK_STATUS;
}

void moira_replica_order_free(moira_replica_order_t *o) {
    free(o->left);
    free(o->right);
    free(o->root);
    memset(o, 0, sizeof(*o));
}

void moira_replica_order_clear(moira_replica_order_t *o) {
    for (int t = 0; t < o->n_targets; t++)
        o->root[t] = -1;
}

/* A replica's heap priority: a bijective mix of its index (murmur3's finaliser), so priorities
 * never tie and the tree's shape depends on nothing but which replicas it holds. */
static uint32_t priority(int r) {
    uint32_t h = (uint32_t)r;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/* The order's key: load, then rank, so that equal loads still have one fixed order. */
static bool less(const moira_replica_order_t *o, int a, int b) {
    double la = o->load[a], lb = o->load[b];
    return la < lb || (la == lb && o->rank[a] < o->rank[b]);
}

/* Inserts r into the subtree at `node` and returns the subtree's new root: a leaf insertion, then
 * rotations up while r's priority beats its parent's. */
static int insert_at(moira_replica_order_t *o, int node, int r) {
    if (node < 0) return r;
    if (less(o, r, node)) {
        int child = insert_at(o, o->left[node], r);
        o->left[node] = child;
        if (priority(child) <= priority(node)) return node;
        o->left[node] = o->right[child]; /* rotate right */
        o->right[child] = node;
        return child;
    }
    int child = insert_at(o, o->right[node], r);
    o->right[node] = child;
    if (priority(child) <= priority(node)) return node;
    o->right[node] = o->left[child]; /* rotate left */
    o->left[child] = node;
    return child;
}

void moira_replica_order_insert(moira_replica_order_t *o, int t, int r) {
    o->left[r] = o->right[r] = -1;
    o->root[t] = insert_at(o, o->root[t], r);
}

/* Joins two subtrees whose keys are all smaller in a than in b, keeping the heap order. */
static int merge(moira_replica_order_t *o, int a, int b) {
    if (a < 0) return b;
    if (b < 0) return a;
    if (priority(a) > priority(b)) {
        o->right[a] = merge(o, o->right[a], b);
        return a;
    }
    o->left[b] = merge(o, a, o->left[b]);
    return b;
}

/* Removes r from the subtree at `node` and returns the subtree's new root. */
static int remove_at(moira_replica_order_t *o, int node, int r) {
    if (node < 0) return node;
    if (node == r) return merge(o, o->left[r], o->right[r]);
    if (less(o, r, node))
        o->left[node] = remove_at(o, o->left[node], r);
    else
        o->right[node] = remove_at(o, o->right[node], r);
    return node;
}

void moira_replica_order_remove(moira_replica_order_t *o, int t, int r) {
    o->root[t] = remove_at(o, o->root[t], r);
    o->left[r] = o->right[r] = -1;
}

int moira_replica_order_first(const moira_replica_order_t *o, int t) {
    int node = o->root[t];
    while (node >= 0 && o->left[node] >= 0)
        node = o->left[node];
    return node;
}

int moira_replica_order_last(const moira_replica_order_t *o, int t) {
    int node = o->root[t];
    while (node >= 0 && o->right[node] >= 0)
        node = o->right[node];
    return node;
}

/* The replica next to r in target t's order, after it or before it. Searched from the root
 * rather than followed by parent links, which would double the bookkeeping of every rotation;
 * the walk is the tree's depth either way. */
static int neighbour(const moira_replica_order_t *o, int t, int r, bool after) {
    const int *toward = after ? o->left : o->right, *away = after ? o->right : o->left;
    int found = -1;
    for (int node = o->root[t]; node >= 0;) {
        if (after ? less(o, r, node) : less(o, node, r)) {
            found = node;
            node = toward[node];
        } else {
            node = away[node];
        }
    }
    return found;
}

int moira_replica_order_next(const moira_replica_order_t *o, int t, int r) {
    return neighbour(o, t, r, true);
}

int moira_replica_order_prev(const moira_replica_order_t *o, int t, int r) {
    return neighbour(o, t, r, false);
}

void moira_replica_order_split(const moira_replica_order_t *o, int t, double load, bool inclusive,
                               int *out_low, int *out_high) {
    int low = -1, high = -1;
    for (int node = o->root[t]; node >= 0;) {
        double l = o->load[node];
        if (l < load || (inclusive && l == load)) {
            low = node;
            node = o->right[node];
        } else {
            high = node;
            node = o->left[node];
        }
    }
    *out_low = low;
    *out_high = high;
}

int moira_replica_order_first_where(const moira_replica_order_t *o, int t,
                                    bool (*is_past)(int r, const void *context),
                                    const void *context) {
    int found = -1;
    for (int node = o->root[t]; node >= 0;) {
        if (is_past(node, context)) {
            found = node;
            node = o->left[node];
        } else {
            node = o->right[node];
        }
    }
    return found;
}

/* In-order walk of the subtree at `node` into out from index n; returns the new count. */
static int list_at(const moira_replica_order_t *o, int node, int *out, int n) {
    while (node >= 0) {
        n = list_at(o, o->left[node], out, n);
        out[n++] = node;
        node = o->right[node];
    }
    return n;
}

int moira_replica_order_list(const moira_replica_order_t *o, int t, int *out) {
    return list_at(o, o->root[t], out, 0);
}
