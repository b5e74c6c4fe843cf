/* The expert path: MOE_DISPATCH, the grouped SwiGLU of MOE_FFN (a tile list, then one launch for
 * the gate/up half and one for the down half across all experts) and MOE_COMBINE. */

#define MOE_TILE 16

/* A stable counting sort of the T*k assignments by expert, on one work-item: O(T*k + E), far
 * cheaper than the FFN it feeds. An index outside [0, E) is treated as dropped so a corrupt
 * routing table can never make a kernel write out of bounds. */
__kernel void moira_moe_dispatch(__global const int *topk_idx, long idx_off, int assignments,
                                 int n_experts, __global int *offsets, long offsets_off,
                                 __global int *sorted_rows, long sorted_off,
                                 __global int *assignment_pos, long pos_off) {
    __global int *off = offsets + offsets_off;
    for (int e = 0; e <= n_experts; e++) off[e] = 0;
    for (int a = 0; a < assignments; a++) {
        int expert = topk_idx[idx_off + a];
        if (expert >= 0 && expert < n_experts) off[expert + 1]++;
    }
    for (int e = 0; e < n_experts; e++) off[e + 1] += off[e];
    /* The offsets themselves serve as per-expert cursors (each ends one expert further on) and
     * are shifted back afterwards, which keeps the kernel free of scratch memory. */
    for (int a = 0; a < assignments; a++) {
        int expert = topk_idx[idx_off + a];
        if (expert < 0 || expert >= n_experts) {
            assignment_pos[pos_off + a] = -1;
            continue;
        }
        int row = off[expert];
        off[expert] = row + 1;
        sorted_rows[sorted_off + row] = a;
        assignment_pos[pos_off + a] = row;
    }
    /* off[e] now holds the old off[e + 1]: shift back. */
    for (int e = n_experts; e > 0; e--) off[e] = off[e - 1];
    off[0] = 0;
    for (int row = off[n_experts]; row < assignments; row++) sorted_rows[sorted_off + row] = -1;
}

/* Cuts every expert's rows into tiles of MOE_TILE: tiles[2i] = expert, tiles[2i+1] = first row;
 * unused tiles get expert -1. At most ceil(A / MOE_TILE) + E tiles exist. Offsets are clamped
 * to [0, A] so a corrupt table cannot send a kernel outside ys. */
__kernel void moira_moe_tiles(__global const int *offsets, long offsets_off, int n_experts,
                              int assignments, __global int *tiles, int max_tiles) {
    int n = 0;
    for (int e = 0; e < n_experts; e++) {
        int lo = clamp(offsets[offsets_off + e], 0, assignments);
        int hi = clamp(offsets[offsets_off + e + 1], lo, assignments);
        for (int r = lo; r < hi && n < max_tiles; r += MOE_TILE, n++) {
            tiles[2 * n] = e;
            tiles[2 * n + 1] = r;
        }
    }
    for (; n < max_tiles; n++) tiles[2 * n] = -1;
}

/* The row range of a tile: [row0, row_end). */
int moe_tile_end(__global const int *offsets, long offsets_off, int expert, int row0,
                 int assignments) {
    int end = clamp(offsets[offsets_off + expert + 1], 0, assignments);
    return min(end, row0 + MOE_TILE);
}

/* h[p] = silu(W1_e x[sorted_rows[p] / k]) * (W3_e x[...]) for the rows p of one tile (group
 * dimension 1) and a tile of I (group dimension 0). */
__kernel __attribute__((reqd_work_group_size(MOE_TILE, MOE_TILE, 1))) void
moira_moe_up(__global const float *x, long x_off, WEIGHT_PARAMS(w1), WEIGHT_PARAMS(w3),
             __global const int *offsets, long offsets_off, __global const int *sorted_rows,
             long sorted_off, __global const int *tiles, __global float *h, int hidden,
             int inter, int top_k, int assignments, int tokens) {
    __local float x_tile[MOE_TILE][MOE_TILE + 1];
    __local float g_tile[MOE_TILE][MOE_TILE + 1];
    __local float u_tile[MOE_TILE][MOE_TILE + 1];
    int tile = get_group_id(1);
    int expert = tiles[2 * tile];
    if (expert < 0) return;
    int row0 = tiles[2 * tile + 1];
    int row_end = moe_tile_end(offsets, offsets_off, expert, row0, assignments);
    int ln = get_local_id(0), lt = get_local_id(1);
    int n0 = get_group_id(0) * MOE_TILE;
    int p = row0 + lt;
    int token = p < row_end ? sorted_rows[sorted_off + p] / top_k : -1;
    bool row_ok = token >= 0 && token < tokens;
    float gate = 0.0f, up = 0.0f;
    for (int k0 = 0; k0 < hidden; k0 += MOE_TILE) {
        int k = k0 + ln;
        bool k_ok = k < hidden;
        x_tile[lt][ln] = row_ok && k_ok ? x[x_off + (long)token * hidden + k] : 0.0f;
        bool n_ok = n0 + lt < inter && k_ok;
        g_tile[lt][ln] = n_ok ? moira_weight_at(WEIGHT_PASS(w1), expert, n0 + lt, k) : 0.0f;
        u_tile[lt][ln] = n_ok ? moira_weight_at(WEIGHT_PASS(w3), expert, n0 + lt, k) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < MOE_TILE; kk++) {
            gate += x_tile[lt][kk] * g_tile[ln][kk];
            up += x_tile[lt][kk] * u_tile[ln][kk];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    int n = n0 + ln;
    if (p < row_end && n < inter) h[(long)p * inter + n] = moira_silu(gate) * up;
}

/* ys[p] = W2_e h[p] for the rows of one tile and a tile of D. */
__kernel __attribute__((reqd_work_group_size(MOE_TILE, MOE_TILE, 1))) void
moira_moe_down(__global const float *h, WEIGHT_PARAMS(w2), __global const int *offsets,
               long offsets_off, __global const int *tiles, __global float *ys, long ys_off,
               int hidden, int inter, int assignments) {
    __local float h_tile[MOE_TILE][MOE_TILE + 1];
    __local float w_tile[MOE_TILE][MOE_TILE + 1];
    int tile = get_group_id(1);
    int expert = tiles[2 * tile];
    if (expert < 0) return;
    int row0 = tiles[2 * tile + 1];
    int row_end = moe_tile_end(offsets, offsets_off, expert, row0, assignments);
    int ln = get_local_id(0), lt = get_local_id(1);
    int d0 = get_group_id(0) * MOE_TILE;
    int p = row0 + lt;
    float acc = 0.0f;
    for (int k0 = 0; k0 < inter; k0 += MOE_TILE) {
        int k = k0 + ln;
        h_tile[lt][ln] = p < row_end && k < inter ? h[(long)p * inter + k] : 0.0f;
        w_tile[lt][ln] = d0 + lt < hidden && k < inter
                             ? moira_weight_at(WEIGHT_PASS(w2), expert, d0 + lt, k)
                             : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < MOE_TILE; kk++) acc += h_tile[lt][kk] * w_tile[ln][kk];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    int d = d0 + ln;
    if (p < row_end && d < hidden) ys[ys_off + (long)p * hidden + d] = acc;
}

/* y[t] = beta * y[t] + sum_j w[t,j] * ys[assignment_pos[t,j]], j in order, -1 skipped. */
__kernel void moira_moe_combine(__global const float *ys, long ys_off,
                                __global const int *assignment_pos, long pos_off,
                                __global const float *topk_weight, long weight_off,
                                __global float *y, long y_off, int hidden, int top_k,
                                int assignments, float beta) {
    int d = get_global_id(0);
    long t = get_global_id(1);
    if (d >= hidden) return;
    float sum = 0.0f;
    for (int j = 0; j < top_k; j++) {
        int pos = assignment_pos[pos_off + t * top_k + j];
        if (pos < 0 || pos >= assignments) continue;
        sum += topk_weight[weight_off + t * top_k + j] * ys[ys_off + (long)pos * hidden + d];
    }
    __global float *out = y + y_off + t * hidden + d;
    *out = beta == 0.0f ? sum : beta * *out + sum;
}
