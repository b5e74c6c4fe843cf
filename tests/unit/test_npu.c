/* The npu emulator's own contract: FRACTAL_NZ offsets, local-buffer overflow and misalignment
 * faults, Cube numerics and the cost model's counts, the ACL-shaped host API's error classes,
 * and MOIRA_NPU_DEVICES parsing. The ops themselves are covered by the conformance suite. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/npu/acl.h"
#include "backends/npu/cost_model.h"
#include "backends/npu/davinci.h"
#include "backends/npu/fractal_nz.h"
#include "backends/npu/npu_device.h"
#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/dtype.h"
#include "tests/unit/testing.h"

/* A 20 x 18 matrix pads to 32 x 32: fractal column block 0 holds rows 0..31 of columns 0..15,
 * block 1 columns 16..31. Offsets worked out by hand from ((c / 16) * 32 + r) * 16 + c % 16. */
static void check_fractal_nz(void) {
    enum { ROWS = 20, COLS = 18 };
    uint16_t matrix[ROWS * COLS], back[ROWS * COLS];
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < COLS; c++)
            matrix[r * COLS + c] = (uint16_t)(r * 100 + c + 1);
    CHECK(moira_npu_nz_elements(ROWS, COLS) == 1024);
    CHECK(moira_npu_nz_index(ROWS, 0, 0) == 0);
    CHECK(moira_npu_nz_index(ROWS, 0, 15) == 15);
    CHECK(moira_npu_nz_index(ROWS, 1, 0) == 16);
    CHECK(moira_npu_nz_index(ROWS, 17, 3) == 275);
    CHECK(moira_npu_nz_index(ROWS, 0, 16) == 512);
    CHECK(moira_npu_nz_index(ROWS, 19, 17) == 817);
    uint16_t nz[1024];
    memset(nz, 0xFF, sizeof(nz));
    moira_npu_nz_pack16(matrix, COLS, ROWS, COLS, nz);
    CHECK(nz[0] == 1 && nz[15] == 16 && nz[16] == 101 && nz[275] == 1704);
    CHECK(nz[512] == 17 && nz[817] == 1918);
    CHECK(nz[(0 * 32 + 20) * 16] == 0);    /* row padding */
    CHECK(nz[(1 * 32 + 0) * 16 + 2] == 0); /* column padding */
    moira_npu_nz_unpack16(nz, ROWS, COLS, back, COLS);
    CHECK(memcmp(back, matrix, sizeof(matrix)) == 0);
}

static bool fault_mentions(moira_npu_core_t *core, const char *text) {
    const char *message = moira_status_message(core->fault);
    return core->fault && strstr(message, text) && strstr(message, "507015") &&
           moira_status_code(core->fault) == MOIRA_CODE_DEVICE;
}

/* Faults are loud and sticky, as an AI core exception is. */
static void check_faults(moira_npu_core_t *core) {
    moira_npu_core_begin(core, "test_overflow");
    moira_npu_region_t a = moira_npu_alloc(core, MOIRA_NPU_UB, 100 << 10);
    CHECK(moira_npu_ok(core) && a.bytes == 100 << 10);
    moira_npu_alloc(core, MOIRA_NPU_UB, 100 << 10);
    CHECK_MSG(fault_mentions(core, "UB overflow"), "%s", moira_status_message(core->fault));

    moira_npu_core_begin(core, "test_instruction_overflow");
    moira_npu_region_t tail = {MOIRA_NPU_UB, (192 << 10) - 32, 64};
    moira_npu_vdup(core, tail, 1.0f, 16);
    CHECK_MSG(fault_mentions(core, "overflow"), "%s", moira_status_message(core->fault));

    moira_npu_core_begin(core, "test_region_overflow");
    moira_npu_region_t small = moira_npu_alloc(core, MOIRA_NPU_UB, 64);
    moira_npu_vdup(core, small, 1.0f, 64); /* 256 bytes into a 64-byte operand */
    CHECK_MSG(fault_mentions(core, "overflow"), "%s", moira_status_message(core->fault));

    moira_npu_core_begin(core, "test_ub_misaligned");
    moira_npu_region_t ub = moira_npu_alloc(core, MOIRA_NPU_UB, 1024);
    moira_npu_vdup(core, moira_npu_sub(ub, 4, 512), 0.0f, 8);
    CHECK_MSG(fault_mentions(core, "not 32-byte aligned"), "%s", moira_status_message(core->fault));

    moira_npu_core_begin(core, "test_l0a_misaligned");
    moira_npu_region_t l1 = moira_npu_alloc(core, MOIRA_NPU_L1, 2048);
    moira_npu_region_t l0a = moira_npu_alloc(core, MOIRA_NPU_L0A, 2048);
    CHECK(moira_npu_ok(core) && l0a.bytes == 2048);
    moira_npu_load_l0a(core, moira_npu_sub(l0a, 256, 512), l1, 16, 16);
    CHECK_MSG(fault_mentions(core, "not 512-byte aligned"), "%s",
              moira_status_message(core->fault));

    moira_npu_core_begin(core, "test_wrong_buffer");
    moira_npu_region_t in_ub = moira_npu_alloc(core, MOIRA_NPU_UB, 2048);
    moira_npu_region_t in_l0c = moira_npu_alloc(core, MOIRA_NPU_L0C, 1024);
    moira_npu_mmad(core, in_l0c, in_ub, in_ub, MOIRA_DTYPE_BF16, 16, 16, 16, false);
    CHECK_MSG(fault_mentions(core, "expected L0A"), "%s", moira_status_message(core->fault));
    /* Sticky: nothing runs after a fault. */
    uint64_t repeats = core->cost.vector_repeats;
    moira_npu_vdup(core, in_ub, 0.0f, 64);
    CHECK(core->cost.vector_repeats == repeats);
}

/* M = N = K = 64 through GM -> L1 (ND2NZ) -> L0A/L0B -> Cube -> FIXPIPE: 4 x 4 x 4 = 64 fractal
 * multiply-accumulates, and exact results for bf16-representable inputs. */
static void check_cube_on_core(moira_npu_core_t *core, moira_dtype_t cube_dtype) {
    enum { N = 64 };
    static float a[N * N], b[N * N], c[N * N];
    for (int i = 0; i < N * N; i++) {
        a[i] = (float)((i * 7) % 17 - 8) / 8.0f;
        b[i] = (float)((i * 5) % 13 - 6) / 4.0f;
    }
    moira_npu_core_begin(core, "test_mmad");
    moira_npu_region_t l1_a = moira_npu_alloc(core, MOIRA_NPU_L1, N * N * 2);
    moira_npu_region_t l1_b = moira_npu_alloc(core, MOIRA_NPU_L1, N * N * 2);
    moira_npu_region_t l0a = moira_npu_alloc(core, MOIRA_NPU_L0A, N * N * 2);
    moira_npu_region_t l0b = moira_npu_alloc(core, MOIRA_NPU_L0B, N * N * 2);
    moira_npu_region_t l0c = moira_npu_alloc(core, MOIRA_NPU_L0C, N * N * 4);
    moira_npu_gm_matrix_t ga = {.data = (const unsigned char *)a,
                                .dtype = MOIRA_DTYPE_F32,
                                .rows = N,
                                .cols = N,
                                .row_stride = N,
                                .row_map_div = 1};
    moira_npu_gm_matrix_t gb = ga;
    gb.data = (const unsigned char *)b;
    moira_npu_load_nd2nz(core, l1_a, cube_dtype, &ga, 0, 0, N, N);
    moira_npu_load_nd2nz(core, l1_b, cube_dtype, &gb, 0, 0, N, N); /* b as [n, k]: C = A B^T */
    moira_npu_load_l0a(core, l0a, l1_a, N, N);
    moira_npu_load_l0b(core, l0b, l1_b, N, N, true);
    moira_npu_mmad(core, l0c, l0a, l0b, cube_dtype, N, N, N, false);
    moira_npu_fixpipe(core, c, MOIRA_DTYPE_F32, N, l0c, N, N, N, false);
    CHECK_MSG(moira_npu_ok(core), "%s", moira_status_message(core->fault));
    CHECK(core->cost.cube_fractals == 64);
    CHECK(core->cost.mte2_bytes == 2 * N * N * 4);
    CHECK(core->cost.mte1_bytes == 2 * N * N * 2);
    CHECK(core->cost.mte3_bytes == N * N * 4);
    int wrong = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double want = 0;
            for (int k = 0; k < N; k++)
                want += (double)a[i * N + k] * b[j * N + k];
            wrong += c[i * N + j] != (float)want;
        }
    CHECK_MSG(wrong == 0, "%d of %d Cube results differ from the exact product", wrong, N * N);
}

/* The Cube's int8 mode: M = 40, K = 72, N = 24 (none a multiple of its fractal side, so every
 * tile is padded) through ND2NZ s8 -> L0A/L0B -> Mmad s8 -> FIXPIPE's dequantisation, against
 * the fp64 sum of the products times both scales: the s32 sums are exact, so the only rounding
 * is the final f32 scaling (relative 2^-22 with the two scale factors). 2 x 3 x 2 fractal steps
 * of 16 x 32 x 16. */
static void check_cube_int8(moira_npu_core_t *core) {
    enum { M = 40, K = 72, N = 24 };
    static int8_t a[M * K], b[N * K];
    static float a_scale[M], b_scale[N], c[M * N];
    for (int i = 0; i < M * K; i++)
        a[i] = (int8_t)((i * 37) % 255 - 127);
    for (int i = 0; i < N * K; i++)
        b[i] = (int8_t)((i * 53) % 255 - 127);
    for (int i = 0; i < M; i++)
        a_scale[i] = 0.001f * (float)(i + 1);
    for (int i = 0; i < N; i++)
        b_scale[i] = 0.5f / (float)(i + 3);
    moira_npu_core_begin(core, "test_mmad_s8");
    moira_npu_region_t l1_a = moira_npu_alloc(core, MOIRA_NPU_L1, 48 * 96);
    moira_npu_region_t l1_b = moira_npu_alloc(core, MOIRA_NPU_L1, 32 * 96);
    moira_npu_region_t l0a = moira_npu_alloc(core, MOIRA_NPU_L0A, 48 * 96);
    moira_npu_region_t l0b = moira_npu_alloc(core, MOIRA_NPU_L0B, 32 * 96);
    moira_npu_region_t l0c = moira_npu_alloc(core, MOIRA_NPU_L0C, 48 * 32 * 4);
    moira_npu_gm_matrix_t ga = {.data = (const unsigned char *)a,
                                .dtype = MOIRA_DTYPE_INT8,
                                .rows = M,
                                .cols = K,
                                .row_stride = K,
                                .format_scales = (const unsigned char *)a_scale,
                                .row_map_div = 1};
    moira_npu_gm_matrix_t gb = ga;
    gb.data = (const unsigned char *)b;
    gb.rows = N;
    gb.format_scales = (const unsigned char *)b_scale;
    moira_npu_load_nd2nz_s8(core, l1_a, &ga, 0, 0, M, K);
    moira_npu_load_nd2nz_s8(core, l1_b, &gb, 0, 0, N, K);
    moira_npu_load_l0a_s8(core, l0a, l1_a, M, K);
    moira_npu_load_l0b_s8(core, l0b, l1_b, K, N);
    moira_npu_mmad_s8(core, l0c, l0a, l0b, M, K, N, false);
    moira_npu_fixpipe_deq(core, c, N, l0c, M, M, N, a_scale, b_scale, false);
    CHECK_MSG(moira_npu_ok(core), "%s", moira_status_message(core->fault));
    CHECK(core->cost.cube_fractals == 3 * 3 * 2);
    int wrong = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double want = 0;
            for (int k = 0; k < K; k++)
                want += (double)a[i * K + k] * b[j * K + k];
            want *= (double)a_scale[i] * b_scale[j];
            wrong += fabs(c[i * N + j] - want) > 4e-7 * fabs(want) + 1e-30;
        }
    CHECK_MSG(wrong == 0, "%d of %d int8 Cube results differ from the fp64 product", wrong, M * N);
}

/* The Cube's input rounding: 1 + 2^-10 survives in f16 (10 fraction bits) but is 1 in bf16 (7),
 * so 16 of them sum to 16.015625 or 16; an f32 Cube input is refused. [k, n] operands in L1 go
 * through the transposing L0B move. */
static void check_cube_rounding(moira_npu_core_t *core) {
    enum { N = 16 };
    float a[N * N], ones[N * N], c[N * N];
    for (int i = 0; i < N * N; i++)
        a[i] = 1.0f + 0x1p-10f, ones[i] = 1.0f;
    moira_dtype_t types[2] = {MOIRA_DTYPE_F16, MOIRA_DTYPE_BF16};
    float want[2] = {16.015625f, 16.0f};
    for (int t = 0; t < 2; t++) {
        moira_npu_core_begin(core, "test_cube_rounding");
        moira_npu_region_t l1_a = moira_npu_alloc(core, MOIRA_NPU_L1, 512);
        moira_npu_region_t l1_b = moira_npu_alloc(core, MOIRA_NPU_L1, 512);
        moira_npu_region_t l0a = moira_npu_alloc(core, MOIRA_NPU_L0A, 512);
        moira_npu_region_t l0b = moira_npu_alloc(core, MOIRA_NPU_L0B, 512);
        moira_npu_region_t l0c = moira_npu_alloc(core, MOIRA_NPU_L0C, 1024);
        moira_npu_gm_matrix_t ga = {.data = (const unsigned char *)a,
                                    .dtype = MOIRA_DTYPE_F32,
                                    .rows = N,
                                    .cols = N,
                                    .row_stride = N,
                                    .row_map_div = 1};
        moira_npu_gm_matrix_t gb = ga;
        gb.data = (const unsigned char *)ones;
        moira_npu_load_nd2nz(core, l1_a, types[t], &ga, 0, 0, N, N);
        moira_npu_load_nd2nz(core, l1_b, types[t], &gb, 0, 0, N, N);
        moira_npu_load_l0a(core, l0a, l1_a, N, N);
        moira_npu_load_l0b(core, l0b, l1_b, N, N, false);
        moira_npu_mmad(core, l0c, l0a, l0b, types[t], N, N, N, false);
        moira_npu_fixpipe(core, c, MOIRA_DTYPE_F32, N, l0c, N, N, N, false);
        CHECK_MSG(moira_npu_ok(core), "%s", moira_status_message(core->fault));
        CHECK_MSG(c[0] == want[t] && c[N * N - 1] == want[t], "%s Cube: %.9g",
                  moira_dtype_name(types[t]), c[0]);
        moira_npu_mmad(core, l0c, l0a, l0b, MOIRA_DTYPE_F32, N, N, N, false);
        CHECK(fault_mentions(core, "the Cube takes bf16 or f16"));
    }
}

/* Vector repeats are 256 bytes: 70 f32 lanes take two repeats (the second under a 6-lane mask),
 * 256 f16 lanes two as well. Compare writes a bit mask that Select applies. */
static void check_vector(moira_npu_core_t *core) {
    moira_npu_core_begin(core, "test_vector");
    moira_npu_region_t a = moira_npu_alloc(core, MOIRA_NPU_UB, 1024);
    moira_npu_region_t b = moira_npu_alloc(core, MOIRA_NPU_UB, 1024);
    moira_npu_region_t mask = moira_npu_alloc(core, MOIRA_NPU_UB, 32);
    moira_npu_vindex(core, a, 0.0f, 70);
    moira_npu_vdup(core, b, 2.0f, 70);
    CHECK(core->cost.vector_repeats == 4);
    moira_npu_vbinary(core, MOIRA_NPU_VMUL, MOIRA_DTYPE_F32, b, a, b, 70);
    moira_npu_vcompare_scalar(core, mask, a, MOIRA_NPU_CMP_LE, 64.0f, 70);
    moira_npu_vselect(core, b, mask, b, -1.0f, 70);
    const float *out = moira_npu_scalar_ptr(core, b, 70 * 4);
    const uint8_t *bits = moira_npu_scalar_ptr(core, mask, 32);
    CHECK(out && out[3] == 6.0f && out[64] == 128.0f && out[65] == -1.0f && out[69] == -1.0f);
    CHECK(bits && bits[0] == 0xFF && bits[8] == 0x01);
    CHECK(core->cost.vector_repeats == 10);
    uint16_t *halves = moira_npu_scalar_ptr(core, a, 512);
    for (int i = 0; halves && i < 256; i++)
        halves[i] = moira_f32_to_f16(1.0f + (float)i);
    moira_npu_vbinary(core, MOIRA_NPU_VADD, MOIRA_DTYPE_F16, b, a, a, 256);
    const uint16_t *sums = moira_npu_scalar_ptr(core, b, 512);
    CHECK(sums && moira_f16_to_f32(sums[255]) == 512.0f);
    CHECK(core->cost.vector_repeats == 12);
    moira_npu_vbinary(core, MOIRA_NPU_VADD, MOIRA_DTYPE_BF16, b, a, a, 16);
    CHECK(fault_mentions(core, "f32 or f16"));
}

/* The model's arithmetic: 1800 fractals on one core at 1.8 GHz is 1 us, Cube-bound; traffic
 * beyond what the cores' cycles allow is HBM-bound. */
static void check_cost_model(void) {
    moira_npu_spec_t spec = moira_npu_default_spec();
    moira_npu_cost_t cores[2] = {{.cube_fractals = 1800, .vector_repeats = 1000}, {0}};
    moira_npu_launch_report_t report;
    moira_npu_report_launch(&spec, cores, 2, &report);
    CHECK_NEAR(report.time_us, 1.0, 1e-9);
    CHECK(!strcmp(report.bound, "cube") && report.cores_used == 1);
    CHECK(report.total.cube_fractals == 1800 && report.total.vector_repeats == 1000);
    CHECK_NEAR(moira_npu_peak_cube_tflops(&spec), 353.8944, 1e-6);
}

/* The same 64^3 GEMM as a LINEAR op on npu:0 through queues: the launch reports 64 fractals. */
static void check_linear_on_device(void) {
    moira_device_t *device = NULL;
    CHECK_OK(moira_device_find("npu:0", &device));
    if (!device) return;
    CHECK(moira_device_info(device)->compute_precision == MOIRA_DTYPE_BF16);
    enum { N = 64 };
    static float x[N * N], w[N * N], y[N * N];
    moira_test_fill_uniform(x, N * N, 3, -1, 1);
    moira_test_fill_uniform(w, N * N, 4, -1, 1);
    moira_queue_t *queue = NULL;
    moira_buffer_t *buffer = NULL;
    CHECK_OK(moira_queue_create(device, &queue));
    CHECK_OK(moira_buffer_alloc(device, 3 * sizeof(x), -1, &buffer));
    CHECK(moira_buffer_host_ptr(buffer) == NULL);
    if (!queue || !buffer) return;
    CHECK_OK(moira_queue_write(queue, buffer, 0, x, sizeof(x)));
    CHECK_OK(moira_queue_write(queue, buffer, sizeof(x), w, sizeof(w)));
    moira_linear_params_t params = {.beta = 0};
    moira_op_launch_t launch = {
        .op = MOIRA_OP_LINEAR, .params = &params, .params_size = sizeof(params), .n_operands = 3};
    int64_t offsets[3] = {0, sizeof(x), 2 * sizeof(x)};
    for (int i = 0; i < 3; i++)
        launch.operands[i] = (moira_dtensor_t){.buffer = buffer,
                                               .offset = (size_t)offsets[i],
                                               .dtype = MOIRA_DTYPE_F32,
                                               .rank = 2,
                                               .shape = {N, N}};
    CHECK_OK(moira_queue_launch(queue, &launch));
    CHECK_OK(moira_queue_read(queue, buffer, 2 * sizeof(x), y, sizeof(y)));
    CHECK_OK(moira_queue_finish(queue));
    moira_npu_launch_report_t last;
    moira_npu_queue_reports(queue, NULL, &last);
    CHECK_MSG(last.total.cube_fractals == 64, "%llu fractals",
              (unsigned long long)last.total.cube_fractals);
    CHECK(last.time_us > 0);
    double modelled = 0;
    CHECK(moira_queue_modelled_us(queue, &modelled) && modelled == last.time_us);
    static double want[N * N];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double sum = 0;
            for (int k = 0; k < N; k++)
                sum += (double)x[i * N + k] * w[j * N + k];
            want[i * N + j] = sum;
        }
    double nmse = moira_test_nmse(y, want, N * N);
    CHECK_MSG(nmse < 1e-4 && nmse > 0, "bf16 Cube NMSE %.3g", nmse);
    moira_buffer_free(buffer);
    moira_queue_destroy(queue);
}

/* Absorbed decode over a latent cache longer than one Unified Buffer pass of the softmax holds
 * (20000 rows: three chunks), against an fp64 reference written out here. The queries see 6
 * keys (all in the first chunk), 9001 (the second chunk cut part way, the third masked whole)
 * and all 20000. */
static void check_long_decode(void) {
    moira_device_t *device = NULL;
    CHECK_OK(moira_device_find("npu:0", &device));
    if (!device) return;
    enum { S = 20000, T = 3, H = 2, NOPE = 16, ROPE = 16, L = 32, Q = H * (NOPE + ROPE) };
    static float q_lat[T * H * L], q[T * Q], c[S * L], k_pe[S * ROPE], got[T * H * L];
    static double want[T * H * L], score[S];
    int32_t positions[T] = {5, 9000, S - 1};
    moira_test_fill_uniform(q_lat, T * H * L, 61, -1, 1);
    moira_test_fill_uniform(q, T * Q, 62, -1, 1);
    moira_test_fill_uniform(c, S * L, 63, -1, 1);
    moira_test_fill_uniform(k_pe, S * ROPE, 64, -1, 1);
    const float scale = 0.4f;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            const float *ql = q_lat + (t * H + h) * L, *qpe = q + t * Q + h * (NOPE + ROPE) + NOPE;
            double max_score = -INFINITY, sum = 0;
            for (int s = 0; s <= positions[t]; s++) {
                double dot = 0;
                for (int i = 0; i < L; i++)
                    dot += (double)ql[i] * c[s * L + i];
                for (int i = 0; i < ROPE; i++)
                    dot += (double)qpe[i] * k_pe[s * ROPE + i];
                score[s] = dot * scale;
                if (score[s] > max_score) max_score = score[s];
            }
            for (int s = 0; s <= positions[t]; s++)
                sum += score[s] = exp(score[s] - max_score);
            double *out = want + (t * H + h) * L;
            for (int i = 0; i < L; i++)
                out[i] = 0;
            for (int s = 0; s <= positions[t]; s++)
                for (int i = 0; i < L; i++)
                    out[i] += score[s] / sum * c[s * L + i];
        }
    size_t sizes[6] = {sizeof(q_lat), sizeof(q),         sizeof(c),
                       sizeof(k_pe),  sizeof(positions), sizeof(got)};
    const void *host[5] = {q_lat, q, c, k_pe, positions};
    size_t offsets[6], total = 0;
    for (int i = 0; i < 6; i++) {
        offsets[i] = total;
        total += (sizes[i] + 255) / 256 * 256;
    }
    moira_queue_t *queue = NULL;
    moira_buffer_t *buffer = NULL;
    CHECK_OK(moira_queue_create(device, &queue));
    CHECK_OK(moira_buffer_alloc(device, total, -1, &buffer));
    if (!queue || !buffer) return;
    for (int i = 0; i < 5; i++)
        CHECK_OK(moira_queue_write(queue, buffer, offsets[i], host[i], sizes[i]));
    moira_mla_params_t params = {.n_heads = H,
                                 .nope_dim = NOPE,
                                 .rope_dim = ROPE,
                                 .v_dim = NOPE,
                                 .kv_lora_rank = L,
                                 .cache_len = S,
                                 .scale = scale};
    moira_op_launch_t launch = {.op = MOIRA_OP_MLA_DECODE_ATTENTION,
                                .params = &params,
                                .params_size = sizeof(params),
                                .n_operands = 6};
    const int64_t shapes[6][2] = {{T, H * L}, {T, Q}, {S, L}, {S, ROPE}, {T, 1}, {T, H * L}};
    for (int i = 0; i < 6; i++)
        launch.operands[i] = (moira_dtensor_t){.buffer = buffer,
                                               .offset = offsets[i],
                                               .dtype = i == 4 ? MOIRA_DTYPE_I32 : MOIRA_DTYPE_F32,
                                               .rank = i == 4 ? 1 : 2,
                                               .shape = {shapes[i][0], shapes[i][1]}};
    CHECK_OK(moira_queue_launch(queue, &launch));
    CHECK_OK(moira_queue_read(queue, buffer, offsets[5], got, sizeof(got)));
    CHECK_OK(moira_queue_finish(queue));
    double nmse = moira_test_nmse(got, want, T * H * L);
    CHECK_MSG(nmse <= 2e-3, "npu decode over %d cache rows: NMSE %.3g", S, nmse);
    printf("npu mla_decode_attention over %d cache rows: NMSE %.3g (bf16 limit 2e-3)\n", S, nmse);
    moira_buffer_free(buffer);
    moira_queue_destroy(queue);
}

/* A kernel whose buffers do not fit its core's UB (an RMSNORM row of 20000 floats, four rows of
 * UB) faults on the device; the fault reaches the caller at finish as an AI core exception. */
static void check_fault_through_device(void) {
    moira_device_t *device = NULL;
    CHECK_OK(moira_device_find("npu:0", &device));
    if (!device) return;
    enum { COLS = 20000 };
    moira_queue_t *queue = NULL;
    moira_buffer_t *buffer = NULL;
    CHECK_OK(moira_queue_create(device, &queue));
    CHECK_OK(moira_buffer_alloc(device, 3 * COLS * 4, -1, &buffer));
    if (!queue || !buffer) return;
    moira_rmsnorm_params_t params = {.eps = 1e-6f};
    moira_op_launch_t launch = {
        .op = MOIRA_OP_RMSNORM, .params = &params, .params_size = sizeof(params), .n_operands = 3};
    launch.operands[0] = (moira_dtensor_t){
        .buffer = buffer, .dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {1, COLS}};
    launch.operands[1] = (moira_dtensor_t){
        .buffer = buffer, .offset = COLS * 4, .dtype = MOIRA_DTYPE_F32, .rank = 1, .shape = {COLS}};
    launch.operands[2] = launch.operands[0];
    launch.operands[2].offset = 2 * COLS * 4;
    CHECK_OK(moira_queue_launch(queue, &launch));
    moira_status_t status = moira_queue_finish(queue);
    const char *message = moira_status_message(status);
    CHECK_MSG(moira_status_code(status) == MOIRA_CODE_DEVICE && strstr(message, "507015") &&
                  strstr(message, "UB overflow") && strstr(message, "rmsnorm"),
              "%s", message);
    moira_status_free(status);
    moira_buffer_free(buffer);
    moira_queue_destroy(queue);
}

/* ACL's error classes reach Moira's codes; HBM is bounded; memcpy kinds are checked. */
static void check_acl(void) {
    moira_status_t status = moira_acl_status(MOIRA_ACL_ERROR_INVALID_PARAM, "x");
    CHECK(moira_status_code(status) == MOIRA_CODE_INVALID_ARGUMENT);
    CHECK(strstr(moira_status_message(status), "ACL error 100000 (ACL_ERROR_INVALID_PARAM)"));
    moira_status_free(status);
    moira_npu_spec_t spec = moira_npu_default_spec();
    spec.hbm_bytes = 1 << 20;
    moira_acl_device_t *device = NULL;
    CHECK_OK(moira_acl_set_device(0, &spec, &device));
    if (!device) return;
    void *big = NULL, *small = NULL;
    status = moira_acl_malloc(device, 2 << 20, &big);
    CHECK(moira_status_code(status) == MOIRA_CODE_OUT_OF_MEMORY &&
          strstr(moira_status_message(status), "207001"));
    moira_status_free(status);
    CHECK_OK(moira_acl_malloc(device, 1000, &small));
    CHECK(((uintptr_t)small % 512) == 0 && moira_acl_memory_used(device) == 1024);
    moira_acl_stream_t *stream = NULL;
    CHECK_OK(moira_acl_create_stream(device, &stream));
    if (stream && small) {
        char host[64] = "hello", back[64] = {0};
        CHECK_OK(moira_acl_memcpy_async(stream, small, host, 6, MOIRA_ACL_MEMCPY_HOST_TO_DEVICE));
        CHECK_OK(moira_acl_memcpy_async(stream, back, small, 6, MOIRA_ACL_MEMCPY_DEVICE_TO_HOST));
        moira_event_t *event = NULL;
        CHECK_OK(moira_acl_create_event(&event));
        CHECK_OK(moira_acl_record_event(stream, event));
        CHECK_OK(moira_acl_synchronize_event(event));
        moira_acl_destroy_event(event);
        CHECK_OK(moira_acl_synchronize_stream(stream));
        CHECK(!strcmp(back, "hello"));
        char sync_back[8] = {0};
        CHECK_OK(moira_acl_memcpy(device, sync_back, small, 6, MOIRA_ACL_MEMCPY_DEVICE_TO_HOST));
        CHECK(!strcmp(sync_back, "hello"));
        CHECK_CODE(moira_acl_memcpy(device, small, host, 6, MOIRA_ACL_MEMCPY_DEVICE_TO_DEVICE),
                   MOIRA_CODE_INVALID_ARGUMENT);
        status = moira_acl_memcpy_async(stream, back, host, 6, MOIRA_ACL_MEMCPY_HOST_TO_DEVICE);
        CHECK(moira_status_code(status) == MOIRA_CODE_INVALID_ARGUMENT &&
              strstr(moira_status_message(status), "107009"));
        moira_status_free(status);
        status = moira_acl_memcpy_async(stream, small, host, 2048, MOIRA_ACL_MEMCPY_HOST_TO_DEVICE);
        CHECK(moira_status_code(status) == MOIRA_CODE_INVALID_ARGUMENT);
        moira_status_free(status);
    }
    moira_acl_destroy_stream(stream);
    moira_acl_free(device, small);
    CHECK(moira_acl_memory_used(device) == 0);
    moira_acl_reset_device(device);
}

static void check_env(void) {
    int count = 0;
    moira_npu_spec_t spec;
    setenv("MOIRA_NPU_DEVICES", "2:8:16:800", 1);
    CHECK_OK(moira_acl_configure_from_env(&count, &spec));
    CHECK(count == 2 && spec.ai_cores == 8 && spec.hbm_bytes == 16ull << 30 && spec.hbm_gbs == 800);
    const char *bad[] = {"two", "1.5", "0", "2:300", "2:8:-1", "2:8:16:800:9", "2:"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv("MOIRA_NPU_DEVICES", bad[i], 1);
        CHECK_CODE(moira_acl_configure_from_env(&count, &spec), MOIRA_CODE_INVALID_ARGUMENT);
    }
    unsetenv("MOIRA_NPU_DEVICES");
    CHECK_OK(moira_acl_configure_from_env(&count, &spec));
    CHECK(count == 1 && spec.ai_cores == 24 && spec.ub_bytes == 192 << 10);
}

int main(void) {
    check_fractal_nz();
    check_cost_model();
    check_acl();
    check_env();
    moira_npu_spec_t spec = moira_npu_default_spec();
    moira_npu_core_t core;
    CHECK_OK(moira_npu_core_init(&core, 0, &spec));
    check_faults(&core);
    check_cube_on_core(&core, MOIRA_DTYPE_BF16);
    check_cube_on_core(&core, MOIRA_DTYPE_F16);
    check_cube_rounding(&core);
    check_cube_int8(&core);
    check_vector(&core);
    moira_npu_core_release(&core);
    CHECK_OK(moira_runtime_init());
    check_linear_on_device();
    check_long_decode();
    check_fault_through_device();
    moira_runtime_shutdown();
    return moira_test_finish("test_npu");
}
