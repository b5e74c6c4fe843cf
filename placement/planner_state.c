/* One layer's placement state: putting replicas on targets and taking them off, with every total
 * and index the search reads kept up to date (planner_internal.h). */
#include <string.h>

#include "placement/planner_internal.h"

void moira_planner_reset(layer_state_t *s) {
    memset(s->tokens, 0, (size_t)s->n_targets * sizeof(double));
    memset(s->active, 0, (size_t)s->n_targets * sizeof(double));
    memset(s->count, 0, (size_t)s->n_targets * sizeof(int));
    memset(s->holds, 0, (size_t)s->experts * (size_t)s->n_targets);
    for (int t = 0; t < s->n_targets; t++)
        s->shared_head[t] = -1;
    moira_replica_order_clear(&s->order);
    s->n = 0;
}

/* Whether replica r's expert has other copies: only such replicas can hand tokens to another. */
static bool is_shared(const layer_state_t *s, int r) {
    int32_t e = s->expert[r];
    return s->first_copy[e + 1] - s->first_copy[e] > 1;
}

void moira_planner_place(layer_state_t *s, int r, int t) {
    s->target[r] = t;
    s->tokens[t] += s->load[r];
    s->active[t] += s->reads[r];
    s->count[t]++;
    (*holds_at(s, s->expert[r], t))++;
    moira_replica_order_insert(&s->order, t, r);
    if (is_shared(s, r)) {
        int head = s->shared_head[t];
        s->shared_prev[r] = -1;
        s->shared_next[r] = head;
        if (head >= 0) s->shared_prev[head] = r;
        s->shared_head[t] = r;
    }
}

void moira_planner_unplace(layer_state_t *s, int r) {
    int t = s->target[r];
    s->tokens[t] -= s->load[r];
    s->active[t] -= s->reads[r];
    if (s->count[t] == 1) s->active[t] = 0; /* no rounding left behind on an empty target */
    s->count[t]--;
    (*holds_at(s, s->expert[r], t))--;
    moira_replica_order_remove(&s->order, t, r);
    if (is_shared(s, r)) {
        int prev = s->shared_prev[r], next = s->shared_next[r];
        if (prev >= 0)
            s->shared_next[prev] = next;
        else
            s->shared_head[t] = next;
        if (next >= 0) s->shared_prev[next] = prev;
    }
    s->target[r] = -1;
}
