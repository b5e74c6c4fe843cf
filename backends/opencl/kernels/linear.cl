/* Dense projections: LINEAR (and the batched form MLA_ABSORB_OUT uses) and the fused gate/up half
 * of SWIGLU. Output tiles of TILE x TILE, with the activation and weight tiles staged in local
 * memory so each element read from global memory is used TILE times. */

#define TILE 16

/* Register blocking: each work-item owns BLOCK x BLOCK outputs spaced TILE apart, so a work-group
 * covers a (TILE*BLOCK)^2 output tile and every value read from local memory feeds BLOCK
 * multiply-adds. */
#define BLOCK 4
#define WIDE (TILE * BLOCK)

/* y[b] = beta * y[b] + x[b] W[b]^T over `batch` slices (get_global_id(2)). Slice b reads x rows
 * at x_off + b * x_batch_step, weight rows w_row0 + b * w_batch_rows onwards of matrix `matrix`,
 * and writes y at y_off + b * y_batch_step. With w_transposed the slice's weight is stored
 * [in_features, out_features] (y = x W, as MLA's absorbed query uses kv_b_proj). Work-group
 * (TILE, TILE) covers WIDE x WIDE outputs. */
__kernel __attribute__((reqd_work_group_size(TILE, TILE, 1))) void
moira_linear(__global const float *x, long x_off, long x_stride, long x_batch_step,
             WEIGHT_PARAMS(w), long matrix, long w_row0, long w_batch_rows, int w_transposed,
             __global float *y, long y_off, long y_stride, long y_batch_step, int tokens,
             int out_features, int in_features, float beta) {
    __local float x_tile[TILE][WIDE];
    __local float w_tile[TILE][WIDE];
    int ln = get_local_id(0), lt = get_local_id(1);
    int n0 = get_group_id(0) * WIDE, t0 = get_group_id(1) * WIDE;
    long b = get_global_id(2);
    __global const float *xb = x + x_off + b * x_batch_step;
    long row_base = w_row0 + b * w_batch_rows;
    float acc[BLOCK][BLOCK];
    for (int i = 0; i < BLOCK; i++)
        for (int j = 0; j < BLOCK; j++)
            acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < in_features; k0 += TILE) {
        int k = k0 + ln;
        bool k_ok = k < in_features;
        for (int r = 0; r < BLOCK; r++) {
            int t = t0 + lt + r * TILE, n = n0 + lt + r * TILE;
            x_tile[ln][lt + r * TILE] = t < tokens && k_ok ? xb[(long)t * x_stride + k] : 0.0f;
            if (!w_transposed) {
                w_tile[ln][lt + r * TILE] =
                    n < out_features && k_ok
                        ? moira_weight_at(WEIGHT_PASS(w), matrix, row_base + n, k)
                        : 0.0f;
            } else {
                /* Neighbouring work-items take neighbouring columns of a stored row. */
                int kt = k0 + lt, nt = n0 + ln + r * TILE;
                w_tile[lt][ln + r * TILE] =
                    nt < out_features && kt < in_features
                        ? moira_weight_at(WEIGHT_PASS(w), matrix, row_base + kt, nt)
                        : 0.0f;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE; kk++) {
            float a[BLOCK], c[BLOCK];
            for (int i = 0; i < BLOCK; i++)
                a[i] = x_tile[kk][lt + i * TILE];
            for (int j = 0; j < BLOCK; j++)
                c[j] = w_tile[kk][ln + j * TILE];
            for (int i = 0; i < BLOCK; i++)
                for (int j = 0; j < BLOCK; j++)
                    acc[i][j] += a[i] * c[j];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int i = 0; i < BLOCK; i++) {
        int t = t0 + lt + i * TILE;
        if (t >= tokens) break;
        for (int j = 0; j < BLOCK; j++) {
            int n = n0 + ln + j * TILE;
            if (n >= out_features) continue;
            __global float *out = y + y_off + b * y_batch_step + (long)t * y_stride + n;
            *out = beta == 0.0f ? acc[i][j] : beta * *out + acc[i][j];
        }
    }
}

/* The same contract as moira_linear (weights not transposed) with the grouped FFN's layout: a
 * work-group takes ROWS_TILE tokens (group dimension 1) and ROWS_COLUMNS output columns, one per
 * work-item; the tokens' activations are staged in local memory ROWS_CHUNK elements at a time
 * and each work-item streams its own weight row with 4-wide loads. */
#define ROWS_TILE 8
#define ROWS_COLUMNS 128
#define ROWS_CHUNK 256

__kernel __attribute__((reqd_work_group_size(ROWS_COLUMNS, 1, 1))) void
moira_linear_rows(__global const float *x, long x_off, long x_stride, long x_batch_step,
                  WEIGHT_PARAMS(w), long matrix, long w_row0, long w_batch_rows, __global float *y,
                  long y_off, long y_stride, long y_batch_step, int tokens, int out_features,
                  int in_features, float beta) {
    __local float rows[ROWS_TILE][ROWS_CHUNK];
    int lid = get_local_id(0);
    int n = get_group_id(0) * ROWS_COLUMNS + lid;
    int t0 = get_group_id(1) * ROWS_TILE;
    long b = get_global_id(2);
    int n_rows = min(ROWS_TILE, tokens - t0);
    __global const float *xb = x + x_off + b * x_batch_step + (long)t0 * x_stride;
    long row = w_row0 + b * w_batch_rows + n;
    float4 acc[ROWS_TILE];
    float acc_tail[ROWS_TILE];
    for (int r = 0; r < ROWS_TILE; r++) {
        acc[r] = (float4)(0.0f);
        acc_tail[r] = 0.0f;
    }
    for (int k0 = 0; k0 < in_features; k0 += ROWS_CHUNK) {
        int count = min(ROWS_CHUNK, in_features - k0);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int i = lid; i < ROWS_TILE * ROWS_CHUNK; i += ROWS_COLUMNS) {
            int r = i / ROWS_CHUNK, c = i % ROWS_CHUNK;
            rows[r][c] = r < n_rows && c < count ? xb[(long)r * x_stride + k0 + c] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (n < out_features) {
            int c = 0;
            for (; c + 4 <= count; c += 4) {
                float4 a = moira_weight_at4(WEIGHT_PASS(w), matrix, row, k0 + c);
                for (int r = 0; r < ROWS_TILE; r++)
                    acc[r] += vload4(0, &rows[r][c]) * a;
            }
            for (; c < count; c++) {
                float a = moira_weight_at(WEIGHT_PASS(w), matrix, row, k0 + c);
                for (int r = 0; r < ROWS_TILE; r++)
                    acc_tail[r] += rows[r][c] * a;
            }
        }
    }
    if (n >= out_features) return;
    for (int r = 0; r < n_rows; r++) {
        float sum = (acc[r].x + acc[r].y) + (acc[r].z + acc[r].w) + acc_tail[r];
        __global float *out = y + y_off + b * y_batch_step + (long)(t0 + r) * y_stride + n;
        *out = beta == 0.0f ? sum : beta * *out + sum;
    }
}

/* The same contract as moira_linear for a handful of tokens (decode), where a WIDE x WIDE tile
 * would be mostly padding: one work-item per output column and NARROW tokens, streaming the
 * weight once. */
#define NARROW 4

__kernel void moira_linear_narrow(__global const float *x, long x_off, long x_stride,
                                  long x_batch_step, WEIGHT_PARAMS(w), long matrix, long w_row0,
                                  long w_batch_rows, int w_transposed, __global float *y,
                                  long y_off, long y_stride, long y_batch_step, int tokens,
                                  int out_features, int in_features, float beta) {
    int n = get_global_id(0);
    int t0 = get_global_id(1) * NARROW;
    long b = get_global_id(2);
    if (n >= out_features) return;
    int count = min(NARROW, tokens - t0);
    __global const float *xb = x + x_off + b * x_batch_step + (long)t0 * x_stride;
    long row_base = w_row0 + b * w_batch_rows;
    float acc[NARROW];
    for (int r = 0; r < NARROW; r++)
        acc[r] = 0.0f;
    int k = 0;
    if (!w_transposed) {
        /* Each work-item streams its own weight row: 4-wide loads along it. */
        float4 acc4[NARROW];
        for (int r = 0; r < NARROW; r++)
            acc4[r] = (float4)(0.0f);
        for (; k + 4 <= in_features; k += 4) {
            float4 weight = moira_weight_at4(WEIGHT_PASS(w), matrix, row_base + n, k);
            for (int r = 0; r < NARROW; r++)
                if (r < count) acc4[r] += vload4(0, xb + (long)r * x_stride + k) * weight;
        }
        for (int r = 0; r < NARROW; r++)
            acc[r] = (acc4[r].x + acc4[r].y) + (acc4[r].z + acc4[r].w);
    }
    for (; k < in_features; k++) {
        float weight = w_transposed ? moira_weight_at(WEIGHT_PASS(w), matrix, row_base + k, n)
                                    : moira_weight_at(WEIGHT_PASS(w), matrix, row_base + n, k);
        for (int r = 0; r < NARROW; r++)
            if (r < count) acc[r] += xb[(long)r * x_stride + k] * weight;
    }
    for (int r = 0; r < count; r++) {
        __global float *out = y + y_off + b * y_batch_step + (long)(t0 + r) * y_stride + n;
        *out = beta == 0.0f ? acc[r] : beta * *out + acc[r];
    }
}

/* h = silu(x W1^T) * (x W3^T): both projections from one pass over the x tiles. */
__kernel __attribute__((reqd_work_group_size(TILE, TILE, 1))) void
moira_swiglu_up(__global const float *x, long x_off, WEIGHT_PARAMS(w1), WEIGHT_PARAMS(w3),
                __global float *h, int tokens, int inter, int hidden) {
    __local float x_tile[TILE][TILE + 1];
    __local float g_tile[TILE][TILE + 1];
    __local float u_tile[TILE][TILE + 1];
    int ln = get_local_id(0), lt = get_local_id(1);
    int n0 = get_group_id(0) * TILE, t0 = get_group_id(1) * TILE;
    float gate = 0.0f, up = 0.0f;
    for (int k0 = 0; k0 < hidden; k0 += TILE) {
        int k = k0 + ln;
        bool k_ok = k < hidden;
        x_tile[lt][ln] = t0 + lt < tokens && k_ok ? x[x_off + (long)(t0 + lt) * hidden + k] : 0.0f;
        bool n_ok = n0 + lt < inter && k_ok;
        g_tile[lt][ln] = n_ok ? moira_weight_at(WEIGHT_PASS(w1), 0, n0 + lt, k) : 0.0f;
        u_tile[lt][ln] = n_ok ? moira_weight_at(WEIGHT_PASS(w3), 0, n0 + lt, k) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE; kk++) {
            gate += x_tile[lt][kk] * g_tile[ln][kk];
            up += x_tile[lt][kk] * u_tile[ln][kk];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    int t = t0 + lt, n = n0 + ln;
    if (t < tokens && n < inter) h[(long)t * inter + n] = moira_silu(gate) * up;
}

/* gate = silu(gate) * up, elementwise: the middle of SWIGLU when its projections ran as separate
 * narrow linears (few tokens). */
__kernel void moira_silu_mul(__global float *gate, __global const float *up, long count) {
    long i = get_global_id(0);
    if (i < count) gate[i] = moira_silu(gate[i]) * up[i];
}
