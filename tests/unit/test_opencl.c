/* What the OpenCL backend promises beyond the shared conformance suite: a missing OpenCL runtime
 * makes the backend absent rather than failing the program; rope stays exact at positions in the
 * millions without fp64; f16/bf16/fp8 weights with strided activations and accumulation agree
 * with the cpu backend; and a second run loads the cached program instead of compiling. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/op.h"
#include "runtime/backend.h"
#include "tests/unit/testing.h"

/* OCL_ICD_VENDORS pointing at an empty place leaves the ICD loader without drivers. */
static void check_missing_runtime(void) {
    char output[16384];
    char command[PATH_MAX + 64];
    snprintf(command, sizeof(command), "OCL_ICD_VENDORS=/nonexistent-moira-icd '%s' devices 2>&1",
             MOIRA_BINARY);
    int rc = moira_test_run_capture(command, output, sizeof(output));
    CHECK_MSG(rc == 0, "moira devices without an OpenCL runtime exited %d:\n%s", rc, output);
    CHECK_MSG(strstr(output, "opencl: unavailable") != NULL, "no unavailable reason:\n%s", output);
    CHECK_MSG(strstr(output, "cpu:0") != NULL, "cpu device missing:\n%s", output);
}

/* Runs one launch on `device` with host inputs and returns the output operand's floats. Operand
 * i's bytes come from host[i] (sizes[i] bytes; a NULL host leaves it uninitialised), all in one
 * buffer each; the output operand is read back into `out`. */
static void run_on(moira_device_t *device, moira_op_launch_t launch, const void *const *host,
                   const size_t *sizes, int output, float *out, size_t out_bytes) {
    moira_queue_t *queue = NULL;
    moira_buffer_t *buffers[MOIRA_OP_MAX_OPERANDS] = {0};
    CHECK_OK(moira_queue_create(device, &queue));
    if (!queue) return;
    for (int i = 0; i < launch.n_operands; i++) {
        CHECK_OK(moira_buffer_alloc(device, sizes[i], -1, &buffers[i]));
        if (!buffers[i]) return;
        if (host[i]) CHECK_OK(moira_queue_write(queue, buffers[i], 0, host[i], sizes[i]));
        launch.operands[i].buffer = buffers[i];
    }
    CHECK_OK(moira_queue_launch(queue, &launch));
    CHECK_OK(moira_queue_read(queue, buffers[output], 0, out, out_bytes));
    CHECK_OK(moira_queue_finish(queue));
    for (int i = 0; i < launch.n_operands; i++)
        moira_buffer_free(buffers[i]);
    moira_queue_destroy(queue);
}

/* Positions up to 2^21 with a rope slice inside strided rows, against the cpu's double math. */
static void check_rope_far_positions(moira_device_t *cpu, moira_device_t *device) {
    enum { T = 6, C = 40, STRIDE = 48 };
    static float x[T * STRIDE], want[T * STRIDE], got[T * STRIDE];
    int32_t positions[T] = {0, 1, 4095, 163839, 1000003, 2097151};
    moira_test_fill_uniform(x, T * STRIDE, 11, -1, 1);
    moira_rope_params_t params = {
        .n_heads = 3, .head_stride = 12, .rope_offset = 4, .rope_dim = 8, .cos_sin_scale = 1.25f};
    for (int i = 0; i < 4; i++)
        params.inv_freq[i] = pow(10000.0, -2.0 * i / 8) * 0.8;
    moira_op_launch_t launch = {
        .op = MOIRA_OP_ROPE, .params = &params, .params_size = sizeof(params), .n_operands = 3};
    launch.operands[0] = (moira_dtensor_t){
        .dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {T, C}, .row_stride = STRIDE};
    launch.operands[1] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_I32, .rank = 1, .shape = {T}};
    launch.operands[2] = launch.operands[0];
    const void *host[3] = {x, positions, x};
    size_t sizes[3] = {sizeof(x), sizeof(positions), sizeof(x)};
    /* Operand 2 is its own buffer here (not in place): exercises the copy of unrotated columns. */
    run_on(cpu, launch, host, sizes, 2, want, sizeof(want));
    run_on(device, launch, host, sizes, 2, got, sizeof(got));
    double nmse = 0, norm = 0;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            double d = (double)got[t * STRIDE + c] - want[t * STRIDE + c];
            nmse += d * d;
            norm += (double)want[t * STRIDE + c] * want[t * STRIDE + c];
        }
    nmse /= norm;
    /* A plain f32 angle at position 2^21 is off by ~0.1 rad (NMSE ~1e-3). */
    CHECK_MSG(nmse < 1e-11, "%s rope at far positions: NMSE %.3g", moira_device_info(device)->name,
              nmse);
    printf("%s rope, positions to 2^21: NMSE %.3g\n", moira_device_info(device)->name, nmse);
}

/* y = beta * y + x W^T with narrow weights, x and y column slices of wider rows. */
static void check_linear_dtype(moira_device_t *cpu, moira_device_t *device, moira_dtype_t dtype) {
    enum { T = 37, N = 150, K = 300, X_STRIDE = 310, Y_STRIDE = 160 };
    static float x[T * X_STRIDE], w[N * K], y0[T * Y_STRIDE], want[T * Y_STRIDE], got[T * Y_STRIDE];
    static unsigned char weight_bytes[N * K * 4 + 4096];
    moira_test_fill_uniform(x, T * X_STRIDE, 21, -1, 1);
    moira_test_fill_uniform(w, N * K, 22, -0.5f, 0.5f);
    moira_test_fill_uniform(y0, T * Y_STRIDE, 23, -1, 1);
    size_t data_bytes = (size_t)N * K * moira_dtype_size(dtype);
    moira_convert_from_f32(dtype, w, weight_bytes, (size_t)N * K);
    size_t scale_offset = (data_bytes + 15) / 16 * 16;
    size_t weight_size = data_bytes;
    if (dtype == MOIRA_DTYPE_F8_E4M3) {
        float scales[2 * 3] = {0.5f, 1.5f, 2.0f, 0.25f, 1.0f, 3.0f};
        memcpy(weight_bytes + scale_offset, scales, sizeof(scales));
        weight_size = scale_offset + sizeof(scales);
    }
    moira_linear_params_t params = {.beta = 1.0f};
    moira_op_launch_t launch = {
        .op = MOIRA_OP_LINEAR, .params = &params, .params_size = sizeof(params), .n_operands = 3};
    launch.operands[0] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32,
                                           .rank = 2,
                                           .shape = {T, K},
                                           .row_stride = X_STRIDE,
                                           .offset = 8 * sizeof(float)};
    launch.operands[1] =
        (moira_dtensor_t){.dtype = dtype, .rank = 2, .shape = {N, K}, .scale_offset = scale_offset};
    launch.operands[2] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32,
                                           .rank = 2,
                                           .shape = {T, N},
                                           .row_stride = Y_STRIDE,
                                           .offset = 4 * sizeof(float)};
    const void *host[3] = {x, weight_bytes, y0};
    size_t sizes[3] = {sizeof(x), weight_size, sizeof(y0)};
    run_on(cpu, launch, host, sizes, 2, want, sizeof(want));
    run_on(device, launch, host, sizes, 2, got, sizeof(got));
    double nmse = moira_test_nmse_f32(got, want, T * Y_STRIDE);
    CHECK_MSG(nmse <= 1e-6, "%s linear %s: NMSE %.3g", moira_device_info(device)->name,
              moira_dtype_name(dtype), nmse);
    printf("%s linear with %s weights: NMSE %.3g\n", moira_device_info(device)->name,
           moira_dtype_name(dtype), nmse);
}

/* Sizes that are not multiples of the kernels' 4-wide loads, so their scalar tails run too: a
 * narrow (few-token) linear with K = 301, and the grouped FFN with D = 37, I = 21. */
static void check_odd_tails(moira_device_t *cpu, moira_device_t *device, moira_dtype_t dtype) {
    enum { T = 3, N = 45, K = 301 };
    static float x[T * K], w[N * K], want[T * N], got[T * N];
    static unsigned char weight_bytes[N * K * 4 + 4096];
    moira_test_fill_uniform(x, T * K, 41, -1, 1);
    moira_test_fill_uniform(w, N * K, 42, -0.5f, 0.5f);
    moira_convert_from_f32(dtype, w, weight_bytes, (size_t)N * K);
    size_t data_bytes = (size_t)N * K * moira_dtype_size(dtype);
    size_t scale_offset = (data_bytes + 15) / 16 * 16;
    float scales[3] = {0.5f, 2.0f, 1.25f}; /* [1, 3] blocks */
    memcpy(weight_bytes + scale_offset, scales, sizeof(scales));
    moira_linear_params_t params = {.beta = 0};
    moira_op_launch_t launch = {
        .op = MOIRA_OP_LINEAR, .params = &params, .params_size = sizeof(params), .n_operands = 3};
    launch.operands[0] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {T, K}};
    launch.operands[1] =
        (moira_dtensor_t){.dtype = dtype, .rank = 2, .shape = {N, K}, .scale_offset = scale_offset};
    launch.operands[2] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {T, N}};
    const void *host[3] = {x, weight_bytes, NULL};
    size_t sizes[3] = {sizeof(x), scale_offset + sizeof(scales), sizeof(want)};
    run_on(cpu, launch, host, sizes, 2, want, sizeof(want));
    run_on(device, launch, host, sizes, 2, got, sizeof(got));
    double nmse = moira_test_nmse_f32(got, want, T * N);
    CHECK_MSG(nmse <= 1e-6, "%s narrow linear K=301 %s: NMSE %.3g", moira_device_info(device)->name,
              moira_dtype_name(dtype), nmse);

    /* Grouped FFN: 3 experts, 11 tokens, top-2, routing sorted on the host. */
    enum { E = 3, TT = 11, KK = 2, D = 37, I = 21, A = TT * KK };
    static float fx[TT * D], fw[E * I * D], ys_want[A * D], ys_got[A * D];
    static unsigned char w1[E * I * D * 4 + 4096], w3[E * I * D * 4 + 4096],
        w2[E * D * I * 4 + 4096];
    int32_t offsets[E + 1] = {0}, sorted_rows[A];
    moira_test_fill_uniform(fx, TT * D, 43, -1, 1);
    unsigned char *weights[3] = {w1, w3, w2};
    size_t weight_data = (size_t)E * I * D * moira_dtype_size(dtype);
    size_t weight_scales_at = (weight_data + 15) / 16 * 16;
    float expert_scales[E] = {1.0f, 0.75f, 1.5f}; /* one 128x128 block per expert matrix */
    for (int m = 0; m < 3; m++) {
        moira_test_fill_uniform(fw, E * I * D, 44 + (uint64_t)m, -0.5f, 0.5f);
        moira_convert_from_f32(dtype, fw, weights[m], (size_t)E * I * D);
        memcpy(weights[m] + weight_scales_at, expert_scales, sizeof(expert_scales));
    }
    int32_t expert_of[A];
    for (int a = 0; a < A; a++)
        expert_of[a] = (a * 7 + a / KK) % E;
    for (int a = 0; a < A; a++)
        offsets[expert_of[a] + 1]++;
    for (int e = 0; e < E; e++)
        offsets[e + 1] += offsets[e];
    int32_t next[E];
    for (int e = 0; e < E; e++)
        next[e] = offsets[e];
    for (int a = 0; a < A; a++)
        sorted_rows[next[expert_of[a]]++] = a;
    moira_moe_ffn_params_t ffn_params = {.top_k = KK};
    moira_op_launch_t ffn = {.op = MOIRA_OP_MOE_FFN,
                             .params = &ffn_params,
                             .params_size = sizeof(ffn_params),
                             .n_operands = 7};
    ffn.operands[0] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {TT, D}};
    ffn.operands[1] = (moira_dtensor_t){
        .dtype = dtype, .rank = 3, .shape = {E, I, D}, .scale_offset = weight_scales_at};
    ffn.operands[2] = ffn.operands[1];
    ffn.operands[3] = (moira_dtensor_t){
        .dtype = dtype, .rank = 3, .shape = {E, D, I}, .scale_offset = weight_scales_at};
    ffn.operands[4] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_I32, .rank = 1, .shape = {E + 1}};
    ffn.operands[5] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_I32, .rank = 1, .shape = {A}};
    ffn.operands[6] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {A, D}};
    const void *ffn_host[7] = {fx, w1, w3, w2, offsets, sorted_rows, NULL};
    size_t weight_bytes_total = weight_scales_at + sizeof(expert_scales);
    size_t ffn_sizes[7] = {sizeof(fx),         weight_bytes_total, weight_bytes_total,
                           weight_bytes_total, sizeof(offsets),    sizeof(sorted_rows),
                           sizeof(ys_want)};
    run_on(cpu, ffn, ffn_host, ffn_sizes, 6, ys_want, sizeof(ys_want));
    run_on(device, ffn, ffn_host, ffn_sizes, 6, ys_got, sizeof(ys_got));
    nmse = moira_test_nmse_f32(ys_got, ys_want, A * D);
    CHECK_MSG(nmse <= 1e-6, "%s moe_ffn D=37 I=21 %s: NMSE %.3g", moira_device_info(device)->name,
              moira_dtype_name(dtype), nmse);
    printf("%s odd tails (%s): narrow linear and grouped FFN NMSE %.3g\n",
           moira_device_info(device)->name, moira_dtype_name(dtype), nmse);
}

/* Attention over more keys than one work-group block (64), so the online softmax rescales:
 * prefill over 150 tokens, and decode over a 150-row latent cache. */
static void check_long_attention(moira_device_t *cpu, moira_device_t *device) {
    enum { T = 150, H = 2, NOPE = 16, ROPE = 8, V = 12, L = 40 };
    enum { Q = H * (NOPE + ROPE), B = H * (NOPE + V) };
    static float q[T * Q], kv[T * B], k_pe[T * ROPE], out_want[T * H * L], out_got[T * H * L];
    static float q_lat[T * H * L], c[T * L];
    int32_t positions[T];
    for (int t = 0; t < T; t++)
        positions[t] = t;
    moira_test_fill_uniform(q, T * Q, 51, -1, 1);
    moira_test_fill_uniform(kv, T * B, 52, -1, 1);
    moira_test_fill_uniform(k_pe, T * ROPE, 53, -1, 1);
    moira_test_fill_uniform(q_lat, T * H * L, 54, -1, 1);
    moira_test_fill_uniform(c, T * L, 55, -1, 1);
    moira_mla_params_t params = {.n_heads = H,
                                 .nope_dim = NOPE,
                                 .rope_dim = ROPE,
                                 .v_dim = V,
                                 .kv_lora_rank = L,
                                 .cache_len = T,
                                 .scale = 0.3f};
    moira_op_launch_t prefill = {.op = MOIRA_OP_MLA_ATTENTION,
                                 .params = &params,
                                 .params_size = sizeof(params),
                                 .n_operands = 5};
    prefill.operands[0] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {T, Q}};
    prefill.operands[1] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {T, B}};
    prefill.operands[2] =
        (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {T, ROPE}};
    prefill.operands[3] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_I32, .rank = 1, .shape = {T}};
    prefill.operands[4] =
        (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {T, H * V}};
    const void *prefill_host[5] = {q, kv, k_pe, positions, NULL};
    size_t prefill_sizes[5] = {sizeof(q), sizeof(kv), sizeof(k_pe), sizeof(positions),
                               sizeof(float) * T * H * V};
    size_t out_bytes = sizeof(float) * T * H * V;
    run_on(cpu, prefill, prefill_host, prefill_sizes, 4, out_want, out_bytes);
    run_on(device, prefill, prefill_host, prefill_sizes, 4, out_got, out_bytes);
    double nmse = moira_test_nmse_f32(out_got, out_want, (size_t)T * H * V);
    CHECK_MSG(nmse <= 1e-6, "%s mla_attention over %d keys: NMSE %.3g",
              moira_device_info(device)->name, T, nmse);
    printf("%s mla_attention over %d keys: NMSE %.3g\n", moira_device_info(device)->name, T, nmse);

    enum { TD = 3 };
    int32_t decode_positions[TD] = {10, 70, 149};
    moira_op_launch_t decode = {.op = MOIRA_OP_MLA_DECODE_ATTENTION,
                                .params = &params,
                                .params_size = sizeof(params),
                                .n_operands = 6};
    decode.operands[0] =
        (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {TD, H * L}};
    decode.operands[1] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {TD, Q}};
    decode.operands[2] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {T, L}};
    decode.operands[3] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {T, ROPE}};
    decode.operands[4] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_I32, .rank = 1, .shape = {TD}};
    decode.operands[5] =
        (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {TD, H * L}};
    const void *decode_host[6] = {q_lat, q, c, k_pe, decode_positions, NULL};
    size_t decode_sizes[6] = {
        sizeof(float) * TD * H * L, sizeof(float) * TD * Q,    sizeof(c), sizeof(k_pe),
        sizeof(decode_positions),   sizeof(float) * TD * H * L};
    size_t o_bytes = sizeof(float) * TD * H * L;
    run_on(cpu, decode, decode_host, decode_sizes, 5, out_want, o_bytes);
    run_on(device, decode, decode_host, decode_sizes, 5, out_got, o_bytes);
    nmse = moira_test_nmse_f32(out_got, out_want, (size_t)TD * H * L);
    CHECK_MSG(nmse <= 1e-6, "%s mla_decode_attention over %d cache rows: NMSE %.3g",
              moira_device_info(device)->name, T, nmse);
    printf("%s mla_decode_attention over %d cache rows: NMSE %.3g\n",
           moira_device_info(device)->name, T, nmse);
}

/* The CLBlast path (forced, as the measured choice depends on the machine) on a projection big
 * enough to be eligible: overwrite into contiguous y, and accumulate into a strided y. */
static void check_linear_clblast(moira_device_t *cpu, moira_device_t *device) {
    enum { T = 64, N = 512, K = 512, Y_STRIDE = 520 };
    float *x = malloc(sizeof(float) * T * K), *w = malloc(sizeof(float) * N * K);
    float *y0 = malloc(sizeof(float) * T * Y_STRIDE), *want = malloc(sizeof(float) * T * Y_STRIDE);
    float *got = malloc(sizeof(float) * T * Y_STRIDE);
    if (!x || !w || !y0 || !want || !got) return;
    moira_test_fill_uniform(x, (size_t)T * K, 31, -1, 1);
    moira_test_fill_uniform(w, (size_t)N * K, 32, -0.5f, 0.5f);
    moira_test_fill_uniform(y0, (size_t)T * Y_STRIDE, 33, -1, 1);
    setenv("MOIRA_OPENCL_GEMM", "clblast", 1);
    for (int accumulate = 0; accumulate < 2; accumulate++) {
        moira_linear_params_t params = {.beta = accumulate ? 1.0f : 0.0f};
        moira_op_launch_t launch = {.op = MOIRA_OP_LINEAR,
                                    .params = &params,
                                    .params_size = sizeof(params),
                                    .n_operands = 3};
        launch.operands[0] =
            (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {T, K}};
        launch.operands[1] =
            (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {N, K}};
        launch.operands[2] = (moira_dtensor_t){.dtype = MOIRA_DTYPE_F32,
                                               .rank = 2,
                                               .shape = {T, N},
                                               .row_stride = accumulate ? Y_STRIDE : 0};
        const void *host[3] = {x, w, y0};
        size_t sizes[3] = {sizeof(float) * T * K, sizeof(float) * N * K,
                           sizeof(float) * T * Y_STRIDE};
        size_t out_floats = accumulate ? (size_t)T * Y_STRIDE : (size_t)T * N;
        run_on(cpu, launch, host, sizes, 2, want, out_floats * sizeof(float));
        run_on(device, launch, host, sizes, 2, got, out_floats * sizeof(float));
        double nmse = moira_test_nmse_f32(got, want, out_floats);
        CHECK_MSG(nmse <= 1e-6, "%s CLBlast linear (beta %d): NMSE %.3g",
                  moira_device_info(device)->name, accumulate, nmse);
        printf("%s linear through CLBlast, beta %d: NMSE %.3g\n", moira_device_info(device)->name,
               accumulate, nmse);
    }
    unsetenv("MOIRA_OPENCL_GEMM");
    free(x);
    free(w);
    free(y0);
    free(want);
    free(got);
}

/* A fresh cache directory: the first `moira op` compiles (and says so), the second does not;
 * and a build that fails reports its CL error and log. */
static void check_program_cache(const char *device_name) {
    char dir[] = "/tmp/moira-clcache-XXXXXX";
    if (!mkdtemp(dir)) return;
    char command[4 * PATH_MAX], output[16384];
    snprintf(command, sizeof(command),
             "XDG_CACHE_HOME='%s' '%s' op gate --model '%s/golden/gate_v3.json' "
             "--inputs '%s/golden/gate_v3.inputs.safetensors' --backend %s -o '%s/out.safetensors' "
             "2>&1",
             dir, MOIRA_BINARY, MOIRA_TEST_DATA_DIR, MOIRA_TEST_DATA_DIR, device_name, dir);
    int rc = moira_test_run_capture(command, output, sizeof(output));
    CHECK_MSG(rc == 0 && strstr(output, "compiling OpenCL kernels"),
              "first run (rc %d) should compile:\n%s", rc, output);
    rc = moira_test_run_capture(command, output, sizeof(output));
    CHECK_MSG(rc == 0 && !strstr(output, "compiling OpenCL kernels"),
              "second run (rc %d) should load the cached program:\n%s", rc, output);
    /* A failing build names the CL error and shows the driver's build log. */
    snprintf(
        command, sizeof(command),
        "MOIRA_OPENCL_BUILD_OPTIONS=-DMOIRA_BUILD_SELFTEST_ERROR XDG_CACHE_HOME='%s' '%s' op "
        "gate --model '%s/golden/gate_v3.json' --inputs '%s/golden/gate_v3.inputs.safetensors' "
        "--backend %s -o '%s/out.safetensors' 2>&1",
        dir, MOIRA_BINARY, MOIRA_TEST_DATA_DIR, MOIRA_TEST_DATA_DIR, device_name, dir);
    rc = moira_test_run_capture(command, output, sizeof(output));
    CHECK_MSG(rc != 0 && strstr(output, "CL_BUILD_PROGRAM_FAILURE") &&
                  strstr(output, "build log") && strstr(output, "a deliberate build failure"),
              "a failed build (rc %d) should report its log:\n%s", rc, output);
    snprintf(command, sizeof(command), "rm -rf '%s'", dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* The runtime check needs no device; the rest runs on every OpenCL device found. */
int main(void) {
    check_missing_runtime();
    CHECK_OK(moira_runtime_init());
    moira_device_t *cpu = NULL;
    CHECK_OK(moira_device_find("cpu:0", &cpu));
    int opencl_devices = 0;
    for (int i = 0; i < moira_device_count() && cpu; i++) {
        moira_device_t *device = moira_device_at(i);
        if (strcmp(moira_device_info(device)->backend, "opencl") != 0) continue;
        opencl_devices++;
        check_rope_far_positions(cpu, device);
        check_linear_dtype(cpu, device, MOIRA_DTYPE_F32);
        check_linear_dtype(cpu, device, MOIRA_DTYPE_F16);
        check_linear_dtype(cpu, device, MOIRA_DTYPE_BF16);
        check_linear_dtype(cpu, device, MOIRA_DTYPE_F8_E4M3);
        check_linear_clblast(cpu, device);
        check_odd_tails(cpu, device, MOIRA_DTYPE_F32);
        check_long_attention(cpu, device);
        check_odd_tails(cpu, device, MOIRA_DTYPE_BF16);
        check_odd_tails(cpu, device, MOIRA_DTYPE_F8_E4M3);
        if (opencl_devices == 1) check_program_cache(moira_device_info(device)->name);
    }
    moira_runtime_shutdown();
    if (opencl_devices == 0 && moira_test_failures == 0) {
        printf("test_opencl: no OpenCL device, skipped\n");
        return MOIRA_TEST_SKIP;
    }
    return moira_test_finish("test_opencl");
}
