#include "placement/eplb_peer.h"

#include <stdlib.h>
#include <string.h>

/* EPLB's balanced_packing: items heaviest first (equal weights keep index order), each into the
 * lightest pack that still has room; every pack takes n / packs items. Writes each item's pack. */
static void balanced_packing(const double *weight, int n, int packs, int *pack_of, int *order,
                             double *pack_weight, int *pack_items) {
    int per_pack = n / packs;
    for (int i = 0; i < n; i++) order[i] = i;
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
    int n_max = experts > replicas ? experts : replicas;
    double *weight = calloc((size_t)n_max, sizeof(double));
    double *pack_weight = calloc((size_t)(gpus + groups + 1), sizeof(double));
    int *pack_of = calloc((size_t)n_max, sizeof(int));
    int *order = calloc((size_t)n_max, sizeof(int));
    int *pack_items = calloc((size_t)(gpus + groups + 1), sizeof(int));
    int *node_experts = calloc((size_t)experts, sizeof(int)); /* experts of each node, in order */
    int *count = calloc((size_t)per_node_experts, sizeof(int));
    int *phy2log = calloc((size_t)per_node_replicas, sizeof(int));
    if (!weight || !pack_weight || !pack_of || !order || !pack_items || !node_experts || !count ||
        !phy2log) {
        free(weight), free(pack_weight), free(pack_of), free(order), free(pack_items);
        free(node_experts), free(count), free(phy2log);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "EPLB peer: out of memory");
    }
    /* Step 1: groups to nodes by group tokens. */
    for (int g = 0; g < groups; g++) {
        weight[g] = 0;
        for (int e = 0; e < group_size; e++) weight[g] += load[g * group_size + e];
    }
    balanced_packing(weight, groups, nodes, pack_of, order, pack_weight, pack_items);
    int *filled = pack_items; /* reuse: experts placed per node so far */
    memset(filled, 0, sizeof(int) * (size_t)nodes);
    int *group_node = calloc((size_t)groups, sizeof(int));
    if (!group_node) {
        free(weight), free(pack_weight), free(pack_of), free(order), free(pack_items);
        free(node_experts), free(count), free(phy2log);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "EPLB peer: out of memory");
    }
    memcpy(group_node, pack_of, sizeof(int) * (size_t)groups);
    for (int g = 0; g < groups; g++) /* groups in index order within a node, as EPLB ranks them */
        for (int e = 0; e < group_size; e++)
            node_experts[group_node[g] * per_node_experts + filled[group_node[g]]++] =
                g * group_size + e;
    for (int i = 0; i < gpus; i++) out_gpu_load[i] = 0;
    for (int node = 0; node < nodes; node++) {
        const int *mine = node_experts + node * per_node_experts;
        /* Step 2: replicate within the node: each extra copy to the expert with the most tokens
         * per copy (the first such on ties, like torch's max). */
        for (int e = 0; e < per_node_experts; e++) {
            count[e] = 1;
            phy2log[e] = e;
        }
        for (int r = per_node_experts; r < per_node_replicas; r++) {
            int best = 0;
            for (int e = 1; e < per_node_experts; e++)
                if (load[mine[e]] / count[e] > load[mine[best]] / count[best]) best = e;
            phy2log[r] = best;
            count[best]++;
        }
        /* Step 3: replicas to the node's GPUs by tokens per replica. */
        for (int r = 0; r < per_node_replicas; r++)
            weight[r] = load[mine[phy2log[r]]] / count[phy2log[r]];
        balanced_packing(weight, per_node_replicas, gpus_per_node, pack_of, order, pack_weight,
                         pack_items);
        for (int r = 0; r < per_node_replicas; r++)
            out_gpu_load[node * gpus_per_node + pack_of[r]] += weight[r];
    }
    double max = 0, sum = 0;
    for (int i = 0; i < gpus; i++) {
        sum += out_gpu_load[i];
        if (out_gpu_load[i] > max) max = out_gpu_load[i];
    }
    *out_max_over_mean = sum > 0 ? max / (sum / gpus) : 1.0;
    free(weight), free(pack_weight), free(pack_of), free(order), free(pack_items);
    free(node_experts), free(count), free(phy2log), free(group_node);
    return MOIRA_OK_STATUS;
}
