/* The expert path: MOE_DISPATCH, the grouped SwiGLU of MOE_FFN (a tile list, then one launch for
 * the gate/up half and one for the down half across all experts) and MOE_COMBINE. */

#define MOE_TILE 8

/* A stable counting sort of the T*k assignments by expert, on one work-item: O(T*k + E), far
 * cheaper than the FFN it feeds. An index outside [0, E) is treated as dropped so a corrupt
 * routing table can never make a kernel write out of bounds. */
__kernel void moira_moe_dispatch(__global const int *topk_idx, long idx_off, int assignments,
                                 int n_experts, __global int *offsets, long offsets_off,
                                 __global int *sorted_rows, long sorted_off,
                                 __global int *assignment_pos, long pos_off) {
    __global int *off = offsets + offsets_off;
    for (int e = 0; e <= n_experts; e++)
        off[e] = 0;
    for (int a = 0; a < assignments; a++) {
        int expert = topk_idx[idx_off + a];
        if (expert >= 0 && expert < n_experts) off[expert + 1]++;
    }
    for (int e = 0; e < n_experts; e++)
        off[e + 1] += off[e];
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
    for (int e = n_experts; e > 0; e--)
        off[e] = off[e - 1];
    off[0] = 0;
    for (int row = off[n_experts]; row < assignments; row++)
        sorted_rows[sorted_off + row] = -1;
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
    for (; n < max_tiles; n++)
        tiles[2 * n] = -1;
}

/* The row range of a tile: [row0, row_end). */
int moe_tile_end(__global const int *offsets, long offsets_off, int expert, int row0,
                 int assignments) {
    int end = clamp(offsets[offsets_off + expert + 1], 0, assignments);
    return min(end, row0 + MOE_TILE);
}

/* The grouped kernels: a work-group takes one tile (an expert and up to MOE_TILE of its rows,
 * group dimension 1) and MOE_COLUMNS output columns (group dimension 0), one per work-item. The
 * tile's input rows are staged in local memory MOE_CHUNK columns at a time; each work-item then
 * streams its own weight row with 4-wide loads and updates all the tile's rows from it, so every
 * weight element is read once per tile, whatever the tile's row count. */
#define MOE_COLUMNS 128
#define MOE_CHUNK 256

/* The inner loops of the grouped kernels over the first ROWS rows of a tile, 4 reduction
 * elements at a time through the weights' reader AT4 (ROWS a constant, so the accumulators stay
 * in registers). */
#define MOE_UP_STEP(ROWS, AT4)                                                                     \
    for (; c + 4 <= count; c += 4) {                                                               \
        float4 a = AT4(WEIGHT_PASS(w1), expert, n, k0 + c);                                        \
        float4 b = AT4(WEIGHT_PASS(w3), expert, n, k0 + c);                                        \
        for (int r = 0; r < (ROWS); r++) {                                                         \
            float4 v = vload4(0, &rows[r][c]);                                                     \
            gate[r] += v * a;                                                                      \
            up[r] += v * b;                                                                        \
        }                                                                                          \
    }
#define MOE_DOWN_STEP(ROWS, AT4)                                                                   \
    for (; c + 4 <= count; c += 4) {                                                               \
        float4 a = AT4(WEIGHT_PASS(w2), expert, d, k0 + c);                                        \
        for (int r = 0; r < (ROWS); r++)                                                           \
            acc[r] += vload4(0, &rows[r][c]) * a;                                                  \
    }

/* h[p] = silu(W1_e x[sorted_rows[p] / k]) * (W3_e x[...]) for the rows p of one tile. */
#define MOE_UP_KERNEL(NAME, AT4, AT)                                                               \
    __kernel __attribute__((reqd_work_group_size(MOE_COLUMNS, 1, 1))) void NAME(                   \
        __global const float *x, long x_off, WEIGHT_PARAMS(w1), WEIGHT_PARAMS(w3),                 \
        __global const int *offsets, long offsets_off, __global const int *sorted_rows,            \
        long sorted_off, __global const int *tiles, __global float *h, int hidden, int inter,      \
        int top_k, int assignments, int tokens) {                                                  \
        __local float rows[MOE_TILE][MOE_CHUNK];                                                   \
        __local int row_token[MOE_TILE];                                                           \
        int tile = get_group_id(1);                                                                \
        int expert = tiles[2 * tile];                                                              \
        if (expert < 0) return;                                                                    \
        int row0 = tiles[2 * tile + 1];                                                            \
        int n_rows = moe_tile_end(offsets, offsets_off, expert, row0, assignments) - row0;         \
        int lid = get_local_id(0);                                                                 \
        int n = get_group_id(0) * MOE_COLUMNS + lid;                                               \
        if (lid < MOE_TILE) {                                                                      \
            int token = lid < n_rows ? sorted_rows[sorted_off + row0 + lid] / top_k : -1;          \
            row_token[lid] = token >= 0 && token < tokens ? token : -1;                            \
        }                                                                                          \
        float4 gate[MOE_TILE], up[MOE_TILE];                                                       \
        for (int r = 0; r < MOE_TILE; r++)                                                         \
            gate[r] = up[r] = (float4)(0.0f);                                                      \
        float gate_tail[MOE_TILE], up_tail[MOE_TILE];                                              \
        for (int r = 0; r < MOE_TILE; r++)                                                         \
            gate_tail[r] = up_tail[r] = 0.0f;                                                      \
        for (int k0 = 0; k0 < hidden; k0 += MOE_CHUNK) {                                           \
            int count = min(MOE_CHUNK, hidden - k0);                                               \
            barrier(CLK_LOCAL_MEM_FENCE);                                                          \
            for (int i = lid; i < MOE_TILE * MOE_CHUNK; i += MOE_COLUMNS) {                        \
                int r = i / MOE_CHUNK, c = i % MOE_CHUNK;                                          \
                int token = row_token[r];                                                          \
                rows[r][c] =                                                                       \
                    token >= 0 && c < count ? x[x_off + (long)token * hidden + k0 + c] : 0.0f;     \
            }                                                                                      \
            barrier(CLK_LOCAL_MEM_FENCE);                                                          \
            if (n < inter) {                                                                       \
                int c = 0;                                                                         \
                /* Tiles of at most half the rows (common: a few tokens per expert) skip the       \
                 * empty half; the bound is a constant in each loop so accumulators stay in        \
                 * registers. (A further quarter-tile case measured slower on PoCL.) */            \
                if (n_rows <= MOE_TILE / 2) {                                                      \
                    MOE_UP_STEP(MOE_TILE / 2, AT4)                                                 \
                } else {                                                                           \
                    MOE_UP_STEP(MOE_TILE, AT4)                                                     \
                }                                                                                  \
                for (; c < count; c++) {                                                           \
                    float a = AT(WEIGHT_PASS(w1), expert, n, k0 + c);                              \
                    float b = AT(WEIGHT_PASS(w3), expert, n, k0 + c);                              \
                    for (int r = 0; r < MOE_TILE; r++) {                                           \
                        gate_tail[r] += rows[r][c] * a;                                            \
                        up_tail[r] += rows[r][c] * b;                                              \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        if (n >= inter) return;                                                                    \
        for (int r = 0; r < n_rows; r++) {                                                         \
            float g = (gate[r].x + gate[r].y) + (gate[r].z + gate[r].w) + gate_tail[r];            \
            float u = (up[r].x + up[r].y) + (up[r].z + up[r].w) + up_tail[r];                      \
            h[(long)(row0 + r) * inter + n] = moira_silu(g) * u;                                   \
        }                                                                                          \
    }

/* ys[p] = W2_e h[p] for the rows of one tile. */
#define MOE_DOWN_KERNEL(NAME, AT4, AT)                                                             \
    __kernel __attribute__((reqd_work_group_size(MOE_COLUMNS, 1, 1))) void NAME(                   \
        __global const float *h, WEIGHT_PARAMS(w2), __global const int *offsets, long offsets_off, \
        __global const int *tiles, __global float *ys, long ys_off, int hidden, int inter,         \
        int assignments) {                                                                         \
        __local float rows[MOE_TILE][MOE_CHUNK];                                                   \
        int tile = get_group_id(1);                                                                \
        int expert = tiles[2 * tile];                                                              \
        if (expert < 0) return;                                                                    \
        int row0 = tiles[2 * tile + 1];                                                            \
        int n_rows = moe_tile_end(offsets, offsets_off, expert, row0, assignments) - row0;         \
        int lid = get_local_id(0);                                                                 \
        int d = get_group_id(0) * MOE_COLUMNS + lid;                                               \
        float4 acc[MOE_TILE];                                                                      \
        float acc_tail[MOE_TILE];                                                                  \
        for (int r = 0; r < MOE_TILE; r++) {                                                       \
            acc[r] = (float4)(0.0f);                                                               \
            acc_tail[r] = 0.0f;                                                                    \
        }                                                                                          \
        for (int k0 = 0; k0 < inter; k0 += MOE_CHUNK) {                                            \
            int count = min(MOE_CHUNK, inter - k0);                                                \
            barrier(CLK_LOCAL_MEM_FENCE);                                                          \
            for (int i = lid; i < MOE_TILE * MOE_CHUNK; i += MOE_COLUMNS) {                        \
                int r = i / MOE_CHUNK, c = i % MOE_CHUNK;                                          \
                rows[r][c] =                                                                       \
                    r < n_rows && c < count ? h[(long)(row0 + r) * inter + k0 + c] : 0.0f;         \
            }                                                                                      \
            barrier(CLK_LOCAL_MEM_FENCE);                                                          \
            if (d < hidden) {                                                                      \
                int c = 0;                                                                         \
                if (n_rows <= MOE_TILE / 2) {                                                      \
                    MOE_DOWN_STEP(MOE_TILE / 2, AT4)                                               \
                } else {                                                                           \
                    MOE_DOWN_STEP(MOE_TILE, AT4)                                                   \
                }                                                                                  \
                for (; c < count; c++) {                                                           \
                    float a = AT(WEIGHT_PASS(w2), expert, d, k0 + c);                              \
                    for (int r = 0; r < MOE_TILE; r++)                                             \
                        acc_tail[r] += rows[r][c] * a;                                             \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        if (d >= hidden) return;                                                                   \
        for (int r = 0; r < n_rows; r++)                                                           \
            ys[ys_off + (long)(row0 + r) * hidden + d] =                                           \
                (acc[r].x + acc[r].y) + (acc[r].z + acc[r].w) + acc_tail[r];                       \
    }

/* One pair of kernels per weight format, so each reads its format with no switch: the float
 * types (f32, f16, bf16, fp8, told apart per load) and, for a launch whose three expert weights
 * share one, MXFP4 and INT8. */
MOE_UP_KERNEL(moira_moe_up, moira_weight_at4, moira_weight_at)
MOE_DOWN_KERNEL(moira_moe_down, moira_weight_at4, moira_weight_at)
MOE_UP_KERNEL(moira_moe_up_mxfp4, moira_mxfp4_at4, moira_mxfp4_at)
MOE_DOWN_KERNEL(moira_moe_down_mxfp4, moira_mxfp4_at4, moira_mxfp4_at)
MOE_UP_KERNEL(moira_moe_up_int8, moira_int8_at4, moira_int8_at)
MOE_DOWN_KERNEL(moira_moe_down_int8, moira_int8_at4, moira_int8_at)

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
