/* `moira bench alltoall`: the expert exchange between hosts (runtime/executor/exchange.c) on two
 * ranks of this machine (DESIGN.md §7, issue 18).
 *
 *   1. Dispatch + combine of one MoE layer against message size: every rank sends T rows of a
 *      DeepSeek-V3 layer (D = 7168 f32 with k = 8 replica numbers and weights) to the other and
 *      gets T partial sums back, through the cluster's exchange, nothing else running. The peer
 *      in the same run is memcpy of the same bytes on one rank: what a shared-memory transport
 *      between two processes of one machine can at best reach.
 *   2. The share of a layer's time spent in communication at 1, 16 and 512 tokens: a
 *      DeepSeek-V2-Lite-shaped model (one dense layer, one MoE layer, random bf16 weights) with
 *      half of its routed experts in each rank's memory; rank 0 owns the tokens. The layer's wall
 *      time comes from the executor; its communication is the same messages (the rows that
 *      crossed, measured) exchanged alone, as in part 1.
 * Without mpirun it starts itself under `mpirun -np 2`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "placement/network_cost.h"
#include "runtime/backend.h"
#include "runtime/cli/bench.h"
#include "runtime/cli/cli.h"
#include "runtime/cli/run.h"
#include "runtime/cluster/cluster.h"
#include "runtime/remove_tree.h"

#define SWEEP_HIDDEN 7168
#define SWEEP_TOP_K 8

static const char v2_lite_2_layers[] =
    "name: deepseek-v2-lite-2l\nhidden_size: 2048\nnum_hidden_layers: 2\n"
    "first_k_dense_replace: 1\nintermediate_size: 10944\nmax_position_embeddings: 4096\n"
    "vocab_size: 102400\nn_routed_experts: 64\nn_shared_experts: 2\n"
    "moe_intermediate_size: 1408\nnum_experts_per_tok: 6\nn_group: 1\ntopk_group: 1\n"
    "scoring_func: softmax\nnorm_topk_prob: false\nnum_attention_heads: 16\nq_lora_rank: null\n"
    "kv_lora_rank: 512\nqk_nope_head_dim: 128\nqk_rope_head_dim: 64\nv_head_dim: 128\n"
    "rope_theta: 10000\nweight_dtype: bf16\n";

/* Two hosts, each its CPU memory, and the plan giving each half of the 64 experts. */
static const char two_hosts[] =
    "name: bench-two-hosts\nhosts:\n"
    "  - name: rank0\n    numa_nodes: [{id: 0, memory_gib: 16, bandwidth_gbs: 30, cores: 1, "
    "peak_tflops: {f32: 0.1, bf16: 0.1}}]\n"
    "  - name: rank1\n    numa_nodes: [{id: 0, memory_gib: 16, bandwidth_gbs: 30, cores: 1, "
    "peak_tflops: {f32: 0.1, bf16: 0.1}}]\n"
    "network: {bandwidth_gbs: 10, latency_us: 5}\n";

/* Buffers of one exchange pattern: per rank `rows_out[r]` rows of `dispatch` bytes out, the same
 * number of `back` bytes returned. */
typedef struct exchange_case {
    int ranks;
    int64_t dispatch, back, capacity; /* row bytes; rows per rank block */
    char *send, *recv, *back_send, *back_recv;
    int64_t *out, *in, *offsets, *back_out, *back_in, *back_offsets;
} exchange_case_t;

static void case_free(exchange_case_t *c) {
    free(c->send);
    free(c->recv);
    free(c->back_send);
    free(c->back_recv);
    free(c->out);
    free(c->in);
    free(c->offsets);
    free(c->back_out);
    free(c->back_in);
    free(c->back_offsets);
}

static bool case_alloc(exchange_case_t *c, int ranks, int64_t dispatch, int64_t back,
                       int64_t capacity) {
    memset(c, 0, sizeof(*c));
    c->ranks = ranks;
    c->dispatch = dispatch;
    c->back = back;
    c->capacity = capacity;
    size_t blocks = (size_t)ranks * (size_t)capacity;
    c->send = calloc(blocks, (size_t)dispatch);
    c->recv = calloc(blocks, (size_t)dispatch);
    c->back_send = calloc(blocks, (size_t)back);
    c->back_recv = calloc(blocks, (size_t)back);
    int64_t **arrays[] = {&c->out,      &c->in,      &c->offsets,
                          &c->back_out, &c->back_in, &c->back_offsets};
    bool ok = c->send && c->recv && c->back_send && c->back_recv;
    for (size_t i = 0; i < sizeof(arrays) / sizeof(arrays[0]); i++)
        ok = ok && (*arrays[i] = calloc((size_t)ranks, sizeof(int64_t)));
    return ok;
}

/* One MoE layer's two exchanges: `rows[r]` rows from this rank to rank r, and their sums back. */
static void exchange_layer(moira_cluster_t *cluster, exchange_case_t *c, const int64_t *rows) {
    moira_cluster_exchange_t pending;
    for (int r = 0; r < c->ranks; r++) {
        c->out[r] = rows[r] * c->dispatch;
        c->offsets[r] = r * c->capacity * c->dispatch;
    }
    moira_cluster_exchange_start(cluster, c->send, c->out, c->offsets, c->recv, c->in, c->offsets,
                                 c->capacity * c->dispatch, c->dispatch, "bench dispatch",
                                 &pending);
    moira_cluster_exchange_wait(cluster, &pending);
    for (int r = 0; r < c->ranks; r++) {
        c->back_out[r] = c->in[r] / c->dispatch * c->back;
        c->back_offsets[r] = r * c->capacity * c->back;
    }
    moira_cluster_exchange_start(cluster, c->back_send, c->back_out, c->back_offsets, c->back_recv,
                                 c->back_in, c->back_offsets, c->capacity * c->back, c->back,
                                 "bench combine", &pending);
    moira_cluster_exchange_wait(cluster, &pending);
}

/* The best of `iters` layers (after one warm-up), rank 0's clock; every rank runs it. */
static double time_exchange(moira_cluster_t *cluster, exchange_case_t *c, const int64_t *rows,
                            int iters) {
    double best = 1e30;
    for (int i = 0; i <= iters; i++) {
        moira_cluster_barrier(cluster, moira_cluster_timeout(cluster), "bench round");
        double start = moira_bench_seconds();
        exchange_layer(cluster, c, rows);
        double took = moira_bench_seconds() - start;
        if (i > 0 && took < best) best = took;
    }
    return best;
}

/* memcpy of the bytes one rank sends and receives in a layer: the floor of a shared-memory
 * transport between processes on this machine. */
static double time_memcpy(exchange_case_t *c, int64_t rows, int iters) {
    size_t out = (size_t)(rows * c->dispatch), back = (size_t)(rows * c->back);
    double best = 1e30;
    for (int i = 0; i <= iters; i++) {
        double start = moira_bench_seconds();
        memcpy(c->recv, c->send, out);
        memcpy(c->back_recv, c->back_send, back);
        double took = moira_bench_seconds() - start;
        if (i > 0 && took < best) best = took;
    }
    return best;
}

/* Part 1: every rank sends T rows to every other rank and gets their sums back. */
static void sweep(moira_cluster_t *cluster, const moira_bench_args_t *args, bool print) {
    static const int64_t sizes[] = {1, 4, 16, 64, 256, 512, 1024, 4096};
    int ranks = moira_cluster_size(cluster), me = moira_cluster_rank(cluster);
    int64_t dispatch = moira_network_dispatch_row_bytes(SWEEP_HIDDEN, SWEEP_TOP_K);
    int64_t back = moira_network_return_row_bytes(SWEEP_HIDDEN);
    exchange_case_t c;
    if (!case_alloc(&c, ranks, dispatch, back, sizes[7]))
        moira_cluster_abort(cluster, 1, "bench alltoall: out of memory");
    int64_t rows[64] = {0};
    if (print)
        printf("Dispatch + combine of one MoE layer, DeepSeek-V3 rows (D %d, k %d: %lld + %lld "
               "bytes per token), %d ranks on this machine\n%-8s %12s %12s %10s %12s %8s\n",
               SWEEP_HIDDEN, SWEEP_TOP_K, (long long)dispatch, (long long)back, ranks, "TOKENS",
               "BYTES/RANK", "LAYER us", "GB/s", "MEMCPY us", "RATIO");
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        int64_t t = sizes[s];
        if (args->tokens > 0 && t != args->tokens) continue;
        for (int r = 0; r < ranks && r < 64; r++)
            rows[r] = r == me ? 0 : t;
        int iters = t <= 64 ? 200 : t <= 1024 ? 40 : 10;
        if (args->iters > 0) iters = (int)args->iters;
        double layer = time_exchange(cluster, &c, rows, iters);
        double copy = time_memcpy(&c, t * (ranks - 1), iters);
        double bytes = (double)(t * (ranks - 1) * (dispatch + back)); /* out, each way */
        if (print)
            printf("%-8lld %12.0f %12.1f %10.2f %12.1f %8.2f\n", (long long)t, bytes, layer * 1e6,
                   2 * bytes / layer / 1e9, copy * 1e6, copy / layer);
    }
    case_free(&c);
}

/* Writes `text` to dir/name; false when it cannot. */
static bool write_text(const char *dir, const char *name, const char *text, char *path,
                       size_t size) {
    snprintf(path, size, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return false;
    bool ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

/* The plan: experts 0-31 in rank 0's memory, 32-63 in rank 1's, for layer 1. */
static void plan_text(char *out, size_t size) {
    size_t used = (size_t)snprintf(out, size,
                                   "moira_plan: 1\ntopology: bench-two-hosts\nmodel: "
                                   "deepseek-v2-lite-2l\nlayers:\n  - layer: 1\n    devices:\n");
    for (int host = 0; host < 2; host++) {
        used += (size_t)snprintf(out + used, size - used, "      rank%d/numa0: {experts: [", host);
        for (int e = 32 * host; e < 32 * host + 32; e++)
            used += (size_t)snprintf(out + used, size - used, "%s%d", e > 32 * host ? ", " : "", e);
        used += (size_t)snprintf(out + used, size - used, "]}\n");
    }
}

/* Part 2, on every rank: the model's MoE layer at 1, 16 and 512 tokens owned by rank 0. */
static moira_status_t layer_share(moira_cluster_t *cluster, const char *dir, bool print) {
    static const int64_t batches[] = {1, 16, 512};
    char topology_path[512], plan_path[512], plan[4096];
    plan_text(plan, sizeof(plan));
    if (!write_text(dir, "topology.yaml", two_hosts, topology_path, sizeof(topology_path)) ||
        !write_text(dir, "plan.yaml", plan, plan_path, sizeof(plan_path)))
        return moira_status_make(MOIRA_CODE_IO, "bench alltoall: cannot write into %s", dir);
    run_args_t a = {.topology = topology_path, .plan = plan_path, .tokens = 512, .seed = 1};
    run_model_t m;
    memset(&m, 0, sizeof(m));
    run_placement_t p;
    memset(&p, 0, sizeof(p));
    moira_executor_t *ex = NULL;
    moira_status_t status = moira_model_config_parse_string(
        v2_lite_2_layers, strlen(v2_lite_2_layers), "deepseek-v2-lite-2l", &m.config);
    if (!status) status = moira_runtime_init();
    if (!status) status = run_model_load_inputs(&m, &a);
    if (!status) status = run_place(&a, &m.config, 512, &p);
    if (!status) status = run_model_load_weights(&m, &a);
    if (!status) {
        moira_exec_config_t config = run_exec_config(&m.config, m.layers, &p, 512);
        status = moira_executor_create(&config, &ex);
    }
    int64_t d = m.config.hidden_size, k = m.config.num_experts_per_tok;
    int64_t dispatch = moira_network_dispatch_row_bytes(d, k),
            back = moira_network_return_row_bytes(d);
    double wall[3] = {0}, crossed[3] = {0};
    if (!status && moira_executor_leads(ex)) {
        for (int b = 0; b < 3 && !status; b++) {
            int64_t shape[2] = {batches[b], d}, pshape[1] = {batches[b]};
            moira_tensor_t x = moira_tensor_view(MOIRA_DTYPE_F32, 2, shape, m.x.data);
            moira_tensor_t positions =
                moira_tensor_view(MOIRA_DTYPE_I32, 1, pshape, m.positions.data);
            moira_tensor_t out = moira_tensor_view(MOIRA_DTYPE_F32, 2, shape, m.out.data);
            status = moira_executor_forward(ex, &x, &positions, &out, false, NULL);
            moira_executor_reset_stats(ex);
            int iters = batches[b] >= 512 ? 5 : 30;
            for (int i = 0; i < iters && !status; i++)
                status = moira_executor_forward(ex, &x, &positions, &out, false, NULL);
            const moira_exec_stats_t *s = moira_executor_stats(ex);
            wall[b] = s->layers[1].wall_s / (double)iters;
            crossed[b] = s->layers[1].network_bytes / (double)iters / (double)dispatch;
        }
        moira_executor_release(ex);
    } else if (!status) {
        status = moira_executor_follow(ex);
    }
    moira_executor_destroy(ex);
    run_placement_free(&p);
    run_model_release(&m);
    if (status) return status;
    /* The same messages alone: rank 0 sends the rows that crossed, rank 1 returns their sums. */
    moira_cluster_broadcast(cluster, 0, crossed, sizeof(crossed), "bench row counts");
    exchange_case_t c;
    if (!case_alloc(&c, moira_cluster_size(cluster), dispatch, back, 512))
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench alltoall: out of memory");
    if (print)
        printf(
            "\nThe share of a MoE layer's time in communication: DeepSeek-V2-Lite shape (D %lld, "
            "64 experts, top-%lld, bf16), experts 0-31 on rank 0, 32-63 on rank 1, tokens on "
            "rank 0\n%-8s %10s %12s %12s %8s\n",
            (long long)d, (long long)k, "TOKENS", "CROSSED", "LAYER us", "COMM us", "SHARE");
    for (int b = 0; b < 3; b++) {
        int64_t rows[64] = {0};
        if (moira_cluster_rank(cluster) == 0) rows[1] = (int64_t)(crossed[b] + 0.5);
        double comm = time_exchange(cluster, &c, rows, batches[b] >= 512 ? 10 : 100);
        if (print)
            printf("%-8lld %10.1f %12.1f %12.1f %7.1f%%\n", (long long)batches[b], crossed[b],
                   wall[b] * 1e6, comm * 1e6, 100 * comm / wall[b]);
    }
    case_free(&c);
    return MOIRA_OK_STATUS;
}

/* Without a launcher: the same command under `mpirun -np 2`, replacing this process. */
static int start_under_mpirun(const moira_bench_args_t *args) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        fprintf(stderr,
                "moira bench alltoall: cannot find this program to start it under mpirun\n");
        return 2;
    }
    self[n] = '\0';
    char tokens[32], iters[32];
    snprintf(tokens, sizeof(tokens), "%lld", args->tokens);
    snprintf(iters, sizeof(iters), "%lld", args->iters);
    const char *argv[24];
    int argc = 0;
    argv[argc++] = "mpirun";
    argv[argc++] = "-np";
    argv[argc++] = "2";
    argv[argc++] = "--oversubscribe";
    argv[argc++] = "--bind-to";
    argv[argc++] = "none";
    if (geteuid() == 0) argv[argc++] = "--allow-run-as-root";
    argv[argc++] = self;
    argv[argc++] = "bench";
    argv[argc++] = "alltoall";
    if (args->tokens > 0) {
        argv[argc++] = "--tokens";
        argv[argc++] = tokens;
    }
    if (args->iters > 0) {
        argv[argc++] = "--iters";
        argv[argc++] = iters;
    }
    argv[argc] = NULL;
    fflush(stdout);
    execvp("mpirun", (char *const *)argv);
    fprintf(stderr, "moira bench alltoall: cannot start mpirun (install openmpi-bin: make deps)\n");
    return 2;
}

int moira_bench_alltoall(const moira_bench_args_t *args) {
    moira_cluster_t *cluster = moira_cluster_current();
    if (!cluster) return start_under_mpirun(args);
    if (moira_cluster_size(cluster) < 2 || moira_cluster_size(cluster) > 64) {
        fprintf(stderr, "moira bench alltoall: runs on 2 to 64 ranks (mpirun -np 2)\n");
        return 2;
    }
    bool print = moira_cluster_rank(cluster) == 0;
    sweep(cluster, args, print);
    if (args->tokens > 0) return 0;
    char dir[] = "/tmp/moira-bench-alltoall.XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "moira bench alltoall: cannot make a temporary folder\n");
        return 2;
    }
    moira_status_t status = layer_share(cluster, dir, print);
    moira_remove_tree(dir);
    return status ? moira_status_report(status) : 0;
}
