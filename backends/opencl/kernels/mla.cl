/* Multi-head latent attention: one attention kernel serves both the naive prefill form
 * (MLA_ATTENTION) and the absorbed decode form (MLA_DECODE_ATTENTION). MLA_ABSORB_Q and
 * MLA_ABSORB_OUT are batched moira_linear launches (one slice per head). */

#define ATTEND_GROUP 64
#define ATTEND_MAX_COLS_PER_ITEM 16 /* value width up to 1024 */
#define ATTEND_MAX_QUERY 2048       /* query floats (both parts) cached in local memory */

/* One work-group per (head, token): keys in blocks of ATTEND_GROUP, one score per work-item,
 * an online softmax (running maximum and normaliser) so any number of keys fits, and each
 * work-item accumulating its own output columns.
 *
 * score[s] = (q1 . k1[s] + q2 . k2[s]) * scale; out = sum_s softmax(score)[s] v[s].
 * Prefill (decode_mode 0): keys 0..n_keys-1, visible when pos[s] <= pos[t].
 * Decode (decode_mode 1): keys 0..min(pos[t] + 1, n_keys) - 1.
 * With no visible key the output is zero. */
__kernel __attribute__((reqd_work_group_size(ATTEND_GROUP, 1, 1))) void
moira_mla_attend(__global const float *q1, long q1_off, long q1_tstride, long q1_hstride, int n1,
                 __global const float *q2, long q2_off, long q2_tstride, long q2_hstride, int n2,
                 __global const float *k1, long k1_off, long k1_sstride, long k1_hstride,
                 __global const float *k2, long k2_off, long k2_sstride, __global const float *v,
                 long v_off, long v_sstride, long v_hstride, int v_width,
                 __global const int *positions, long positions_off, int n_keys, int decode_mode,
                 __global float *out, long out_off, long out_tstride, long out_hstride,
                 float scale) {
    __local float query[ATTEND_MAX_QUERY];
    __local float block_scores[ATTEND_GROUP];
    int lid = get_local_id(0);
    long h = get_group_id(0), t = get_group_id(1);
    __global const float *q1_row = q1 + q1_off + t * q1_tstride + h * q1_hstride;
    __global const float *q2_row = q2 + q2_off + t * q2_tstride + h * q2_hstride;
    for (int i = lid; i < n1; i += ATTEND_GROUP)
        query[i] = q1_row[i];
    for (int i = lid; i < n2; i += ATTEND_GROUP)
        query[n1 + i] = q2_row[i];
    barrier(CLK_LOCAL_MEM_FENCE);

    int my_position = positions[positions_off + t];
    int key_count = n_keys;
    if (decode_mode) key_count = clamp(my_position + 1, 0, n_keys);
    float acc[ATTEND_MAX_COLS_PER_ITEM];
    for (int c = 0; c < ATTEND_MAX_COLS_PER_ITEM; c++)
        acc[c] = 0.0f;
    float running_max = -INFINITY, running_sum = 0.0f;
    __global const float *k1_head = k1 + k1_off + h * k1_hstride;
    __global const float *v_head = v + v_off + h * v_hstride;

    for (int s0 = 0; s0 < key_count; s0 += ATTEND_GROUP) {
        int s = s0 + lid;
        float score = -INFINITY;
        bool visible =
            s < key_count && (decode_mode || positions[positions_off + s] <= my_position);
        if (visible) {
            __global const float *key1 = k1_head + (long)s * k1_sstride;
            __global const float *key2 = k2 + k2_off + (long)s * k2_sstride;
            float dot = 0.0f;
            for (int i = 0; i < n1; i++)
                dot += query[i] * key1[i];
            float dot2 = 0.0f;
            for (int i = 0; i < n2; i++)
                dot2 += query[n1 + i] * key2[i];
            score = (dot + dot2) * scale;
        }
        block_scores[lid] = score;
        barrier(CLK_LOCAL_MEM_FENCE);
        int block = min(ATTEND_GROUP, key_count - s0);
        float block_max = -INFINITY;
        for (int j = 0; j < block; j++)
            block_max = fmax(block_max, block_scores[j]);
        if (block_max > -INFINITY) {
            float new_max = fmax(running_max, block_max);
            float rescale = running_max == -INFINITY ? 0.0f : exp(running_max - new_max);
            running_sum *= rescale;
            for (int c = 0; c < ATTEND_MAX_COLS_PER_ITEM; c++)
                acc[c] *= rescale;
            for (int j = 0; j < block; j++) {
                float score_j = block_scores[j];
                if (score_j == -INFINITY) continue;
                float p = exp(score_j - new_max);
                running_sum += p;
                __global const float *value = v_head + (long)(s0 + j) * v_sstride;
                for (int c = 0; c < ATTEND_MAX_COLS_PER_ITEM; c++) {
                    int col = lid + c * ATTEND_GROUP;
                    if (col < v_width) acc[c] += p * value[col];
                }
            }
            running_max = new_max;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    __global float *out_row = out + out_off + t * out_tstride + h * out_hstride;
    float inv_sum = running_sum > 0.0f ? 1.0f / running_sum : 0.0f;
    for (int c = 0; c < ATTEND_MAX_COLS_PER_ITEM; c++) {
        int col = lid + c * ATTEND_GROUP;
        if (col < v_width) out_row[col] = acc[c] * inv_sum;
    }
}
