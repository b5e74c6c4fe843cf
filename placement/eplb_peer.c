#include "placement/eplb_peer.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* EPLB's balanced_packing: items heaviest first (equal weights keep index order), each into the
 * lightest pack that still has room; every pack takes n / packs items. Writes each item's pack. */
static void balanced_packing(const double *weight, int n, int packs, int *pack_of, int *order,
                             double *pack_weight, int *pack_items) {
    int per_pack = n / packs;
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++) /* insertion sort, stable, descending */
        for (int j = i; j > 0 && weight[order[j]] > weight[order[j - 1]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
    for (int p = 0; p < packs; p++) {
        pack_weight[p] = 0;
        pack_items[p] = 0;
    }
    for (int i = 0; i < n; i++) {
        int item = order[i], best = -1;
        for (int p = 0; p < packs; p++)
            if (pack_items[p] < per_pack && (best < 0 || pack_weight[p] < pack_weight[best]))
                best = p;
        pack_of[item] = best;
        pack_weight[best] += weight[item];
        pack_items[best]++;
    }
}

/* Scratch arrays of one call, freed together. */
typedef struct eplb_scratch {
    double *weight, *pack_weight;
    int *pack_of, *order, *pack_items, *node_experts, *count, *phy2log, *group_node;
} eplb_scratch_t;

/* Releases whatever alloc_scratch managed to allocate. */
static void free_scratch(eplb_scratch_t *x) {
    free(x->weight);
    free(x->pack_weight);
    free(x->pack_of);
    free(x->order);
    free(x->pack_items);
    free(x->node_experts);
    free(x->count);
    free(x->phy2log);
    free(x->group_node);
}

/* Allocates every array one call needs up front, so the policy itself cannot fail midway. */
static bool alloc_scratch(eplb_scratch_t *x, int experts, int replicas, int groups, int gpus) {
    size_t items = (size_t)(experts > replicas ? experts : replicas);
    size_t packs = (size_t)(gpus + groups + 1);
    x->weight = calloc(items, sizeof(double));
    x->pack_weight = calloc(packs, sizeof(double));
    x->pack_of = calloc(items, sizeof(int));
    x->order = calloc(items, sizeof(int));
    x->pack_items = calloc(packs, sizeof(int));
    x->node_experts = calloc((size_t)experts, sizeof(int));
    x->count = calloc((size_t)experts, sizeof(int));
    x->phy2log = calloc(items, sizeof(int));
    x->group_node = calloc((size_t)groups, sizeof(int));
    return x->weight && x->pack_weight && x->pack_of && x->order && x->pack_items &&
           x->node_experts && x->count && x->phy2log && x->group_node;
}

moira_status_t moira_eplb_hierarchical(const double *load, int experts, int replicas, int groups,
                                       int nodes, int gpus_per_node, double *out_gpu_load,
                                       double *out_max_over_mean) {
    int gpus = nodes * gpus_per_node;
    if (experts <= 0 || groups <= 0 || nodes <= 0 || gpus_per_node <= 0 || experts % groups ||
        groups % nodes || replicas % gpus || replicas < experts)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "EPLB needs experts %% groups, groups %% nodes and replicas %% "
                                 "GPUs to be 0");
    int group_size = experts / groups, per_node_experts = experts / nodes;
    int per_node_replicas = replicas / nodes;
    eplb_scratch_t x;
    memset(&x, 0, sizeof(x));
    if (!alloc_scratch(&x, experts, replicas, groups, gpus)) {
        free_scratch(&x);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "EPLB peer: out of memory");
    }
    /* Step 1: groups to nodes by group tokens. */
    for (int g = 0; g < groups; g++) {
        x.weight[g] = 0;
        for (int e = 0; e < group_size; e++)
            x.weight[g] += load[g * group_size + e];
    }
    balanced_packing(x.weight, groups, nodes, x.pack_of, x.order, x.pack_weight, x.pack_items);
    memcpy(x.group_node, x.pack_of, sizeof(int) * (size_t)groups);
    int *filled = x.pack_items; /* reused: experts placed on each node so far */
    memset(filled, 0, sizeof(int) * (size_t)nodes);
    for (int g = 0; g < groups; g++) /* groups in index order within a node, as EPLB ranks them */
        for (int e = 0; e < group_size; e++) {
            int node = x.group_node[g];
            x.node_experts[node * per_node_experts + filled[node]++] = g * group_size + e;
        }
    for (int i = 0; i < gpus; i++)
        out_gpu_load[i] = 0;
    for (int node = 0; node < nodes; node++) {
        const int *mine = x.node_experts + node * per_node_experts;
        /* Step 2: replicate within the node: each extra copy to the expert with the most tokens
         * per copy (the first such on ties, like torch's max). */
        for (int e = 0; e < per_node_experts; e++) {
            x.count[e] = 1;
            x.phy2log[e] = e;
        }
        for (int r = per_node_experts; r < per_node_replicas; r++) {
            int best = 0;
            for (int e = 1; e < per_node_experts; e++)
                if (load[mine[e]] / x.count[e] > load[mine[best]] / x.count[best]) best = e;
            x.phy2log[r] = best;
            x.count[best]++;
        }
        /* Step 3: replicas to the node's GPUs by tokens per replica. */
        for (int r = 0; r < per_node_replicas; r++)
            x.weight[r] = load[mine[x.phy2log[r]]] / x.count[x.phy2log[r]];
        balanced_packing(x.weight, per_node_replicas, gpus_per_node, x.pack_of, x.order,
                         x.pack_weight, x.pack_items);
        for (int r = 0; r < per_node_replicas; r++)
            out_gpu_load[node * gpus_per_node + x.pack_of[r]] += x.weight[r];
    }
    double max = 0, sum = 0;
    for (int i = 0; i < gpus; i++) {
        sum += out_gpu_load[i];
        if (out_gpu_load[i] > max) max = out_gpu_load[i];
    }
    *out_max_over_mean = sum > 0 ? max / (sum / gpus) : 1.0;
    free_scratch(&x);
    return MOIRA_OK_STATUS;
}
