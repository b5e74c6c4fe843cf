/* The grouped Cube GEMM and the ops that are one: LINEAR, MLA_ABSORB_Q and MLA_ABSORB_OUT.
 *
 * Weights stay in GM in the layout they were uploaded in (row-major, as checkpoints ship them)
 * and become FRACTAL_NZ on their way into L1 (MTE2's ND2NZ move, as CANN's matmul does for ND
 * weights). Uploads are untyped byte writes in Moira's device interface, so converting at upload
 * would need the device to guess which bytes are a weight; converting per tile costs the same
 * GM traffic and keeps one copy of every weight. */
#include <stdlib.h>

#include "backends/npu/fractal_nz.h"
#include "backends/npu/npu_kernels.h"

#define TILE_M 128
#define TILE_N 128
#define TILE_K 128

/* Borrowed for the launch. */
typedef struct gemm_job {
    const moira_npu_gemm_group_t *groups;
    int n_groups;
    bool accumulate;
    int64_t tile_n;      /* TILE_N, or narrower when there are fewer output blocks than cores */
    int64_t *first_item; /* [n_groups + 1]: items of group g are first_item[g] .. [g+1]-1 */
    int64_t n_items;
} gemm_job_t;

/* Tiles needed to cover `a` in steps of `b`. */
static int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

/* One 128x128 output block: K slices alternate between two L1/L0 buffer sets (ping-pong), the
 * Cube accumulating into one L0C block that FIXPIPE writes out at the end. */
static void gemm_item(moira_npu_core_t *core, const moira_npu_gemm_group_t *g, int64_t m0,
                      int64_t n0, int64_t tile_n, bool accumulate, const moira_npu_region_t l1_a[2],
                      const moira_npu_region_t l1_b[2], const moira_npu_region_t l0a[2],
                      const moira_npu_region_t l0b[2], moira_npu_region_t l0c) {
    int64_t m = g->m - m0 < TILE_M ? g->m - m0 : TILE_M;
    int64_t n = g->n - n0 < tile_n ? g->n - n0 : tile_n;
    int ping = 0;
    int64_t k0 = 0;
    do {
        int64_t k = g->k - k0 < TILE_K ? g->k - k0 : TILE_K;
        moira_npu_load_nd2nz(core, l1_a[ping], MOIRA_DTYPE_BF16, &g->a, m0, k0, m, k);
        if (g->b_is_nk)
            moira_npu_load_nd2nz(core, l1_b[ping], MOIRA_DTYPE_BF16, &g->b, n0, k0, n, k);
        else
            moira_npu_load_nd2nz(core, l1_b[ping], MOIRA_DTYPE_BF16, &g->b, k0, n0, k, n);
        moira_npu_load_l0a(core, l0a[ping], l1_a[ping], m, k);
        moira_npu_load_l0b(core, l0b[ping], l1_b[ping], k, n, g->b_is_nk);
        moira_npu_mmad(core, l0c, l0a[ping], l0b[ping], MOIRA_DTYPE_BF16, m, k, n, k0 > 0);
        ping ^= 1;
        k0 += TILE_K;
    } while (k0 < g->k && moira_npu_ok(core));
    moira_npu_fixpipe(core, g->c + m0 * g->c_stride + n0, MOIRA_DTYPE_F32, g->c_stride, l0c, m, m,
                      n, accumulate);
}

/* The same block in the Cube's int8 mode, both operands INT8 with per-row scales (W8A8): K
 * slices of s8 into an s32 L0C block, dequantised by FIXPIPE with the tokens' and the weight
 * rows' scales. */
static void gemm_item_s8(moira_npu_core_t *core, const moira_npu_gemm_group_t *g, int64_t m0,
                         int64_t n0, int64_t tile_n, bool accumulate,
                         const moira_npu_region_t l1_a[2], const moira_npu_region_t l1_b[2],
                         const moira_npu_region_t l0a[2], const moira_npu_region_t l0b[2],
                         moira_npu_region_t l0c) {
    int64_t m = g->m - m0 < TILE_M ? g->m - m0 : TILE_M;
    int64_t n = g->n - n0 < tile_n ? g->n - n0 : tile_n;
    int ping = 0;
    for (int64_t k0 = 0; k0 < g->k && moira_npu_ok(core); k0 += TILE_K, ping ^= 1) {
        int64_t k = g->k - k0 < TILE_K ? g->k - k0 : TILE_K;
        moira_npu_load_nd2nz_s8(core, l1_a[ping], &g->a, m0, k0, m, k);
        moira_npu_load_nd2nz_s8(core, l1_b[ping], &g->b, n0, k0, n, k);
        moira_npu_load_l0a_s8(core, l0a[ping], l1_a[ping], m, k);
        moira_npu_load_l0b_s8(core, l0b[ping], l1_b[ping], k, n);
        moira_npu_mmad_s8(core, l0c, l0a[ping], l0b[ping], m, k, n, k0 > 0);
    }
    const float *row_scale = (const float *)g->a.format_scales + g->a.row_base + m0;
    const float *col_scale = (const float *)g->b.format_scales + g->b.row_base + n0;
    moira_npu_fixpipe_deq(core, g->c + m0 * g->c_stride + n0, g->c_stride, l0c, m, m, n, row_scale,
                          col_scale, accumulate);
}

/* Each core takes every n_blocks-th output block across all groups, so busy experts spread. */
static void gemm_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const gemm_job_t *job = raw;
    moira_npu_region_t l1_a[2], l1_b[2], l0a[2], l0b[2];
    size_t l1_tile = (size_t)TILE_M * TILE_K * 2, l0_tile = l1_tile;
    for (int i = 0; i < 2; i++) {
        l1_a[i] = moira_npu_alloc(core, MOIRA_NPU_L1, l1_tile);
        l1_b[i] = moira_npu_alloc(core, MOIRA_NPU_L1, l1_tile);
        l0a[i] = moira_npu_alloc(core, MOIRA_NPU_L0A, l0_tile);
        l0b[i] = moira_npu_alloc(core, MOIRA_NPU_L0B, l0_tile);
    }
    moira_npu_region_t l0c = moira_npu_alloc(core, MOIRA_NPU_L0C, (size_t)TILE_M * TILE_N * 4);
    int group = 0;
    for (int64_t item = block; item < job->n_items && moira_npu_ok(core); item += n_blocks) {
        while (item >= job->first_item[group + 1])
            group++;
        const moira_npu_gemm_group_t *g = &job->groups[group];
        int64_t local = item - job->first_item[group];
        int64_t n_tiles = ceil_div(g->n, job->tile_n);
        moira_npu_scalar(core, 8); /* tiling arithmetic */
        bool s8 = g->a.dtype == MOIRA_DTYPE_INT8 && g->b.dtype == MOIRA_DTYPE_INT8;
        (s8 ? gemm_item_s8 : gemm_item)(core, g, local / n_tiles * TILE_M,
                                        local % n_tiles * job->tile_n, job->tile_n, job->accumulate,
                                        l1_a, l1_b, l0a, l0b, l0c);
    }
}

/* Output blocks of all groups with `tile_n`-wide blocks, written to first_item as prefix sums. */
static int64_t count_items(const moira_npu_gemm_group_t *groups, int n_groups, int64_t tile_n,
                           int64_t *first_item) {
    first_item[0] = 0;
    for (int g = 0; g < n_groups; g++) {
        int64_t items = groups[g].m > 0 && groups[g].n > 0
                            ? ceil_div(groups[g].m, TILE_M) * ceil_div(groups[g].n, tile_n)
                            : 0;
        first_item[g + 1] = first_item[g] + items;
    }
    return first_item[n_groups];
}

/* W8A8: a group whose weight is INT8 (as stored, [n, k]) has its f32 activations quantised per
 * token (gathered through the row map) into one GM workspace and runs in the Cube's int8 mode.
 * *out_groups is then a copy of `groups` with those operands (NULL when no group has one); the
 * caller frees it and the workspace. */
static moira_status_t int8_operands(moira_npu_machine_t *machine,
                                    const moira_npu_gemm_group_t *groups, int n_groups,
                                    moira_npu_launch_report_t *report,
                                    moira_npu_gemm_group_t **out_groups, void **out_workspace) {
    size_t bytes = 0;
    for (int g = 0; g < n_groups; g++)
        if (groups[g].b.dtype == MOIRA_DTYPE_INT8 && groups[g].a.dtype == MOIRA_DTYPE_F32 &&
            groups[g].b_is_nk)
            bytes += moira_npu_int8_rows_bytes(groups[g].a.rows, groups[g].a.cols);
    if (!bytes) return MOIRA_OK_STATUS;
    moira_npu_gemm_group_t *copy = malloc((size_t)n_groups * sizeof(*copy));
    if (!copy) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "int8 gemm groups");
    *out_groups = copy;
    MOIRA_RETURN_IF_ERROR(moira_npu_workspace(machine, bytes, out_workspace));
    unsigned char *at = *out_workspace;
    for (int g = 0; g < n_groups; g++) {
        copy[g] = groups[g];
        if (groups[g].b.dtype != MOIRA_DTYPE_INT8 || groups[g].a.dtype != MOIRA_DTYPE_F32 ||
            !groups[g].b_is_nk)
            continue;
        MOIRA_RETURN_IF_ERROR(moira_npu_int8_rows(machine, &groups[g].a, at, report, &copy[g].a));
        at += moira_npu_int8_rows_bytes(groups[g].a.rows, groups[g].a.cols);
    }
    return MOIRA_OK_STATUS;
}

/* Few output blocks (a decode step's handful of tokens) would leave cores idle: narrower blocks,
 * down to one fractal wide, spread the weight's rows over more cores. */
moira_status_t moira_npu_gemm(moira_npu_machine_t *machine, const char *kernel,
                              const moira_npu_gemm_group_t *groups, int n_groups, bool accumulate,
                              moira_npu_launch_report_t *report) {
    int64_t *first_item = malloc((size_t)(n_groups + 1) * sizeof(*first_item));
    if (!first_item) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "%s tiling", kernel);
    int64_t tile_n = TILE_N;
    while (tile_n > MOIRA_NPU_FRACTAL &&
           count_items(groups, n_groups, tile_n, first_item) < machine->spec.ai_cores)
        tile_n /= 2;
    moira_npu_gemm_group_t *s8 = NULL;
    void *workspace = NULL;
    moira_status_t status = int8_operands(machine, groups, n_groups, report, &s8, &workspace);
    gemm_job_t job = {s8 ? s8 : groups, n_groups,
                      accumulate,       tile_n,
                      first_item,       count_items(groups, n_groups, tile_n, first_item)};
    if (!status && job.n_items > 0)
        status = moira_npu_launch(machine, kernel, moira_npu_blocks_for(machine, job.n_items),
                                  gemm_block, &job, report);
    if (workspace) moira_npu_workspace_free(machine, workspace);
    free(s8);
    free(first_item);
    return status;
}

/* y = beta * y + x W^T: the beta part first (nothing for 0 or 1), then the GEMM writing or
 * atomically adding its result. */
moira_status_t moira_npu_linear(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                                moira_npu_launch_report_t *report) {
    const moira_linear_params_t *params = launch->params;
    const moira_dtensor_t *x = &launch->operands[0], *w = &launch->operands[1];
    const moira_dtensor_t *y = &launch->operands[2];
    float *y_data = moira_npu_gm(y);
    int64_t tokens = x->shape[0], y_stride = moira_dtensor_row_stride(y);
    moira_npu_gemm_group_t group = {
        .a = moira_npu_gm_f32(moira_npu_gm(x), tokens, x->shape[1], moira_dtensor_row_stride(x)),
        .b = moira_npu_gm_matrix(w, 0),
        .b_is_nk = true,
        .c = y_data,
        .c_stride = y_stride,
        .m = tokens,
        .n = w->shape[0],
        .k = w->shape[1],
    };
    bool accumulate = params->beta != 0;
    if (accumulate)
        MOIRA_RETURN_IF_ERROR(
            moira_npu_scale_rows(machine, y_data, tokens, group.n, y_stride, params->beta, report));
    return moira_npu_gemm(machine, "linear", &group, 1, accumulate, report);
}

/* q_lat[t, h] = W_UK[h]^T q_nope[t, h]: per head a [T, nope] x [nope, L] GEMM whose right operand
 * is kv_b_proj's rows as they are ([k, n], transposed on the way into L0B). */
moira_status_t moira_npu_mla_absorb_q(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                                      moira_npu_launch_report_t *report) {
    const moira_mla_params_t *p = launch->params;
    const moira_dtensor_t *q = &launch->operands[0], *w = &launch->operands[1];
    const moira_dtensor_t *q_lat = &launch->operands[2];
    int64_t tokens = q->shape[0], heads = p->n_heads, latent = p->kv_lora_rank;
    int64_t q_width = heads * (p->nope_dim + p->rope_dim);
    moira_npu_gemm_group_t *groups = calloc((size_t)heads, sizeof(*groups));
    if (!groups) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "absorb_q groups");
    for (int64_t h = 0; h < heads; h++) {
        moira_npu_gm_matrix_t b = moira_npu_gm_matrix(w, 0);
        int64_t row0 = h * (p->nope_dim + p->v_dim);
        b.row_base = row0;
        b.rows = p->nope_dim;
        groups[h] = (moira_npu_gemm_group_t){
            .a = moira_npu_gm_f32((const float *)moira_npu_gm(q) + h * (p->nope_dim + p->rope_dim),
                                  tokens, p->nope_dim, q_width),
            .b = b,
            .b_is_nk = false,
            .c = (float *)moira_npu_gm(q_lat) + h * latent,
            .c_stride = heads * latent,
            .m = tokens,
            .n = latent,
            .k = p->nope_dim,
        };
    }
    moira_status_t status =
        moira_npu_gemm(machine, "mla_absorb_q", groups, (int)heads, false, report);
    free(groups);
    return status;
}

/* out[t, h] = W_UV[h] o_lat[t, h]: per head a [T, L] x [L, v] GEMM over kv_b_proj's V rows of
 * that head ([n, k], as nn.Linear stores them). */
moira_status_t moira_npu_mla_absorb_out(moira_npu_machine_t *machine,
                                        const moira_op_launch_t *launch,
                                        moira_npu_launch_report_t *report) {
    const moira_mla_params_t *p = launch->params;
    const moira_dtensor_t *o_lat = &launch->operands[0], *w = &launch->operands[1];
    const moira_dtensor_t *out = &launch->operands[2];
    int64_t tokens = o_lat->shape[0], heads = p->n_heads, latent = p->kv_lora_rank;
    moira_npu_gemm_group_t *groups = calloc((size_t)heads, sizeof(*groups));
    if (!groups) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "absorb_out groups");
    for (int64_t h = 0; h < heads; h++) {
        moira_npu_gm_matrix_t b = moira_npu_gm_matrix(w, 0);
        b.row_base = h * (p->nope_dim + p->v_dim) + p->nope_dim;
        b.rows = p->v_dim;
        groups[h] = (moira_npu_gemm_group_t){
            .a = moira_npu_gm_f32((const float *)moira_npu_gm(o_lat) + h * latent, tokens, latent,
                                  heads * latent),
            .b = b,
            .b_is_nk = true,
            .c = (float *)moira_npu_gm(out) + h * p->v_dim,
            .c_stride = heads * p->v_dim,
            .m = tokens,
            .n = p->v_dim,
            .k = latent,
        };
    }
    moira_status_t status =
        moira_npu_gemm(machine, "mla_absorb_out", groups, (int)heads, false, report);
    free(groups);
    return status;
}
