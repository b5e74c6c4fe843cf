/* The per-expert OpenBLAS loop (openblas_peer.h). OpenBLAS is loaded with dlopen the first time a
 * bench asks for it, never linked: linked in, it started its thread pool when any `moira` command
 * loaded, and under a low `ulimit -v` that pool's failing mmap loop made even `moira --help` hang
 * at exit. Loaded on demand, only `moira bench moe` on a cpu device pays for it, and a machine
 * without OpenBLAS still builds and runs everything else. */
#include "bench/openblas_peer.h"

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The CBLAS constants the loop uses (their values are fixed by the CBLAS standard), so no OpenBLAS
 * header is needed to build. */
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

typedef void (*sgemm_fn)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                         const float *a, int lda, const float *b, int ldb, float beta, float *c,
                         int ldc);

/* The library and the four symbols the peer calls, resolved once. */
static struct {
    void *handle;
    sgemm_fn sgemm;
    void (*set_num_threads)(int);
    char *(*config)(void);
    char *(*corename)(void);
    char why[256]; /* why it could not be loaded; "" when it was */
} openblas;

static pthread_once_t openblas_once = PTHREAD_ONCE_INIT;

/* Tries the runtime library's soname (Debian: libopenblas0, through its alternatives link), then
 * the development link; keeps dlerror's reason for the bench's peer line. */
static void load_openblas(void) {
    static const char *const names[] = {"libopenblas.so.0", "libopenblas.so"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && !openblas.handle; i++)
        openblas.handle = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!openblas.handle) {
        snprintf(openblas.why, sizeof(openblas.why),
                 "OpenBLAS is not installed (%s): install libopenblas0 (`make deps` does)",
                 dlerror());
        return;
    }
    /* dlsym returns void *; POSIX guarantees it converts to a function pointer. */
    *(void **)&openblas.sgemm = dlsym(openblas.handle, "cblas_sgemm");
    *(void **)&openblas.set_num_threads = dlsym(openblas.handle, "openblas_set_num_threads");
    *(void **)&openblas.config = dlsym(openblas.handle, "openblas_get_config");
    *(void **)&openblas.corename = dlsym(openblas.handle, "openblas_get_corename");
    if (!openblas.sgemm || !openblas.set_num_threads || !openblas.config || !openblas.corename) {
        snprintf(openblas.why, sizeof(openblas.why),
                 "the OpenBLAS library found lacks cblas_sgemm or openblas_* functions");
        openblas.sgemm = NULL;
    }
}

struct moira_openblas_moe {
    moira_openblas_moe_problem_t problem;
    int32_t *order;        /* [T*k]: assignments grouped by expert, rebuilt every run */
    int32_t *counts;       /* [E + 1] */
    int32_t *next;         /* [E] */
    float *xe, *gate, *up; /* [T*k, D], [T*k, I], [T*k, I] */
    float *ye;             /* [T*k, D] */
};

/* The peer times itself with the same monotonic clock as the bench. */
static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Loads OpenBLAS on the first call; false (with the reason kept for describe) when it cannot. */
bool moira_openblas_available(void) {
    pthread_once(&openblas_once, load_openblas);
    return openblas.sgemm != NULL;
}

/* The build configuration and the kernel set OpenBLAS picked for this CPU at run time, or why
 * there is no OpenBLAS. */
void moira_openblas_describe(char *out, size_t size) {
    if (!moira_openblas_available()) {
        snprintf(out, size, "none (%s)", openblas.why);
        return;
    }
    snprintf(out, size, "%s (%s kernels)", openblas.config(), openblas.corename());
}

/* Scratch is sized for the worst case (every assignment to one expert) once, so no run
 * allocates; the thread count matches Moira's so the comparison is core for core. */
moira_status_t moira_openblas_moe_open(const moira_openblas_moe_problem_t *problem, int threads,
                                       moira_openblas_moe_t **out_peer) {
    *out_peer = NULL;
    if (!moira_openblas_available())
        return moira_status_make(MOIRA_CODE_UNSUPPORTED, "OpenBLAS peer: %s", openblas.why);
    moira_openblas_moe_t *peer = calloc(1, sizeof(*peer));
    if (!peer) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "OpenBLAS peer");
    peer->problem = *problem;
    size_t rows = (size_t)(problem->tokens * problem->top_k);
    peer->order = malloc((rows ? rows : 1) * sizeof(int32_t));
    peer->counts = malloc((size_t)(problem->experts + 1) * sizeof(int32_t));
    peer->next = malloc((size_t)(problem->experts + 1) * sizeof(int32_t));
    peer->xe = malloc((rows * (size_t)problem->hidden + 1) * sizeof(float));
    peer->ye = malloc((rows * (size_t)problem->hidden + 1) * sizeof(float));
    peer->gate = malloc((rows * (size_t)problem->inter + 1) * sizeof(float));
    peer->up = malloc((rows * (size_t)problem->inter + 1) * sizeof(float));
    if (!peer->order || !peer->counts || !peer->next || !peer->xe || !peer->ye || !peer->gate ||
        !peer->up) {
        moira_openblas_moe_close(peer);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "OpenBLAS peer");
    }
    openblas.set_num_threads(threads);
    *out_peer = peer;
    return MOIRA_OK_STATUS;
}

/* Groups the assignments by expert (a counting sort, as any implementation must). */
static void group(moira_openblas_moe_t *peer) {
    const moira_openblas_moe_problem_t *p = &peer->problem;
    int64_t n = p->tokens * p->top_k;
    memset(peer->counts, 0, (size_t)(p->experts + 1) * sizeof(int32_t));
    for (int64_t a = 0; a < n; a++)
        if (p->topk_idx[a] >= 0) peer->counts[p->topk_idx[a] + 1]++;
    for (int64_t e = 0; e < p->experts; e++)
        peer->counts[e + 1] += peer->counts[e];
    memcpy(peer->next, peer->counts, (size_t)p->experts * sizeof(int32_t));
    for (int64_t a = 0; a < n; a++)
        if (p->topk_idx[a] >= 0) peer->order[peer->next[p->topk_idx[a]]++] = (int32_t)a;
}

/* What a user would write: group, then per expert gather the rows, gate and up sgemm, silu * up,
 * down sgemm, weighted scatter-add. The grouping is inside the timed span because Moira's
 * dispatch is too. */
moira_status_t moira_openblas_moe_run(moira_openblas_moe_t *peer, double *out_seconds) {
    const moira_openblas_moe_problem_t *p = &peer->problem;
    int64_t D = p->hidden, inter = p->inter;
    double start = seconds();
    group(peer);
    memset(p->y, 0, (size_t)(p->tokens * D) * sizeof(float));
    for (int64_t e = 0; e < p->experts; e++) {
        int32_t first = peer->counts[e], m = peer->counts[e + 1] - first;
        if (m == 0) continue;
        for (int32_t i = 0; i < m; i++)
            memcpy(peer->xe + (int64_t)i * D, p->x + peer->order[first + i] / p->top_k * D,
                   (size_t)D * sizeof(float));
        const float *w1 = p->w1 + e * inter * D, *w3 = p->w3 + e * inter * D;
        const float *w2 = p->w2 + e * D * inter;
        openblas.sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, m, (int)inter, (int)D, 1.0f,
                       peer->xe, (int)D, w1, (int)D, 0.0f, peer->gate, (int)inter);
        openblas.sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, m, (int)inter, (int)D, 1.0f,
                       peer->xe, (int)D, w3, (int)D, 0.0f, peer->up, (int)inter);
        for (int64_t i = 0; i < (int64_t)m * inter; i++)
            peer->gate[i] = peer->gate[i] / (1.0f + expf(-peer->gate[i])) * peer->up[i];
        openblas.sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, m, (int)D, (int)inter, 1.0f,
                       peer->gate, (int)inter, w2, (int)inter, 0.0f, peer->ye, (int)D);
        for (int32_t i = 0; i < m; i++) {
            int32_t a = peer->order[first + i];
            float w = p->topk_weight[a], *y = p->y + a / p->top_k * D;
            const float *ye = peer->ye + (int64_t)i * D;
            for (int64_t d = 0; d < D; d++)
                y[d] += w * ye[d];
        }
    }
    *out_seconds = seconds() - start;
    return MOIRA_OK_STATUS;
}

/* The thread count is set per call: the moe peer of the same process may have set another. */
moira_status_t moira_openblas_linear(int threads, int64_t tokens, int64_t out_features,
                                     int64_t in_features, const float *x, const float *w, float *y,
                                     double *out_seconds) {
    if (!moira_openblas_available())
        return moira_status_make(MOIRA_CODE_UNSUPPORTED, "OpenBLAS peer: %s", openblas.why);
    openblas.set_num_threads(threads);
    double start = seconds();
    openblas.sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, (int)tokens, (int)out_features,
                   (int)in_features, 1.0f, x, (int)in_features, w, (int)in_features, 0.0f, y,
                   (int)out_features);
    *out_seconds = seconds() - start;
    return MOIRA_OK_STATUS;
}

/* Frees the scratch; the problem's arrays belong to the caller. */
void moira_openblas_moe_close(moira_openblas_moe_t *peer) {
    if (!peer) return;
    free(peer->order);
    free(peer->counts);
    free(peer->next);
    free(peer->xe);
    free(peer->ye);
    free(peer->gate);
    free(peer->up);
    free(peer);
}
