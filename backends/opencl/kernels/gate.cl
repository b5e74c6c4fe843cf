/* The router (docs/math.md) after its logits: scoring, bias-steered group and top-k selection,
 * weights, then the capacity limit. The logits come from moira_linear. */

#define GATE_MAX_GROUPS 64

/* Whether candidate i ranks before j: larger value first, ties to the lower index. NaN ranks as
 * -infinity so that it is picked last, as on the cpu backend. */
bool gate_ranks_before(float vi, int i, float vj, int j) {
    vi = isnan(vi) ? -INFINITY : vi;
    vj = isnan(vj) ? -INFINITY : vj;
    return vi > vj || (vi == vj && i < j);
}

/* The best element of `values` ranking after `previous` (-1: the very best). */
int gate_next_best(__global const float *values, int n, int previous) {
    float previous_value = previous >= 0 ? values[previous] : 0.0f;
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (previous >= 0 && !gate_ranks_before(previous_value, previous, values[i], i)) continue;
        if (best < 0 || gate_ranks_before(values[i], i, values[best], best)) best = i;
    }
    return best;
}

/* One work-item per token. `scores` [T,E] holds the logits on entry and the routing
 * probabilities on exit; `chosen` [T,E] receives the biased, group-masked selection scores (the
 * optional selection output, or scratch). */
__kernel void moira_gate_route(__global float *scores, __global float *chosen, long chosen_off,
                               __global const float *bias, long bias_off, int has_bias,
                               __global int *topk_idx, long idx_off, __global float *topk_weight,
                               long weight_off, int n_experts, int top_k, int n_group,
                               int topk_group, int scoring, int norm_topk_prob,
                               float routed_scaling_factor, int tokens) {
    long t = get_global_id(0);
    if (t >= tokens) return;
    __global float *s = scores + t * n_experts;
    __global float *sel = chosen + chosen_off + t * n_experts;
    if (scoring == 0) {
        float max_logit = -INFINITY, sum = 0.0f;
        for (int e = 0; e < n_experts; e++)
            max_logit = fmax(max_logit, s[e]);
        for (int e = 0; e < n_experts; e++) {
            s[e] = exp(s[e] - max_logit);
            sum += s[e];
        }
        for (int e = 0; e < n_experts; e++)
            s[e] /= sum;
    } else {
        for (int e = 0; e < n_experts; e++)
            s[e] = 1.0f / (1.0f + exp(-s[e]));
    }
    for (int e = 0; e < n_experts; e++)
        sel[e] = s[e] + (has_bias ? bias[bias_off + e] : 0.0f);

    if (n_group > 1) {
        int group_size = n_experts / n_group;
        float group_scores[GATE_MAX_GROUPS];
        for (int g = 0; g < n_group; g++) {
            __global const float *group = sel + g * group_size;
            int first = gate_next_best(group, group_size, -1);
            float score = group[first];
            if (has_bias && group_size >= 2)
                score += group[gate_next_best(group, group_size, first)];
            group_scores[g] = score;
        }
        for (int g = 0; g < n_group; g++) {
            int ahead = 0;
            for (int o = 0; o < n_group; o++)
                ahead += gate_ranks_before(group_scores[o], o, group_scores[g], g);
            if (ahead >= topk_group)
                for (int e = g * group_size; e < (g + 1) * group_size; e++)
                    sel[e] = -INFINITY;
        }
    }

    __global int *idx = topk_idx + idx_off + t * top_k;
    __global float *weight = topk_weight + weight_off + t * top_k;
    int previous = -1;
    float sum = 0.0f;
    for (int j = 0; j < top_k; j++) {
        previous = gate_next_best(sel, n_experts, previous);
        idx[j] = previous;
        sum += s[previous];
    }
    float norm = norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
    for (int j = 0; j < top_k; j++)
        weight[j] = s[idx[j]] * norm * routed_scaling_factor;
}

/* First come, first served in token order, then in each token's selection order; one work-item.
 * `taken` is scratch of E ints. */
__kernel void moira_gate_capacity(__global int *topk_idx, long idx_off, __global float *topk_weight,
                                  long weight_off, __global int *taken, int n_experts,
                                  int assignments, int capacity) {
    for (int e = 0; e < n_experts; e++)
        taken[e] = 0;
    for (int a = 0; a < assignments; a++) {
        int expert = topk_idx[idx_off + a];
        if (expert < 0) continue;
        if (taken[expert] < capacity) {
            taken[expert]++;
        } else {
            topk_idx[idx_off + a] = -1;
            topk_weight[weight_off + a] = 0.0f;
        }
    }
}
