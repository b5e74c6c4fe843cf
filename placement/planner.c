/* The planner: replica counts and replica placement per MoE layer (plan.h). The layer state and
 * its local search live in planner_state.c and planner_search.c, replica counts in
 * planner_counts.c (planner_internal.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/home.h"
#include "placement/plan.h"
#include "placement/planner_internal.h"

/* Local search stops after this many improving moves per target, a bound that keeps planning a
 * 64-device cluster well under a second while leaving room to converge. */
#define IMPROVE_ROUNDS_PER_TARGET 8
/* A naive placement is searched from only when it starts within this factor of the best plan. */
#define BASELINE_START_FACTOR 2.0

void moira_plan_free(moira_plan_t *plan) {
    for (int l = 0; l < plan->n_layers; l++) {
        free(plan->layers[l].replica_target);
        free(plan->layers[l].replica_expert);
        free(plan->layers[l].replica_load);
    }
    free(plan->layers);
    memset(plan, 0, sizeof(*plan));
}

int64_t moira_plan_target_capacity(const moira_target_t *target, int64_t moe_layers,
                                   int64_t expert_bytes, int64_t slots) {
    if (moe_layers <= 0 || expert_bytes <= 0) return 0;
    uint64_t free_bytes = target->memory_bytes > target->reserve_bytes
                              ? target->memory_bytes - target->reserve_bytes
                              : 0;
    int64_t cap = (int64_t)(free_bytes / (uint64_t)moe_layers / (uint64_t)expert_bytes);
    return slots > 0 && slots < cap ? slots : cap;
}

/* Largest load first, lower expert first on ties: the order greedy packing wants. */
static int by_load_descending(const void *pa, const void *pb, void *context) {
    const layer_state_t *s = context;
    int a = *(const int *)pa, b = *(const int *)pb;
    if (s->load[a] != s->load[b]) return s->load[a] > s->load[b] ? -1 : 1;
    if (s->expert[a] != s->expert[b]) return s->expert[a] < s->expert[b] ? -1 : 1;
    return a - b;
}

/* Greedy: each replica, heaviest first, goes where it leaves the smallest cost key among targets
 * of the domain with a free slot, preferring targets without a replica of the same expert. */
static moira_status_t assign_greedy(layer_state_t *s, const int *domain, int n_domain,
                                    int *replicas, int n_replicas) {
    qsort_r(replicas, (size_t)n_replicas, sizeof(int), by_load_descending, s);
    for (int i = 0; i < n_replicas; i++)
        s->rank[replicas[i]] = i;
    for (int i = 0; i < n_replicas; i++) {
        int r = replicas[i], best = -1;
        bool best_duplicate = true;
        cost_key_t best_key = {0, 0};
        for (int j = 0; j < n_domain; j++) {
            int t = domain[j];
            if (s->count[t] >= s->capacity[t]) continue;
            bool duplicate = *holds_at(s, s->expert[r], t) > 0;
            cost_key_t k = key_of(s, t, s->tokens[t] + s->load[r], s->active[t] + s->reads[r]);
            if (best < 0 || (best_duplicate && !duplicate) ||
                (duplicate == best_duplicate && key_compare(k, best_key) < 0)) {
                best = t;
                best_key = k;
                best_duplicate = duplicate;
            }
        }
        if (best < 0)
            return moira_status_make(MOIRA_CODE_INTERNAL, "planner: no slot left for a replica");
        moira_planner_place(s, r, best);
    }
    return MOIRA_OK_STATUS;
}

/* Greedy placement, then local search until nothing improves (or the round budget ends). */
static moira_status_t assign_domain(layer_state_t *s, const int *domain, int n_domain,
                                    int *replicas, int n_replicas) {
    MOIRA_RETURN_IF_ERROR(assign_greedy(s, domain, n_domain, replicas, n_replicas));
    int rounds = IMPROVE_ROUNDS_PER_TARGET * n_domain + n_replicas;
    while (rounds-- > 0 && moira_planner_improve_once(s, domain, n_domain)) {
        if (rounds % 64 == 0) moira_plan_progress_note(&s->progress, s->layers_done, "searching");
    }
    return MOIRA_OK_STATUS;
}

/* Workspace for one layer, reused across layers. Owned by the planner. */
typedef struct workspace {
    layer_state_t state;
    int *counts;           /* per expert */
    int *domain_of_expert; /* per expert */
    int64_t *spare;        /* per domain (host, or one for flat) */
    int64_t *max_copies;   /* per domain */
    int *domain;           /* targets of a domain */
    int *replicas;         /* replica indices of a domain */
    double *host_rate;     /* per host: TFLOP/s of its targets with room */
    double *host_load;     /* per host: tokens of the groups packed there */
    double *group_load;    /* per expert group */
    int *group_order;      /* expert groups, heaviest first */
    int *heap;             /* per expert: choose_counts' scratch */
    int *target_start;     /* per target + 1: store_layer's counting sort */
    int *by_target;        /* per replica: store_layer's counting sort */
    double *scratch;       /* cost model scratch */
    int max_replicas;
} workspace_t;

/* Turns replica counts into replicas: expert e's load split evenly over its copies, which are
 * numbered consecutively so that first_copy finds them without a search. */
static void make_replicas(layer_state_t *s, const double *load, const int *counts) {
    double total = 0;
    for (int64_t e = 0; e < s->experts; e++)
        total += load[e];
    int64_t k = s->cost->experts_per_token;
    s->batch = k > 0 ? total / (double)k : 0;
    s->partial_reads = false;
    for (int64_t e = 0; e < s->experts && !s->partial_reads; e++)
        s->partial_reads = load[e] > 0 && moira_cost_read_probability(load[e], s->batch) < 1;
    for (int64_t e = 0; e < s->experts; e++) {
        s->first_copy[e] = s->n;
        for (int c = 0; c < counts[e]; c++) {
            s->expert[s->n] = (int32_t)e;
            s->load[s->n] = load[e] / counts[e];
            s->reads[s->n] = reads_of(s, s->load[s->n]);
            s->target[s->n] = -1;
            s->rank[s->n] = s->n;
            s->n++;
        }
    }
    s->first_copy[s->experts] = s->n;
}

/* Flat: every target is one domain. */
static moira_status_t plan_flat(workspace_t *w, const double *load, int64_t budget) {
    layer_state_t *s = &w->state;
    moira_planner_reset(s);
    int n_domain = 0;
    int64_t slots = 0;
    for (int t = 0; t < s->n_targets; t++)
        if (s->capacity[t] > 0) {
            w->domain[n_domain++] = t;
            slots += s->capacity[t];
        }
    for (int64_t e = 0; e < s->experts; e++)
        w->domain_of_expert[e] = 0;
    w->spare[0] = slots - s->experts;
    w->max_copies[0] = n_domain;
    moira_planner_choose_counts(load, s->experts, w->domain_of_expert, w->spare, w->max_copies,
                                budget, w->counts, w->heap);
    make_replicas(s, load, w->counts);
    for (int r = 0; r < s->n; r++)
        w->replicas[r] = r;
    return assign_domain(s, w->domain, n_domain, w->replicas, s->n);
}

/* Heaviest group first, lower group first on ties (the order a stable sort by load gives). */
static int by_group_load_descending(const void *pa, const void *pb, void *context) {
    const double *group_load = context;
    int a = *(const int *)pa, b = *(const int *)pb;
    if (group_load[a] != group_load[b]) return group_load[a] > group_load[b] ? -1 : 1;
    return a - b;
}

/* Packs expert groups onto hosts, heaviest group first, each to the host it leaves least loaded
 * per TFLOP/s among those with room for the whole group. Fills domain_of_expert with hosts and
 * spare / max_copies with each host's free slots and targets. False when a group fits nowhere. */
static bool pack_groups_on_hosts(workspace_t *w, const double *load) {
    layer_state_t *s = &w->state;
    const moira_topology_t *topo = s->topology;
    int hosts = topo->n_hosts;
    int64_t per_group = s->cost->experts_per_group;
    int64_t groups = s->experts / per_group;
    for (int h = 0; h < hosts; h++) {
        w->host_rate[h] = w->host_load[h] = 0;
        w->spare[h] = w->max_copies[h] = 0;
    }
    for (int t = 0; t < s->n_targets; t++) {
        if (s->capacity[t] <= 0) continue;
        int h = topo->targets[t].host;
        w->host_rate[h] += s->peak[t];
        w->spare[h] += s->capacity[t];
        w->max_copies[h]++;
    }
    for (int64_t g = 0; g < groups; g++) {
        w->group_load[g] = 0;
        for (int64_t e = g * per_group; e < (g + 1) * per_group; e++)
            w->group_load[g] += load[e];
        w->group_order[g] = (int)g;
    }
    qsort_r(w->group_order, (size_t)groups, sizeof(int), by_group_load_descending, w->group_load);
    for (int64_t i = 0; i < groups; i++) {
        int g = w->group_order[i], best = -1;
        double weight = w->group_load[g];
        for (int h = 0; h < hosts; h++) {
            if (w->spare[h] < per_group || w->host_rate[h] <= 0) continue;
            if (best < 0 || (w->host_load[h] + weight) / w->host_rate[h] <
                                (w->host_load[best] + weight) / w->host_rate[best])
                best = h;
        }
        if (best < 0) return false;
        w->host_load[best] += weight;
        w->spare[best] -= per_group;
        for (int64_t e = (int64_t)g * per_group; e < (g + 1) * per_group; e++)
            w->domain_of_expert[e] = best;
    }
    return true;
}

/* Hierarchical: expert groups go whole to hosts, then each host replicates and places its own
 * experts. *out_feasible is false when the groups cannot be packed into the hosts' slots. */
static moira_status_t plan_hierarchical(workspace_t *w, const double *load, int64_t budget,
                                        bool *out_feasible) {
    layer_state_t *s = &w->state;
    *out_feasible = pack_groups_on_hosts(w, load);
    if (!*out_feasible) return MOIRA_OK_STATUS;
    moira_planner_reset(s);
    moira_planner_choose_counts(load, s->experts, w->domain_of_expert, w->spare, w->max_copies,
                                budget, w->counts, w->heap);
    make_replicas(s, load, w->counts);
    for (int h = 0; h < s->topology->n_hosts; h++) {
        int n_domain = 0, n_replicas = 0;
        for (int t = 0; t < s->n_targets; t++)
            if (s->capacity[t] > 0 && s->topology->targets[t].host == h) w->domain[n_domain++] = t;
        for (int r = 0; r < s->n; r++)
            if (w->domain_of_expert[s->expert[r]] == h) w->replicas[n_replicas++] = r;
        MOIRA_RETURN_IF_ERROR(assign_domain(s, w->domain, n_domain, w->replicas, n_replicas));
    }
    return MOIRA_OK_STATUS;
}

/* Baselines: one replica per expert, in expert order, filling targets in the given order. */
static moira_status_t plan_in_order(workspace_t *w, const double *load, const int *order,
                                    int n_order, bool round_robin) {
    layer_state_t *s = &w->state;
    moira_planner_reset(s);
    for (int64_t e = 0; e < s->experts; e++)
        w->counts[e] = 1;
    make_replicas(s, load, w->counts);
    int next = 0;
    for (int r = 0; r < s->n; r++) {
        int tried = 0;
        while (tried < n_order && s->count[order[next]] >= s->capacity[order[next]]) {
            next = (next + 1) % n_order;
            tried++;
        }
        if (tried == n_order)
            return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY,
                                     "the baseline's targets cannot hold every expert");
        moira_planner_place(s, r, order[next]);
        if (round_robin) next = (next + 1) % n_order;
    }
    return MOIRA_OK_STATUS;
}

/* Fastest first: peak for these weights, then bandwidth, then topology order. */
static int by_speed_descending(const void *pa, const void *pb, void *context) {
    const layer_state_t *s = context;
    int a = *(const int *)pa, b = *(const int *)pb;
    if (s->peak[a] != s->peak[b]) return s->peak[a] > s->peak[b] ? -1 : 1;
    double ba = moira_target_bandwidth_gbs(&s->topology->targets[a]);
    double bb = moira_target_bandwidth_gbs(&s->topology->targets[b]);
    if (ba != bb) return ba > bb ? -1 : 1;
    return a - b;
}

/* The naive placements: all CPU memory in round robin, or targets fastest first, filled in
 * expert order. */
static moira_status_t plan_baseline(workspace_t *w, const double *load,
                                    moira_plan_strategy_t strategy) {
    layer_state_t *s = &w->state;
    int n = 0;
    for (int t = 0; t < s->n_targets; t++) {
        bool cpu = s->topology->targets[t].kind == MOIRA_TARGET_NUMA;
        if (s->capacity[t] > 0 && (strategy != MOIRA_PLAN_ALL_CPU || cpu)) w->domain[n++] = t;
    }
    if (strategy == MOIRA_PLAN_FILL_FASTEST) {
        qsort_r(w->domain, (size_t)n, sizeof(int), by_speed_descending, s);
    }
    if (n == 0)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "no CPU memory to hold the experts");
    return plan_in_order(w, load, w->domain, n, strategy == MOIRA_PLAN_ALL_CPU);
}

/* Copies the state's replicas into a plan layer, ordered by target (stable: a counting sort). */
static moira_status_t store_layer(workspace_t *w, moira_plan_layer_t *layer) {
    const layer_state_t *s = &w->state;
    layer->replica_target = malloc((size_t)s->n * sizeof(int));
    layer->replica_expert = malloc((size_t)s->n * sizeof(int32_t));
    layer->replica_load = malloc((size_t)s->n * sizeof(double));
    /* Per expert: 1 when some replica receives tokens, 2 once a replica has been kept. */
    unsigned char *expert_state = calloc((size_t)s->experts, 1);
    if (!layer->replica_target || !layer->replica_expert || !layer->replica_load || !expert_state) {
        free(expert_state);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "planner: out of memory");
    }
    for (int r = 0; r < s->n; r++)
        if (s->load[r] > 0) expert_state[s->expert[r]] = 1;
    int *start = w->target_start;
    memset(start, 0, ((size_t)s->n_targets + 1) * sizeof(int));
    for (int r = 0; r < s->n; r++)
        if (s->target[r] >= 0) start[s->target[r] + 1]++;
    for (int t = 0; t < s->n_targets; t++)
        start[t + 1] += start[t];
    int placed = start[s->n_targets];
    for (int r = 0; r < s->n; r++)
        if (s->target[r] >= 0) w->by_target[start[s->target[r]]++] = r;
    layer->n_replicas = 0;
    for (int i = 0; i < placed; i++) {
        int r = w->by_target[i];
        int32_t e = s->expert[r];
        /* The search may have moved every token off a redundant replica: then the replica only
         * costs memory, so the plan leaves it out ("within the redundancy budget"). */
        if (s->load[r] <= 0 && (expert_state[e] == 1 || expert_state[e] == 2)) continue;
        expert_state[e] = 2;
        int k = layer->n_replicas++;
        layer->replica_target[k] = s->target[r];
        layer->replica_expert[k] = e;
        layer->replica_load[k] = s->load[r];
    }
    free(expert_state);
    return MOIRA_OK_STATUS;
}

/* The cost model's verdict on the current placement. */
static void evaluate_state(workspace_t *w, moira_layer_cost_t *out) {
    layer_state_t *s = &w->state;
    moira_cost_layer(s->cost, s->topology, s->n, s->target, s->expert, s->load, w->scratch, out);
}

/* Keeps the state as the layer's plan when it predicts faster than what is kept (or, equally
 * fast, moves fewer bytes over the network). */
static moira_status_t keep_if_better(workspace_t *w, moira_plan_layer_t *layer,
                                     moira_layer_cost_t *kept, bool *have_kept) {
    moira_layer_cost_t cost;
    evaluate_state(w, &cost);
    double tol = 1e-9 * kept->predicted_us;
    bool better =
        !*have_kept || cost.predicted_us < kept->predicted_us - tol ||
        (cost.predicted_us <= kept->predicted_us + tol && cost.network_bytes < kept->network_bytes);
    if (!better) return MOIRA_OK_STATUS;
    free(layer->replica_target);
    free(layer->replica_expert);
    free(layer->replica_load);
    layer->replica_target = NULL;
    layer->replica_expert = NULL;
    layer->replica_load = NULL;
    *kept = cost;
    *have_kept = true;
    return store_layer(w, layer);
}

/* Local search over every target, starting from a naive placement: a second opinion that makes
 * sure the planner never predicts worse than those baselines. */
static moira_status_t improve_baseline(workspace_t *w, const double *load,
                                       moira_plan_strategy_t strategy, double kept_us,
                                       bool *out_placed) {
    layer_state_t *s = &w->state;
    moira_status_t status = plan_baseline(w, load, strategy);
    *out_placed = status == MOIRA_OK_STATUS;
    if (status) {
        moira_status_free(status);
        return MOIRA_OK_STATUS;
    }
    /* A start more than twice as slow as the plan in hand is not worth the search. */
    moira_layer_cost_t start;
    evaluate_state(w, &start);
    if (start.predicted_us > BASELINE_START_FACTOR * kept_us) {
        *out_placed = false;
        return MOIRA_OK_STATUS;
    }
    int n_domain = 0;
    for (int t = 0; t < s->n_targets; t++)
        if (s->capacity[t] > 0) w->domain[n_domain++] = t;
    int rounds = IMPROVE_ROUNDS_PER_TARGET * n_domain + s->n;
    while (rounds-- > 0 && moira_planner_improve_once(s, w->domain, n_domain)) {
        if (rounds % 64 == 0)
            moira_plan_progress_note(&s->progress, s->layers_done, "improving a baseline");
    }
    return MOIRA_OK_STATUS;
}

/* Plans one layer with the requested strategy. BALANCED tries several starts (flat greedy; with
 * several hosts, groups kept on one host; the two naive placements improved by local search)
 * and keeps the one predicted fastest. */
static moira_status_t plan_layer(workspace_t *w, const double *load, const moira_plan_options_t *o,
                                 moira_plan_layer_t *layer) {
    layer_state_t *s = &w->state;
    if (o->strategy != MOIRA_PLAN_BALANCED) {
        MOIRA_RETURN_IF_ERROR(plan_baseline(w, load, o->strategy));
        return store_layer(w, layer);
    }
    moira_layer_cost_t kept;
    memset(&kept, 0, sizeof(kept));
    bool have_kept = false;
    /* Redundancy budgets 0, ..., N/4, N/2, N, fewest first: a larger budget is kept only when it
     * predicts strictly faster, so extra replicas are used only when they lower the prediction,
     * and the prediction at N is never above that at N/2 (nor at 0). */
    int shifts = 0;
    while (shifts < 62 && (o->redundant >> shifts) > 0)
        shifts++;
    for (int i = shifts; i >= 0; i--) {
        int64_t budget = i < 63 ? o->redundant >> i : 0;
        MOIRA_RETURN_IF_ERROR(plan_flat(w, load, budget));
        MOIRA_RETURN_IF_ERROR(keep_if_better(w, layer, &kept, &have_kept));
        if (s->topology->n_hosts > 1 && s->cost->experts_per_group < s->experts) {
            bool feasible = false;
            MOIRA_RETURN_IF_ERROR(plan_hierarchical(w, load, budget, &feasible));
            if (feasible) MOIRA_RETURN_IF_ERROR(keep_if_better(w, layer, &kept, &have_kept));
        }
    }
    static const moira_plan_strategy_t baselines[] = {MOIRA_PLAN_ALL_CPU, MOIRA_PLAN_FILL_FASTEST};
    for (size_t i = 0; i < sizeof(baselines) / sizeof(baselines[0]); i++) {
        bool placed = false;
        MOIRA_RETURN_IF_ERROR(improve_baseline(w, load, baselines[i], kept.predicted_us, &placed));
        if (placed) MOIRA_RETURN_IF_ERROR(keep_if_better(w, layer, &kept, &have_kept));
    }
    return MOIRA_OK_STATUS;
}

/* Releases the workspace; accepts one that was only partly allocated. */
static void free_workspace(workspace_t *w) {
    layer_state_t *s = &w->state;
    free(s->tokens);
    free(s->active);
    free(s->count);
    free(s->holds);
    free(s->now);
    free(s->on_worst);
    free(s->first_copy);
    free(s->target);
    free(s->expert);
    free(s->load);
    free(s->reads);
    free(s->rank);
    free(s->candidates);
    free(s->cross);
    free(s->threshold);
    free((void *)s->capacity);
    free((void *)s->peak);
    free(w->counts);
    free(w->domain_of_expert);
    free(w->spare);
    free(w->max_copies);
    free(w->domain);
    free(w->replicas);
    free(w->scratch);
    free(w->host_rate);
    free(w->host_load);
    free(w->group_load);
    free(w->group_order);
    free(w->heap);
    free(w->target_start);
    free(w->by_target);
    free(s->shared_head);
    free(s->shared_next);
    free(s->shared_prev);
    moira_replica_order_free(&s->order);
}

/* Allocates the per-layer workspace once and works out each target's replicas per layer from
 * its memory, the model and --slots. Targets that cannot be costed get no capacity. */
static moira_status_t init_workspace(workspace_t *w, const moira_topology_t *topology,
                                     const moira_cost_model_t *cost, int64_t moe_layers,
                                     int64_t slots, int64_t max_replicas) {
    memset(w, 0, sizeof(*w));
    layer_state_t *s = &w->state;
    int n = topology->n_targets;
    size_t nt = (size_t)(n > 0 ? n : 1), ne = (size_t)cost->experts;
    s->topology = topology;
    s->cost = cost;
    s->n_targets = n;
    s->experts = cost->experts;
    int64_t *capacity = calloc(nt, sizeof(int64_t));
    double *peak = calloc(nt, sizeof(double));
    s->capacity = capacity;
    s->peak = peak;
    s->tokens = calloc(nt, sizeof(double));
    s->active = calloc(nt, sizeof(double));
    s->count = calloc(nt, sizeof(int));
    s->holds = calloc(ne * nt, 1);
    s->now = calloc(nt, sizeof(cost_key_t));
    s->on_worst = calloc((size_t)max_replicas, sizeof(int));
    s->first_copy = calloc(ne + 1, sizeof(int));
    s->target = calloc((size_t)max_replicas, sizeof(int));
    s->expert = calloc((size_t)max_replicas, sizeof(int32_t));
    s->load = calloc((size_t)max_replicas, sizeof(double));
    s->reads = calloc((size_t)max_replicas, sizeof(double));
    s->rank = calloc((size_t)max_replicas, sizeof(int));
    s->candidates = calloc(6 * nt, sizeof(planner_change_t));
    s->cross = calloc(nt, sizeof(double));
    s->threshold = calloc(2 * nt, sizeof(double));
    w->counts = calloc(ne, sizeof(int));
    w->domain_of_expert = calloc(ne, sizeof(int));
    w->spare = calloc((size_t)topology->n_hosts + 1, sizeof(int64_t));
    w->max_copies = calloc((size_t)topology->n_hosts + 1, sizeof(int64_t));
    w->domain = calloc(nt, sizeof(int));
    w->replicas = calloc((size_t)max_replicas, sizeof(int));
    w->scratch = calloc(moira_cost_scratch_doubles(cost, topology), sizeof(double));
    w->host_rate = calloc((size_t)topology->n_hosts + 1, sizeof(double));
    w->host_load = calloc((size_t)topology->n_hosts + 1, sizeof(double));
    w->group_load = calloc(ne, sizeof(double));
    w->group_order = calloc(ne, sizeof(int));
    w->heap = calloc(ne, sizeof(int));
    w->target_start = calloc(nt + 1, sizeof(int));
    w->by_target = calloc((size_t)max_replicas, sizeof(int));
    s->shared_head = calloc(nt, sizeof(int));
    s->shared_next = calloc((size_t)max_replicas, sizeof(int));
    s->shared_prev = calloc((size_t)max_replicas, sizeof(int));
    if (!capacity || !peak || !s->tokens || !s->active || !s->count || !s->holds || !s->now ||
        !s->on_worst || !s->first_copy || !s->target || !s->expert || !s->load || !s->reads ||
        !s->rank || !s->candidates || !s->cross || !s->threshold || !w->counts ||
        !w->domain_of_expert || !w->spare || !w->max_copies || !w->domain || !w->replicas ||
        !w->scratch || !w->host_rate || !w->host_load || !w->group_load || !w->group_order ||
        !w->heap || !w->target_start || !w->by_target || !s->shared_head || !s->shared_next ||
        !s->shared_prev) {
        free_workspace(w);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "planner: out of memory");
    }
    moira_status_t status =
        moira_replica_order_init(&s->order, (int)max_replicas, n, s->load, s->rank);
    if (status) {
        free_workspace(w);
        return status;
    }
    for (int t = 0; t < n; t++) {
        const moira_target_t *target = &topology->targets[t];
        peak[t] = moira_target_peak_tflops(target, cost->weight_dtype);
        bool usable = peak[t] > 0 && target->bandwidth_gbs > 0;
        capacity[t] = usable ? moira_plan_target_capacity(target, moe_layers,
                                                          (int64_t)cost->expert_bytes, slots)
                             : 0;
        if (capacity[t] > max_replicas) capacity[t] = max_replicas;
    }
    return MOIRA_OK_STATUS;
}

moira_status_t moira_plan_make(const moira_topology_t *topology, const moira_model_config_t *model,
                               const moira_profile_t *profile, const moira_plan_options_t *options,
                               moira_plan_t *out) {
    memset(out, 0, sizeof(*out));
    if (options->redundant < 0 || options->slots < 0)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "--redundant and --slots must not be negative");
    if (profile->experts != model->n_routed_experts)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "the profile has %lld experts, the model %lld",
                                 (long long)profile->experts, (long long)model->n_routed_experts);
    moira_cost_model_t cost;
    moira_cost_model_init(model, &cost);
    int64_t moe_layers = moira_model_config_moe_layer_count(model);
    int64_t experts = model->n_routed_experts;
    int64_t max_replicas = experts + options->redundant;
    workspace_t w;
    MOIRA_RETURN_IF_ERROR(
        init_workspace(&w, topology, &cost, moe_layers, options->slots, max_replicas));
    int64_t slots_total = 0;
    for (int t = 0; t < topology->n_targets; t++)
        slots_total += w.state.capacity[t];
    moira_plan_progress_begin(&w.state.progress, moe_layers);
    moira_status_t status = MOIRA_OK_STATUS;
    /* A model without MoE layers (all dense) has no expert to place: an empty plan. */
    if (moe_layers > 0 && slots_total < experts)
        status = moira_status_make(
            MOIRA_CODE_INVALID_INPUT,
            "model \"%s\" does not fit topology \"%s\": %lld experts per layer x %lld MoE layers "
            "x %.1f MiB each, but the targets hold only %lld per layer%s",
            model->name, topology->name, (long long)experts, (long long)moe_layers,
            cost.expert_bytes / 1048576.0, (long long)slots_total,
            options->slots > 0 ? " (--slots limits them)" : "");
    snprintf(out->topology, sizeof(out->topology), "%s", topology->name);
    snprintf(out->model, sizeof(out->model), "%s", model->name);
    out->experts = experts;
    out->expert_bytes = (int64_t)cost.expert_bytes;
    out->slots = options->slots;
    out->redundant = options->redundant;
    if (!status) {
        out->layers = calloc((size_t)(moe_layers > 0 ? moe_layers : 1), sizeof(moira_plan_layer_t));
        if (!out->layers) status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    }
    for (int64_t l = 0; !status && l < model->num_hidden_layers; l++) {
        if (!moira_model_config_is_moe_layer(model, l)) continue;
        const double *load = moira_profile_layer_load(profile, l);
        if (!load) {
            status = moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "the profile lacks layer %lld",
                                       (long long)l);
            break;
        }
        moira_plan_layer_t *layer = &out->layers[out->n_layers++];
        layer->layer = l;
        w.state.layers_done = out->n_layers - 1;
        status = plan_layer(&w, load, options, layer);
        moira_plan_progress_note(&w.state.progress, out->n_layers, "going on");
    }
    moira_plan_progress_end(&w.state.progress);
    free_workspace(&w);
    if (!status) {
        moira_plan_evaluate(out, topology, model);
        status = moira_plan_validate(out, topology, NULL);
    }
    if (status) moira_plan_free(out);
    return status;
}

void moira_plan_evaluate(moira_plan_t *plan, const moira_topology_t *topology,
                         const moira_model_config_t *model) {
    moira_cost_model_t cost;
    moira_cost_model_init(model, &cost);
    double *scratch = calloc(moira_cost_scratch_doubles(&cost, topology), sizeof(double));
    if (!scratch) return;
    int home = plan->home[0] ? moira_topology_find_target(topology, plan->home) : -1;
    for (int l = 0; l < plan->n_layers; l++) {
        moira_plan_layer_t *layer = &plan->layers[l];
        moira_cost_layer(&cost, topology, layer->n_replicas, layer->replica_target,
                         layer->replica_expert, layer->replica_load, scratch, &layer->cost);
        if (home < 0) continue;
        layer->cost.home_us =
            moira_home_layer_us(topology, home, model, layer->layer, layer->cost.tokens);
        layer->cost.predicted_us += layer->cost.home_us;
    }
    free(scratch);
}

void moira_plan_summarise(const moira_plan_t *plan, moira_plan_summary_t *out) {
    memset(out, 0, sizeof(*out));
    double tokens = 0;
    for (int l = 0; l < plan->n_layers; l++) {
        const moira_layer_cost_t *c = &plan->layers[l].cost;
        out->replicas_per_layer += plan->layers[l].n_replicas;
        out->max_over_mean += c->max_over_mean;
        out->predicted_us_per_layer += c->predicted_us;
        out->link_bytes_per_token += c->link_bytes;
        out->network_bytes_per_token += c->network_bytes;
        if (c->tokens > tokens) tokens = c->tokens;
    }
    if (plan->n_layers > 0) {
        out->replicas_per_layer /= plan->n_layers;
        out->max_over_mean /= plan->n_layers;
        out->predicted_us_per_layer /= plan->n_layers;
    }
    if (tokens > 0) {
        out->link_bytes_per_token /= tokens;
        out->network_bytes_per_token /= tokens;
    }
}

int64_t moira_plan_target_used_bytes(const moira_plan_t *plan, int target) {
    int64_t used = 0;
    for (int l = 0; l < plan->n_layers; l++)
        for (int r = 0; r < plan->layers[l].n_replicas; r++)
            if (plan->layers[l].replica_target[r] == target) used += plan->expert_bytes;
    return used;
}
