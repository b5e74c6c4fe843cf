/* The CLBlast per-expert GEMM loop (clblast_peer.h). */
#include "bench/clblast_peer.h"

#undef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <clblast_c.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>

struct moira_clblast_peer {
    cl_context context;
    cl_command_queue queue;
    /* The prepared MoE problem (moira_clblast_peer_moe_prepare). */
    int32_t *rows; /* owned */
    int n_experts;
    int64_t hidden, inter;
    cl_mem mems[7]; /* x, W1, W3, W2, gate, up, y; owned */
};

/* CL and CLBlast codes both land here; the number is what their docs list. */
static moira_status_t peer_error(const char *what, int code) {
    return moira_status_make(MOIRA_CODE_DEVICE, "CLBlast peer: %s failed (%d)", what, code);
}

/* Walks platforms in ICD order, counting devices, as the opencl backend names them. */
moira_status_t moira_clblast_peer_open(int device_index, moira_clblast_peer_t **out_peer) {
    cl_platform_id platforms[16];
    cl_uint n_platforms = 0;
    if (clGetPlatformIDs(16, platforms, &n_platforms) != CL_SUCCESS || n_platforms == 0)
        return moira_status_make(MOIRA_CODE_NOT_FOUND, "CLBlast peer: no OpenCL platform");
    if (n_platforms > 16) n_platforms = 16;
    int seen = 0;
    for (cl_uint p = 0; p < n_platforms; p++) {
        cl_device_id ids[64];
        cl_uint n = 0;
        if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, 64, ids, &n) != CL_SUCCESS) continue;
        if (n > 64) n = 64;
        if (device_index >= seen + (int)n) {
            seen += (int)n;
            continue;
        }
        cl_device_id device = ids[device_index - seen];
        moira_clblast_peer_t *peer = calloc(1, sizeof(*peer));
        if (!peer) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "CLBlast peer");
        cl_int code = CL_SUCCESS;
        peer->context = clCreateContext(NULL, 1, &device, NULL, NULL, &code);
        if (code == CL_SUCCESS) peer->queue = clCreateCommandQueue(peer->context, device, 0, &code);
        if (code != CL_SUCCESS) {
            if (peer->context) clReleaseContext(peer->context);
            free(peer);
            return peer_error("creating a context and queue", code);
        }
        *out_peer = peer;
        return MOIRA_OK_STATUS;
    }
    return moira_status_make(MOIRA_CODE_NOT_FOUND, "CLBlast peer: no OpenCL device %d",
                             device_index);
}

/* Frees the prepared problem, the queue and the context. */
void moira_clblast_peer_close(moira_clblast_peer_t *peer) {
    if (!peer) return;
    for (int i = 0; i < 7; i++)
        if (peer->mems[i]) clReleaseMemObject(peer->mems[i]);
    free(peer->rows);
    clReleaseCommandQueue(peer->queue);
    clReleaseContext(peer->context);
    free(peer);
}

/* A device buffer of `floats` f32 values, all `value`. */
static cl_mem filled_buffer(moira_clblast_peer_t *peer, size_t floats, float value, cl_int *code) {
    cl_mem mem =
        clCreateBuffer(peer->context, CL_MEM_READ_WRITE, floats * sizeof(float), NULL, code);
    if (*code == CL_SUCCESS)
        *code = clEnqueueFillBuffer(peer->queue, mem, &value, sizeof(value), 0,
                                    floats * sizeof(float), 0, NULL, NULL);
    return mem;
}

/* A monotonic clock for the timings. */
static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + now.tv_nsec * 1e-9;
}

/* One pass of the loop; the first CLBlast error stops it. */
static int run_loop(moira_clblast_peer_t *peer, const int32_t *rows, int n_experts, int64_t hidden,
                    int64_t inter, cl_mem x, cl_mem w1, cl_mem w3, cl_mem w2, cl_mem gate,
                    cl_mem up, cl_mem y) {
    size_t row0 = 0;
    size_t D = (size_t)hidden, I = (size_t)inter;
    for (int e = 0; e < n_experts; e++) {
        size_t n = (size_t)rows[e];
        if (!n) continue;
        size_t w_off = (size_t)e * I * D;
        CLBlastStatusCode s = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo,
                                           CLBlastTransposeYes, n, I, D, 1.0f, x, row0 * D, D, w1,
                                           w_off, D, 0.0f, gate, row0 * I, I, &peer->queue, NULL);
        if (s == CLBlastSuccess)
            s = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, n, I,
                             D, 1.0f, x, row0 * D, D, w3, w_off, D, 0.0f, up, row0 * I, I,
                             &peer->queue, NULL);
        if (s == CLBlastSuccess)
            s = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, n, D,
                             I, 1.0f, gate, row0 * I, I, w2, w_off, I, 0.0f, y, row0 * D, D,
                             &peer->queue, NULL);
        if (s != CLBlastSuccess) return (int)s;
        row0 += n;
    }
    return clFinish(peer->queue);
}

/* Fills on the device (no host upload), so preparing costs seconds, not minutes. */
moira_status_t moira_clblast_peer_moe_prepare(moira_clblast_peer_t *peer, const int32_t *rows,
                                              int n_experts, int64_t hidden, int64_t inter) {
    size_t assignments = 0;
    for (int e = 0; e < n_experts; e++)
        assignments += (size_t)rows[e];
    peer->rows = malloc((size_t)n_experts * sizeof(*rows));
    if (!peer->rows) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "CLBlast peer");
    for (int e = 0; e < n_experts; e++)
        peer->rows[e] = rows[e];
    peer->n_experts = n_experts;
    peer->hidden = hidden;
    peer->inter = inter;
    size_t weight_floats = (size_t)n_experts * (size_t)(hidden * inter);
    cl_int code = CL_SUCCESS;
    cl_mem *mems = peer->mems;
    mems[0] = filled_buffer(peer, assignments * (size_t)hidden + 1, 0.5f, &code);
    for (int i = 1; i <= 3 && code == CL_SUCCESS; i++)
        mems[i] = filled_buffer(peer, weight_floats, 0.01f, &code);
    for (int i = 4; i <= 5 && code == CL_SUCCESS; i++)
        mems[i] = filled_buffer(peer, assignments * (size_t)inter + 1, 0.0f, &code);
    if (code == CL_SUCCESS)
        mems[6] = filled_buffer(peer, assignments * (size_t)hidden + 1, 0.0f, &code);
    if (code == CL_SUCCESS) code = clFinish(peer->queue);
    if (code != CL_SUCCESS) return peer_error("allocating buffers", code);
    return MOIRA_OK_STATUS;
}

/* Wall time from the first SGEMM's submission to the queue draining. */
moira_status_t moira_clblast_peer_moe_run(moira_clblast_peer_t *peer, double *out_seconds) {
    cl_mem *m = peer->mems;
    double start = seconds_now();
    int failed = run_loop(peer, peer->rows, peer->n_experts, peer->hidden, peer->inter, m[0], m[1],
                          m[2], m[3], m[4], m[5], m[6]);
    *out_seconds = seconds_now() - start;
    if (failed) return peer_error("CLBlastSgemm", failed);
    return MOIRA_OK_STATUS;
}

/* One pass of the per-head loop; the first CLBlast error stops it. */
static int run_absorb_loop(moira_clblast_peer_t *peer, size_t T, size_t H, size_t nope, size_t rope,
                           size_t v, size_t L, cl_mem q, cl_mem w, cl_mem q_lat, cl_mem o_lat,
                           cl_mem out) {
    for (size_t h = 0; h < H; h++) {
        size_t k_rows = h * (nope + v) * L, v_rows = (h * (nope + v) + nope) * L;
        CLBlastStatusCode s =
            CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeNo, T, L, nope,
                         1.0f, q, h * (nope + rope), H * (nope + rope), w, k_rows, L, 0.0f, q_lat,
                         h * L, H * L, &peer->queue, NULL);
        if (s == CLBlastSuccess)
            s = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, T, v,
                             L, 1.0f, o_lat, h * L, H * L, w, v_rows, L, 0.0f, out, h * v, H * v,
                             &peer->queue, NULL);
        if (s != CLBlastSuccess) return (int)s;
    }
    return clFinish(peer->queue);
}

/* Small buffers: set up per call, one warm-up pass, then the timed ones. */
moira_status_t moira_clblast_peer_mla_absorb(moira_clblast_peer_t *peer, int64_t tokens,
                                             int64_t heads, int64_t nope, int64_t rope,
                                             int64_t v_dim, int64_t latent, int iterations,
                                             double *out_seconds) {
    size_t T = (size_t)tokens, H = (size_t)heads, L = (size_t)latent;
    cl_int code = CL_SUCCESS;
    cl_mem mems[5] = {0};
    mems[0] = filled_buffer(peer, T * H * (size_t)(nope + rope), 0.5f, &code);
    if (code == CL_SUCCESS)
        mems[1] = filled_buffer(peer, H * (size_t)(nope + v_dim) * L, 0.01f, &code);
    if (code == CL_SUCCESS) mems[2] = filled_buffer(peer, T * H * L, 0.0f, &code);
    if (code == CL_SUCCESS) mems[3] = filled_buffer(peer, T * H * L, 0.25f, &code);
    if (code == CL_SUCCESS) mems[4] = filled_buffer(peer, T * H * (size_t)v_dim, 0.0f, &code);
    moira_status_t status = MOIRA_OK_STATUS;
    if (code != CL_SUCCESS) status = peer_error("allocating buffers", code);
    double best = INFINITY;
    for (int it = 0; it <= iterations && !status; it++) {
        double start = seconds_now();
        int failed = run_absorb_loop(peer, T, H, (size_t)nope, (size_t)rope, (size_t)v_dim, L,
                                     mems[0], mems[1], mems[2], mems[3], mems[4]);
        if (failed) status = peer_error("CLBlastSgemm", failed);
        double elapsed = seconds_now() - start;
        if (it > 0 && elapsed < best) best = elapsed;
    }
    for (int i = 0; i < 5; i++)
        if (mems[i]) clReleaseMemObject(mems[i]);
    *out_seconds = best;
    return status;
}
