/* The planner and its cost model: hand-computed costs, EPLB's published example (Moira must be at
 * least as balanced as EPLB's hierarchical policy), heterogeneous machines where it must clearly
 * beat the two naive placements, hard memory and slot caps, groups kept on one host when the
 * network is slow, and determinism. Also the pieces that keep planning near n log n: the load
 * order the local search descends (against a sorted array), the search's end (no move or swap
 * of the busiest target's replicas that a scan of every pair finds improving is left), and the
 * rounding of a large synthetic profile. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/eplb_peer.h"
#include "placement/home.h"
#include "placement/plan.h"
#include "placement/replica_order.h"
#include "tests/unit/testing.h"

#define CONFIGS MOIRA_TEST_DATA_DIR "/../../configs/"
#define PLACEMENT MOIRA_TEST_DATA_DIR "/placement/"

static moira_status_t plan_with(const moira_topology_t *t, const moira_model_config_t *m,
                                const moira_profile_t *p, int64_t redundant, int64_t slots,
                                moira_plan_strategy_t strategy, moira_plan_t *out) {
    moira_plan_options_t options = {redundant, slots, strategy};
    return moira_plan_make(t, m, p, &options, out);
}

static moira_model_config_t parse_model(const char *text) {
    moira_model_config_t model;
    CHECK_OK(moira_model_config_parse_string(text, strlen(text), "model", &model));
    return model;
}

/* D = 1024, I = 512, bf16: expert bytes 3 x 512 x 1024 x 2 = 3,145,728; flops per token
 * 6 x 1024 x 512 = 3,145,728. A GPU of 100 TFLOP/s, 1000 GB/s, 50 GB/s link with 1000 tokens
 * over 2 active replicas: compute 1000 x 3145728 / 100e12 s = 31.45728 us, weights
 * 2 x 3145728 / 1000e9 s = 6.291456 us, link 1000 x 2048 x 2 / 50e9 s = 81.92 us; total
 * 31.45728 + 81.92 = 113.37728 us. With 10 tokens the weights dominate: 6.291456 + 0.8192. */
static void test_cost_model(void) {
    moira_model_config_t model = parse_model(
        "hidden_size: 1024\nmoe_intermediate_size: 512\nnum_hidden_layers: 1\n"
        "num_attention_heads: 1\nkv_lora_rank: 8\nqk_nope_head_dim: 8\nqk_rope_head_dim: 8\n"
        "v_head_dim: 8\nn_routed_experts: 4\nnum_experts_per_tok: 2\nweight_dtype: bf16\n");
    moira_cost_model_t cost;
    moira_cost_model_init(&model, &cost);
    CHECK(cost.expert_bytes == 3145728.0 && cost.flops_per_token == 3145728.0);
    moira_target_t gpu;
    memset(&gpu, 0, sizeof(gpu));
    gpu.kind = MOIRA_TARGET_GPU;
    gpu.peak_tflops[MOIRA_DTYPE_BF16] = 100;
    gpu.bandwidth_gbs = 1000;
    gpu.link_gbs = 50;
    CHECK_NEAR(moira_cost_target_us(&cost, &gpu, 1000, 2), 113.37728, 1e-9);
    CHECK_NEAR(moira_cost_target_us(&cost, &gpu, 10, 2), 6.291456 + 0.8192, 1e-9);
    CHECK(moira_cost_target_us(&cost, &gpu, 0, 0) == 0);
    /* CPU memory moves no activations over a link. */
    moira_target_t numa = gpu;
    numa.kind = MOIRA_TARGET_NUMA;
    numa.link_gbs = 0;
    CHECK_NEAR(moira_cost_target_us(&cost, &numa, 1000, 2), 31.45728, 1e-9);
    CHECK(moira_cost_link_bytes(&cost, &numa, 1000) == 0);
    CHECK(moira_cost_link_bytes(&cost, &gpu, 1000) == 1000.0 * 2048 * 2);
    /* Capacity: 16 GiB over 3 layers of 3 MiB experts is floor(17179869184 / 3 / 3145728) = 1820
     * replicas per layer, unless --slots is lower. */
    moira_target_t big = gpu;
    big.memory_bytes = 16ull << 30;
    CHECK(moira_plan_target_capacity(&big, 3, 3145728, 0) == 1820);
    CHECK(moira_plan_target_capacity(&big, 3, 3145728, 7) == 7);
}

/* Network bytes by hand. Two hosts with one GPU each; 4 experts in 2 groups, k = 2, one group
 * per token (m = k / topk_group = 2 experts of a group per token); D = 1024, so a token crossing
 * to a host moves its row, (1024 + 2 x 2) x 4 = 4112 bytes, and its partial sum back, 4096: 8208
 * bytes; half the tokens start on the other host. Loads 10, 10, 20, 20: group 0 is 20 assignments
 * = 10 tokens, group 1 is 20 tokens; the batch is 60 / 2 = 30 tokens.
 *   Groups whole (0 on host 0, 1 on host 1): host 0 receives 10 tokens x 8208 x 1/2 = 41040
 *   bytes, host 1 82080; 123120 in all; network time = busiest 82080 B / 10 GB/s = 8.208 us + 5.
 *   Groups split (one expert of each on each host): each host receives, per group, a share
 *   f x m = 1/2 x 2 = 1 of the group's tokens: 10 + 20 = 30 tokens (all of the batch, the most a
 *   host can receive) x 8208 x 1/2 = 123120 bytes; 246240 in all: splitting groups doubles the
 *   traffic. */
static void test_network_by_hand(void) {
    const char *topo = "name: two\nhosts:\n"
                       "  - name: a\n    numa_nodes: [{id: 0, memory_gib: 0, bandwidth_gbs: 1, "
                       "cores: 1, peak_tflops: {f32: 1}}]\n    devices: [{name: ga, kind: gpu, "
                       "backend: opencl, memory_gib: 1, bandwidth_gbs: 1000, peak_tflops: {bf16: "
                       "100}, link_gbs: 50}]\n"
                       "  - name: b\n    numa_nodes: [{id: 0, memory_gib: 0, bandwidth_gbs: 1, "
                       "cores: 1, peak_tflops: {f32: 1}}]\n    devices: [{name: gb, kind: gpu, "
                       "backend: opencl, memory_gib: 1, bandwidth_gbs: 1000, peak_tflops: {bf16: "
                       "100}, link_gbs: 50}]\n"
                       "network: {bandwidth_gbs: 10, latency_us: 5}\n";
    moira_topology_t t;
    CHECK_OK(moira_topology_parse(topo, strlen(topo), "two.yaml", NULL, &t));
    moira_model_config_t m = parse_model(
        "hidden_size: 1024\nmoe_intermediate_size: 512\nnum_hidden_layers: 1\n"
        "num_attention_heads: 1\nkv_lora_rank: 8\nqk_nope_head_dim: 8\nqk_rope_head_dim: 8\n"
        "v_head_dim: 8\nn_routed_experts: 4\nnum_experts_per_tok: 2\nn_group: 2\n"
        "topk_group: 1\nweight_dtype: bf16\n");
    moira_cost_model_t cost;
    moira_cost_model_init(&m, &cost);
    int ga = moira_topology_find_target(&t, "ga"), gb = moira_topology_find_target(&t, "gb");
    double *scratch = calloc(moira_cost_scratch_doubles(&cost, &t), sizeof(double));
    const int32_t experts[4] = {0, 1, 2, 3};
    const double load[4] = {10, 10, 20, 20};
    const int whole[4] = {ga, ga, gb, gb}, split[4] = {ga, gb, ga, gb};
    moira_layer_cost_t c;
    moira_cost_layer(&cost, &t, 4, whole, experts, load, scratch, &c);
    CHECK_NEAR(c.network_bytes, 123120, 1e-6);
    CHECK_NEAR(c.network_us, 82080 / 10e3 + 5, 1e-9);
    CHECK_NEAR(c.tokens, 30, 1e-12);
    moira_cost_layer(&cost, &t, 4, split, experts, load, scratch, &c);
    CHECK_NEAR(c.network_bytes, 246240, 1e-6);
    free(scratch);
    moira_topology_free(&t);
}

static double layer_max_over_mean_by_hand(const moira_plan_layer_t *layer, int n_targets) {
    double load[64] = {0};
    int held[64] = {0};
    for (int r = 0; r < layer->n_replicas; r++) {
        load[layer->replica_target[r]] += layer->replica_load[r];
        held[layer->replica_target[r]]++;
    }
    double max = 0, sum = 0;
    int n = 0;
    for (int t = 0; t < n_targets; t++) {
        if (!held[t]) continue;
        n++;
        sum += load[t];
        if (load[t] > max) max = load[t];
    }
    return max / (sum / n);
}

/* EPLB's README example: 12 experts, 16 replicas (4 redundant), 4 groups, 2 nodes x 4 GPUs with
 * 2 slots each. EPLB's hierarchical policy reaches max/mean 1.208 and 1.242. */
static void test_eplb_example(void) {
    moira_topology_t t;
    moira_model_config_t m;
    moira_profile_t p;
    moira_plan_t plan;
    CHECK_OK(moira_topology_load(PLACEMENT "eplb-topology.yaml", NULL, &t));
    CHECK_OK(moira_model_config_load(PLACEMENT "eplb-model.yaml", &m));
    CHECK_OK(moira_profile_load(PLACEMENT "eplb-profile.yaml", &m, &p));
    CHECK_OK(plan_with(&t, &m, &p, 4, 2, MOIRA_PLAN_BALANCED, &plan));
    const double eplb[2] = {1.208, 1.242};
    for (int l = 0; l < plan.n_layers && l < 2; l++) {
        const moira_plan_layer_t *layer = &plan.layers[l];
        /* At most the 4 redundant replicas: one is kept only when it lowers the prediction. */
        CHECK(layer->n_replicas >= 12 && layer->n_replicas <= 16);
        int per_gpu[64] = {0};
        double per_expert[12] = {0};
        for (int r = 0; r < layer->n_replicas; r++) {
            per_gpu[layer->replica_target[r]]++;
            per_expert[layer->replica_expert[r]] += layer->replica_load[r];
        }
        for (int i = 0; i < t.n_targets; i++)
            CHECK(per_gpu[i] <= (t.targets[i].kind == MOIRA_TARGET_GPU ? 2 : 0));
        /* Every expert's tokens are all routed somewhere. */
        const double *load = moira_profile_layer_load(&p, layer->layer);
        for (int e = 0; e < 12; e++)
            CHECK_NEAR(per_expert[e], load[e], 1e-6);
        double mm = layer_max_over_mean_by_hand(layer, t.n_targets);
        CHECK_NEAR(layer->cost.max_over_mean, mm, 1e-9);
        /* The peer, EPLB's policy rewritten in C, reproduces EPLB's published figures. */
        double gpu_load[8], peer = 0;
        CHECK_OK(moira_eplb_hierarchical(load, 12, 16, 4, 2, 4, gpu_load, &peer));
        CHECK_NEAR(peer, eplb[l], 0.0005);
        printf("  EPLB example layer %d: Moira max/mean %.3f (EPLB %.3f)\n", l, mm, eplb[l]);
        CHECK_MSG(mm <= eplb[l], "layer %d: max/mean %.4f above EPLB's %.3f", l, mm, eplb[l]);
    }
    moira_plan_free(&plan);
    moira_profile_free(&p);
    moira_topology_free(&t);
}

static double predicted(const moira_plan_t *plan) {
    moira_plan_summary_t s;
    moira_plan_summarise(plan, &s);
    return s.predicted_us_per_layer;
}

/* On machines that mix fast small devices and slow large CPU memory, Moira's plan must predict
 * clearly (at least 20%) less time than keeping all experts in CPU memory and than filling the
 * fastest device first. */
static void check_beats_baselines(const char *topology, const char *model_path, const char *skew,
                                  int64_t redundant) {
    moira_topology_t t;
    moira_model_config_t m;
    moira_profile_t p;
    CHECK_OK(moira_topology_load(topology, NULL, &t));
    CHECK_OK(moira_model_config_load(model_path, &m));
    CHECK_OK(moira_profile_synthesise(&m, skew, 4096, &p));
    moira_plan_t best, all_cpu, fastest;
    CHECK_OK(plan_with(&t, &m, &p, redundant, 0, MOIRA_PLAN_BALANCED, &best));
    CHECK_OK(plan_with(&t, &m, &p, 0, 0, MOIRA_PLAN_ALL_CPU, &all_cpu));
    CHECK_OK(plan_with(&t, &m, &p, 0, 0, MOIRA_PLAN_FILL_FASTEST, &fastest));
    printf("  %s, %s, %s: Moira %.1f us/layer, all in CPU memory %.1f, fastest first %.1f\n",
           t.name, m.name, skew, predicted(&best), predicted(&all_cpu), predicted(&fastest));
    CHECK(predicted(&best) < 0.8 * predicted(&all_cpu));
    CHECK(predicted(&best) < 0.8 * predicted(&fastest));
    /* The baselines are what they say: all CPU memory; expert order on the fastest target. */
    for (int r = 0; r < all_cpu.layers[0].n_replicas; r++)
        CHECK(t.targets[all_cpu.layers[0].replica_target[r]].kind == MOIRA_TARGET_NUMA);
    CHECK(fastest.layers[0].replica_expert[0] == 0);
    moira_plan_free(&best);
    moira_plan_free(&all_cpu);
    moira_plan_free(&fastest);
    moira_profile_free(&p);
    moira_topology_free(&t);
}

static void test_heterogeneous(void) {
    check_beats_baselines(CONFIGS "topologies/intel-gpu-xeon.yaml",
                          CONFIGS "models/deepseek-v2-lite.yaml", "zipf:1", 8);
    check_beats_baselines(CONFIGS "topologies/mixed-amd-ascend-ddr.yaml",
                          CONFIGS "models/deepseek-v2-lite.yaml", "zipf:1.2", 8);
    check_beats_baselines(CONFIGS "topologies/mixed-amd-ascend-ddr.yaml",
                          CONFIGS "models/qwen3-30b-a3b.yaml", "uniform", 0);
    check_beats_baselines(CONFIGS "topologies/mi300x-8.yaml", CONFIGS "models/deepseek-v3.yaml",
                          "zipf:1", 32);
}

/* Two MoE layers of DeepSeek-V3 on the shipped 8x MI300X node, with a uniform profile of
 * `tokens` (what the redundancy and decode tests plan). */
static void v3_on_mi300x(int64_t tokens, moira_topology_t *t, moira_model_config_t *m,
                         moira_profile_t *p) {
    CHECK_OK(moira_topology_load(CONFIGS "topologies/mi300x-8.yaml", NULL, t));
    CHECK_OK(moira_model_config_load(CONFIGS "models/deepseek-v3.yaml", m));
    m->num_hidden_layers = m->first_k_dense_replace + 2;
    CHECK_OK(moira_profile_synthesise(m, "uniform", tokens, p));
}

/* More --redundant never predicts slower (issue 15: V3 on mi300x-8 predicted 2,072 us per layer
 * at 4 and 2,330 at 256): each budget's prediction is at most its half's, and at most the one
 * without redundancy. Two MoE layers of V3 keep the test fast. */
static void test_redundancy_never_hurts(void) {
    moira_topology_t t;
    moira_model_config_t m;
    moira_profile_t p;
    v3_on_mi300x(4096, &t, &m, &p);
    static const int64_t budgets[] = {0, 1, 2, 4, 8, 16, 32, 64, 128, 256};
    double at[sizeof(budgets) / sizeof(budgets[0])];
    for (size_t i = 0; i < sizeof(budgets) / sizeof(budgets[0]); i++) {
        moira_plan_t plan;
        CHECK_OK(plan_with(&t, &m, &p, budgets[i], 0, MOIRA_PLAN_BALANCED, &plan));
        at[i] = predicted(&plan);
        printf("  --redundant %lld: %.1f us per layer\n", (long long)budgets[i], at[i]);
        CHECK(at[i] <= at[0] * (1 + 1e-12));
        if (i > 0)
            CHECK_MSG(at[i] <= at[i - 1] * (1 + 1e-12), "budget %lld", (long long)budgets[i]);
        moira_plan_free(&plan);
    }
    moira_profile_free(&p);
    moira_topology_free(&t);
}

/* Decode (issue 15): a 1-token batch of V3 on mi300x-8 expects 8/256 = 1/32 token at each expert,
 * and reads it with that probability. The old planner put 248 of 256 experts per layer in DDR
 * (the whole-token profile loaded experts 0-7 only); reads are cheapest on the GPUs, so they
 * now hold nearly all. A GPU with 32 replicas reads 32/32 = 1 expert of 44,050,944 bytes (fp8 +
 * block scales) at 5300 GB/s, 8.311499 us, and moves 1 token x 7168 x 2 bytes x 2 over its 64
 * GB/s link, 0.448 us: 8.759499 us per layer (compute, 88 MFLOP at 2614.9 TFLOP/s, hides). */
static void test_decode_spreads(void) {
    moira_topology_t t;
    moira_model_config_t m;
    moira_profile_t p;
    v3_on_mi300x(1, &t, &m, &p);
    moira_plan_t plan;
    CHECK_OK(plan_with(&t, &m, &p, 0, 0, MOIRA_PLAN_BALANCED, &plan));
    for (int l = 0; l < plan.n_layers; l++) {
        int on_gpus = 0, most = 0, per_target[16] = {0};
        for (int r = 0; r < plan.layers[l].n_replicas; r++) {
            int target = plan.layers[l].replica_target[r];
            per_target[target]++;
            on_gpus += t.targets[target].kind == MOIRA_TARGET_GPU;
        }
        for (int i = 0; i < t.n_targets; i++)
            if (t.targets[i].kind == MOIRA_TARGET_GPU && per_target[i] > most) most = per_target[i];
        printf("  V3 decode on mi300x-8, layer %lld: %d of 256 experts on the GPUs, %.3f us\n",
               (long long)plan.layers[l].layer, on_gpus, plan.layers[l].cost.predicted_us);
        CHECK(on_gpus >= 248);
        double bytes = 3.0 * 2048 * 7168 + 3.0 * 16 * 56 * 4;
        double want = most / 32.0 * bytes / 5300e3 + 7168.0 * 2 * 2 / 64e3;
        CHECK_NEAR(plan.layers[l].cost.predicted_us, want, 1e-6 * want);
    }
    moira_plan_free(&plan);
    moira_profile_free(&p);
    moira_topology_free(&t);
}

/* The home device (issue 15: it was cpu:0 even on an 8-GPU topology, and never predicted). D =
 * 1024, one MoE layer, one head of qk 8 + 8, v 8, kv_lora 8, 4 experts, no shared expert, bf16:
 * home parameters q 16 x 1024 + kv_a 16 x 1024 + kv_b 16 x 8 + o 1024 x 8 + router 1024 x 4 =
 * 45184, 90368 bytes. On the GPU (1000 GB/s, 100 TFLOP/s) at 1000 tokens: weights 0.090368 us,
 * compute 2 x 45184 x 1000 / 100e12 s = 0.90368 us; on CPU memory (100 GB/s, 1 TFLOP/s) 90.368
 * us. The GPU is chosen, unless it cannot hold the home's weights. */
static void test_home(void) {
    moira_model_config_t m = parse_model(
        "hidden_size: 1024\nmoe_intermediate_size: 512\nnum_hidden_layers: 1\n"
        "num_attention_heads: 1\nkv_lora_rank: 8\nqk_nope_head_dim: 8\nqk_rope_head_dim: 8\n"
        "v_head_dim: 8\nn_routed_experts: 4\nn_shared_experts: 0\nnum_experts_per_tok: 2\n"
        "weight_dtype: bf16\n");
    const char *text = "name: h\nhosts:\n  - name: h\n    numa_nodes: [{id: 0, memory_gib: 1, "
                       "bandwidth_gbs: 100, cores: 4, peak_tflops: {bf16: 1}}]\n    devices:\n"
                       "      - {name: g, kind: gpu, backend: x, memory_gib: %s, "
                       "bandwidth_gbs: 1000, peak_tflops: {bf16: 100}, link_gbs: 50}\n";
    char topo[512];
    snprintf(topo, sizeof(topo), text, "1");
    moira_topology_t t;
    CHECK_OK(moira_topology_parse(topo, strlen(topo), "h.yaml", NULL, &t));
    CHECK_NEAR(moira_home_layer_us(&t, 1, &m, 0, 1000), 0.90368, 1e-9);
    CHECK_NEAR(moira_home_layer_us(&t, 0, &m, 0, 1000), 90.368, 1e-9);
    CHECK(moira_home_choose(&t, &m, 1000) == 1);
    /* Planned with the GPU as home, every layer's prediction carries its time. */
    moira_profile_t p;
    CHECK_OK(moira_profile_synthesise(&m, "uniform", 1000, &p));
    moira_plan_t plan;
    CHECK_OK(plan_with(&t, &m, &p, 0, 0, MOIRA_PLAN_BALANCED, &plan));
    double without = plan.layers[0].cost.predicted_us;
    moira_plan_set_home(&plan, &t, &m, 1);
    CHECK(!strcmp(plan.home, "g"));
    CHECK_NEAR(plan.layers[0].cost.predicted_us, without + 0.90368, 1e-9);
    moira_plan_free(&plan);
    moira_profile_free(&p);
    moira_topology_free(&t);
    snprintf(topo, sizeof(topo), text, "0.00005"); /* 53687 bytes: not the home's 90368 */
    CHECK_OK(moira_topology_parse(topo, strlen(topo), "h.yaml", NULL, &t));
    CHECK(moira_home_choose(&t, &m, 1000) == 0);
    moira_topology_free(&t);
}

/* A hand-checkable baseline: 4 experts in one 100 GB/s NUMA node of 1 TFLOP/s. With D = 1024,
 * I = 512, bf16 and a uniform profile of 100 tokens x k = 2 (50 per expert): compute
 * 200 x 3145728 / 1e12 s = 629.1456 us; weights 4 x 3145728 / 100e9 s = 125.82912 us. */
static void test_all_cpu_by_hand(void) {
    const char *topo = "name: one\nhosts:\n  - name: h\n    numa_nodes: [{id: 0, memory_gib: 1, "
                       "bandwidth_gbs: 100, cores: 4, peak_tflops: {bf16: 1}}]\n";
    moira_topology_t t;
    CHECK_OK(moira_topology_parse(topo, strlen(topo), "one.yaml", NULL, &t));
    moira_model_config_t m = parse_model(
        "hidden_size: 1024\nmoe_intermediate_size: 512\nnum_hidden_layers: 1\n"
        "num_attention_heads: 1\nkv_lora_rank: 8\nqk_nope_head_dim: 8\nqk_rope_head_dim: 8\n"
        "v_head_dim: 8\nn_routed_experts: 4\nnum_experts_per_tok: 2\nweight_dtype: bf16\n");
    moira_profile_t p;
    CHECK_OK(moira_profile_synthesise(&m, "uniform", 100, &p));
    moira_plan_t plan;
    CHECK_OK(plan_with(&t, &m, &p, 0, 0, MOIRA_PLAN_ALL_CPU, &plan));
    CHECK_NEAR(plan.layers[0].cost.predicted_us, 629.1456, 1e-9);
    CHECK(plan.layers[0].cost.max_over_mean == 1.0);
    moira_plan_free(&plan);
    moira_profile_free(&p);
    moira_topology_free(&t);
}

/* Memory is a hard cap: a GPU that holds 3 replicas per layer never gets a fourth, whatever the
 * speed; --slots caps too; a model that cannot fit is refused. */
static void test_caps(void) {
    /* Expert bytes 3,145,728 x 2 MoE layers: 0.0234375 GiB holds 4 per layer (25,165,824 bytes
     * = 8 x 3,145,728), 0.017578125 GiB holds 3 (18,874,368 = 6 x 3,145,728). */
    const char *topo =
        "name: caps\nhosts:\n  - name: h\n    numa_nodes: [{id: 0, memory_gib: 0.017578125, "
        "bandwidth_gbs: 10, cores: 4, peak_tflops: {bf16: 1}}]\n    devices:\n"
        "      - {name: fast, kind: gpu, backend: opencl, memory_gib: 0.017578125, "
        "bandwidth_gbs: 5000, peak_tflops: {bf16: 1000}, link_gbs: 64}\n"
        "      - {name: slow, kind: gpu, backend: opencl, memory_gib: 0.0234375, "
        "bandwidth_gbs: 500, peak_tflops: {bf16: 100}, link_gbs: 16}\n";
    moira_topology_t t;
    CHECK_OK(moira_topology_parse(topo, strlen(topo), "caps.yaml", NULL, &t));
    moira_model_config_t m = parse_model(
        "hidden_size: 1024\nmoe_intermediate_size: 512\nnum_hidden_layers: 2\n"
        "num_attention_heads: 1\nkv_lora_rank: 8\nqk_nope_head_dim: 8\nqk_rope_head_dim: 8\n"
        "v_head_dim: 8\nn_routed_experts: 8\nnum_experts_per_tok: 2\nweight_dtype: bf16\n");
    moira_profile_t p;
    CHECK_OK(moira_profile_synthesise(&m, "zipf:1.5", 1000, &p));
    moira_plan_t plan;
    CHECK_OK(plan_with(&t, &m, &p, 2, 0, MOIRA_PLAN_BALANCED, &plan));
    for (int l = 0; l < plan.n_layers; l++) {
        int count[3] = {0};
        for (int r = 0; r < plan.layers[l].n_replicas; r++)
            count[plan.layers[l].replica_target[r]]++;
        CHECK(count[0] <= 3 && count[1] <= 3 && count[2] <= 4);
    }
    for (int i = 0; i < t.n_targets; i++)
        CHECK((uint64_t)moira_plan_target_used_bytes(&plan, i) <= t.targets[i].memory_bytes);
    moira_plan_free(&plan);
    CHECK_OK(plan_with(&t, &m, &p, 2, 3, MOIRA_PLAN_BALANCED, &plan));
    for (int l = 0; l < plan.n_layers; l++) {
        int count[3] = {0};
        for (int r = 0; r < plan.layers[l].n_replicas; r++)
            count[plan.layers[l].replica_target[r]]++;
        CHECK(count[2] <= 3);
    }
    moira_plan_free(&plan);
    /* 3 slots on each of 3 targets hold 9 >= 8 experts; 2 slots hold 6 < 8. */
    CHECK_CODE(plan_with(&t, &m, &p, 0, 2, MOIRA_PLAN_BALANCED, &plan), MOIRA_CODE_INVALID_INPUT);
    moira_profile_free(&p);
    moira_topology_free(&t);
}

/* With a slow network between two hosts, every expert group stays on one host (EPLB's
 * hierarchical idea); the plan is the same every time. */
static void test_groups_and_determinism(void) {
    moira_topology_t t;
    CHECK_OK(moira_topology_load(CONFIGS "topologies/two-host-mi300x.yaml", NULL, &t));
    t.network_gbs = 1; /* a slow network makes splitting groups expensive */
    moira_model_config_t m;
    CHECK_OK(moira_model_config_load(CONFIGS "models/deepseek-v3.yaml", &m));
    /* Each token's experts in one group: a token goes to one host when its group is whole there,
     * to both when its group is split, so splitting doubles the traffic. (With V3's four groups
     * per token of eight, on two hosts nearly every token reaches both hosts either way.) */
    m.topk_group = 1;
    moira_profile_t p;
    CHECK_OK(moira_profile_synthesise(&m, "zipf:0.8", 4096, &p));
    moira_plan_t a, b;
    CHECK_OK(plan_with(&t, &m, &p, 32, 0, MOIRA_PLAN_BALANCED, &a));
    CHECK_OK(plan_with(&t, &m, &p, 32, 0, MOIRA_PLAN_BALANCED, &b));
    bool same = a.n_layers == b.n_layers;
    for (int l = 0; same && l < a.n_layers; l++) {
        const moira_plan_layer_t *x = &a.layers[l], *y = &b.layers[l];
        same = x->n_replicas == y->n_replicas &&
               !memcmp(x->replica_target, y->replica_target, sizeof(int) * x->n_replicas) &&
               !memcmp(x->replica_expert, y->replica_expert, sizeof(int32_t) * x->n_replicas) &&
               !memcmp(x->replica_load, y->replica_load, sizeof(double) * x->n_replicas);
    }
    CHECK(same);
    int split_groups = 0;
    for (int l = 0; l < a.n_layers; l++) {
        int host_of_group[8];
        for (int g = 0; g < 8; g++)
            host_of_group[g] = -1;
        for (int r = 0; r < a.layers[l].n_replicas; r++) {
            int g = a.layers[l].replica_expert[r] / 32;
            int h = t.targets[a.layers[l].replica_target[r]].host;
            if (host_of_group[g] >= 0 && host_of_group[g] != h) split_groups++;
            host_of_group[g] = h;
        }
        CHECK(a.layers[l].n_replicas >= 256 && a.layers[l].n_replicas <= 256 + 32);
    }
    CHECK_MSG(split_groups == 0, "%d replicas split their group across hosts", split_groups);
    moira_plan_free(&a);
    moira_plan_free(&b);
    moira_profile_free(&p);
    moira_topology_free(&t);
}

/* The reference for the load order: replicas sorted by (load, rank) by insertion. */
static int reference_sorted(const double *load, const int *rank, const bool *in, int n, int *out) {
    int m = 0;
    for (int r = 0; r < n; r++) {
        if (!in[r]) continue;
        int i = m++;
        while (i > 0 && (load[out[i - 1]] > load[r] ||
                         (load[out[i - 1]] == load[r] && rank[out[i - 1]] > rank[r]))) {
            out[i] = out[i - 1];
            i--;
        }
        out[i] = r;
    }
    return m;
}

static bool load_at_least(int r, const void *context) {
    const double *args = context; /* {threshold, load...} */
    return args[1 + r] >= args[0];
}

/* Random inserts and removals over two targets, with loads from a small set (many ties), checked
 * after each against a sorted array: the listing, first and last, next and prev of every
 * replica, splits at every load and between loads (inclusive and not), and first_where. */
static void test_replica_order(void) {
    enum { N = 200, T = 2 };
    double load[N], args[1 + N];
    int rank[N], target[N], expect[N], got[N];
    bool in[T][N];
    memset(in, 0, sizeof(in));
    uint64_t state = 12345;
    for (int r = 0; r < N; r++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        load[r] = (double)((state >> 33) % 7);
        rank[r] = (r * 37) % N; /* a permutation: 37 and 200 are coprime */
        target[r] = -1;
    }
    moira_replica_order_t o;
    CHECK_OK(moira_replica_order_init(&o, N, T, load, rank));
    for (int step = 0; step < 3 * N; step++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        int r = (int)((state >> 33) % N), t = (int)((state >> 20) % T);
        if (target[r] >= 0) {
            moira_replica_order_remove(&o, target[r], r);
            in[target[r]][r] = false;
            target[r] = -1;
        } else {
            moira_replica_order_insert(&o, t, r);
            in[t][r] = true;
            target[r] = t;
        }
        for (int u = 0; u < T; u++) {
            int m = reference_sorted(load, rank, in[u], N, expect);
            CHECK(moira_replica_order_list(&o, u, got) == m &&
                  !memcmp(got, expect, m * sizeof(int)));
            CHECK(moira_replica_order_first(&o, u) == (m ? expect[0] : -1));
            CHECK(moira_replica_order_last(&o, u) == (m ? expect[m - 1] : -1));
            for (int i = 0; i < m; i++) {
                CHECK(moira_replica_order_next(&o, u, expect[i]) ==
                      (i + 1 < m ? expect[i + 1] : -1));
                CHECK(moira_replica_order_prev(&o, u, expect[i]) == (i > 0 ? expect[i - 1] : -1));
            }
            for (double v = -0.5; v <= 7; v += 0.5) {
                for (int inclusive = 0; inclusive < 2; inclusive++) {
                    int i = 0; /* the reference: the first replica past the split */
                    while (i < m && (load[expect[i]] < v || (inclusive && load[expect[i]] == v)))
                        i++;
                    int low, high;
                    moira_replica_order_split(&o, u, v, inclusive, &low, &high);
                    CHECK(low == (i > 0 ? expect[i - 1] : -1) && high == (i < m ? expect[i] : -1));
                }
                int i = 0;
                while (i < m && load[expect[i]] < v)
                    i++;
                args[0] = v;
                memcpy(args + 1, load, sizeof(load));
                CHECK(moira_replica_order_first_where(&o, u, load_at_least, args) ==
                      (i < m ? expect[i] : -1));
            }
        }
    }
    moira_replica_order_free(&o);
}

/* 1 - (1 - l/T)^T, restated with pow. */
static double read_probability_by_hand(double load, double batch) {
    if (load <= 0) return 0;
    if (load >= batch) return 1;
    return 1 - pow(1 - load / batch, batch);
}

/* The search's comparison, restated: time, then tokens per TFLOP/s, within 1e-9 relative. */
static int key_compare_by_hand(const double a[2], const double b[2]) {
    for (int i = 0; i < 2; i++) {
        double tol = 1e-9 * fmax(fabs(a[i]), fabs(b[i]));
        if (a[i] < b[i] - tol) return -1;
        if (a[i] > b[i] + tol) return 1;
    }
    return 0;
}

static void key_by_hand(const moira_cost_model_t *cost, const moira_target_t *target, double tokens,
                        double active, double out[2]) {
    out[0] = moira_cost_target_us(cost, target, tokens, active);
    out[1] = tokens / moira_target_peak_tflops(target, cost->weight_dtype);
}

/* The larger of the two targets' keys after w gives up `out_tokens` and `out_active` to t. */
static void pair_after(const moira_cost_model_t *cost, const moira_topology_t *topo, int w, int t,
                       const double *tokens, const double *active, double moved,
                       double moved_active, double out[2]) {
    double a[2], b[2];
    key_by_hand(cost, &topo->targets[w], tokens[w] - moved, active[w] - moved_active, a);
    key_by_hand(cost, &topo->targets[t], tokens[t] + moved, active[t] + moved_active, b);
    memcpy(out, key_compare_by_hand(a, b) >= 0 ? a : b, sizeof(a));
}

/* With one replica per expert the local search ends only when no replica of the busiest target
 * can move to a target with a free slot, or swap with a lighter replica elsewhere, so that the
 * larger key of the two targets falls. A scan of every such pair checks it on each layer. */
static void check_no_improving_pair(const char *topo_text, int64_t experts, const char *skew) {
    moira_topology_t t;
    CHECK_OK(moira_topology_parse(topo_text, strlen(topo_text), "topology.yaml", NULL, &t));
    char model_text[1024];
    snprintf(model_text, sizeof(model_text),
             "hidden_size: 7168\nmoe_intermediate_size: 2048\nnum_hidden_layers: 2\n"
             "first_k_dense_replace: 0\nnum_attention_heads: 128\nkv_lora_rank: 512\n"
             "qk_nope_head_dim: 128\nqk_rope_head_dim: 64\nv_head_dim: 128\n"
             "n_routed_experts: %lld\nnum_experts_per_tok: 4\nweight_dtype: fp8_e4m3\n",
             (long long)experts);
    moira_model_config_t m = parse_model(model_text);
    moira_profile_t p;
    CHECK_OK(moira_profile_synthesise(&m, skew, 4096, &p));
    moira_plan_t plan;
    CHECK_OK(plan_with(&t, &m, &p, 0, 0, MOIRA_PLAN_BALANCED, &plan));
    moira_cost_model_t cost;
    moira_cost_model_init(&m, &cost);
    int n = t.n_targets, moves = 0, swaps = 0, full = 0;
    double *tokens = calloc(n, sizeof(double));
    double *active = calloc(n, sizeof(double));
    int *count = calloc(n, sizeof(int));
    int64_t *capacity = calloc(n, sizeof(int64_t));
    for (int i = 0; i < n; i++) {
        bool usable = moira_target_peak_tflops(&t.targets[i], cost.weight_dtype) > 0 &&
                      t.targets[i].bandwidth_gbs > 0;
        capacity[i] =
            usable ? moira_plan_target_capacity(&t.targets[i], 2, (int64_t)cost.expert_bytes, 0)
                   : 0;
    }
    for (int l = 0; l < plan.n_layers; l++) {
        const moira_plan_layer_t *layer = &plan.layers[l];
        CHECK(layer->n_replicas == experts);
        memset(tokens, 0, n * sizeof(double));
        memset(active, 0, n * sizeof(double));
        memset(count, 0, n * sizeof(int));
        /* Expected reads: 1 - (1 - l/T)^T per replica, T the batch (the layer's load over k). */
        double batch = 0;
        for (int r = 0; r < layer->n_replicas; r++)
            batch += layer->replica_load[r] / 4;
        for (int r = 0; r < layer->n_replicas; r++) {
            int i = layer->replica_target[r];
            tokens[i] += layer->replica_load[r];
            active[i] += read_probability_by_hand(layer->replica_load[r], batch);
            count[i]++;
        }
        int w = -1;
        double worst[2] = {0, 0};
        for (int i = 0; i < n; i++) {
            if (capacity[i] <= 0) continue;
            double k[2];
            key_by_hand(&cost, &t.targets[i], tokens[i], active[i], k);
            if (w < 0 || key_compare_by_hand(k, worst) > 0) {
                w = i;
                memcpy(worst, k, sizeof(k));
            }
            full += count[i] == capacity[i];
        }
        for (int r = 0; r < layer->n_replicas; r++) {
            double lr = layer->replica_load[r];
            if (layer->replica_target[r] != w || lr <= 0) continue;
            for (int q = -1; q < layer->n_replicas; q++) {
                int to = q < 0 ? -1 : layer->replica_target[q];
                double lq = q < 0 ? 0 : layer->replica_load[q];
                if (to == w || lq >= lr) continue;
                for (int i = q < 0 ? 0 : to; i < (q < 0 ? n : to + 1); i++) {
                    if (i == w || capacity[i] <= 0 || (q < 0 && count[i] >= capacity[i])) continue;
                    double now[2], before[2], after[2];
                    key_by_hand(&cost, &t.targets[i], tokens[i], active[i], now);
                    memcpy(before, key_compare_by_hand(worst, now) >= 0 ? worst : now, sizeof(now));
                    pair_after(&cost, &t, w, i, tokens, active, lr - lq,
                               read_probability_by_hand(lr, batch) -
                                   read_probability_by_hand(lq, batch),
                               after);
                    bool improves = key_compare_by_hand(after, before) < 0;
                    moves += improves && q < 0;
                    swaps += improves && q >= 0;
                }
            }
        }
    }
    printf("  %s, %lld experts, %s: %d full targets; improving moves left %d, swaps left %d\n",
           t.name, (long long)experts, skew, full, moves, swaps);
    CHECK_MSG(moves == 0 && swaps == 0,
              "the search stopped with %d moves and %d swaps that improve", moves, swaps);
    free(tokens);
    free(active);
    free(count);
    free(capacity);
    moira_plan_free(&plan);
    moira_profile_free(&p);
    moira_topology_free(&t);
}

/* On the shipped 8-GPU node, which has room to spare (moves do the work), and on a node whose
 * three small GPUs hold 146 of the experts each, so that the search must swap. */
static void test_search_ends_at_local_optimum(void) {
    char path[512];
    snprintf(path, sizeof(path), "%s", CONFIGS "topologies/mi300x-8.yaml");
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f) return;
    char text[16384];
    size_t len = fread(text, 1, sizeof(text) - 1, f);
    text[len] = 0;
    fclose(f);
    check_no_improving_pair(text, 1024, "zipf:1");
    const char *small =
        "name: small-gpus\nhosts:\n  - name: h\n    numa_nodes:\n"
        "      - {id: 0, memory_gib: 768, bandwidth_gbs: 460.8, cores: 96, peak_tflops: {f32: 7.4, "
        "bf16: 14.7}}\n      - {id: 1, memory_gib: 768, bandwidth_gbs: 460.8, cores: 96, "
        "peak_tflops: {f32: 7.4, bf16: 14.7}}\n    devices:\n"
        "      - {name: g0, kind: gpu, backend: opencl, memory_gib: 12, bandwidth_gbs: 5300, "
        "peak_tflops: {fp8: 2614.9}, numa: 0, link_gbs: 64}\n"
        "      - {name: g1, kind: gpu, backend: opencl, memory_gib: 12, bandwidth_gbs: 3000, "
        "peak_tflops: {fp8: 1300}, numa: 0, link_gbs: 32}\n"
        "      - {name: g2, kind: gpu, backend: opencl, memory_gib: 12, bandwidth_gbs: 5300, "
        "peak_tflops: {fp8: 2614.9}, numa: 1, link_gbs: 64}\n";
    check_no_improving_pair(small, 1024, "zipf:1");
    check_no_improving_pair(small, 1024, "zipf:0.6");
}

/* A synthetic Zipf profile of 65536 experts (its rounding used to take a search over every
 * expert per token left over): whole tokens summing to T x k, and sorted, within one token of
 * the sorted exact shares T x k / r^S / sum(1 / i^S). */
/* Descending order for qsort. */
static int by_descending(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    return a < b ? 1 : a > b ? -1 : 0;
}

static void test_large_profile(void) {
    moira_model_config_t m = parse_model(
        "hidden_size: 64\nmoe_intermediate_size: 32\nnum_hidden_layers: 1\n"
        "num_attention_heads: 1\nkv_lora_rank: 8\nqk_nope_head_dim: 8\nqk_rope_head_dim: 8\n"
        "v_head_dim: 8\nn_routed_experts: 65536\nnum_experts_per_tok: 4\nweight_dtype: bf16\n");
    moira_profile_t p;
    CHECK_OK(moira_profile_synthesise(&m, "zipf:1", 4096, &p));
    const double *load = moira_profile_layer_load(&p, 0);
    enum { E = 65536 };
    double *sorted = malloc(E * sizeof(double)), sum = 0, harmonic = 0;
    for (int e = 0; e < E; e++) {
        sorted[e] = load[e];
        sum += load[e];
        harmonic += 1.0 / (e + 1);
    }
    CHECK_NEAR(sum, 4096.0 * 4, 1e-6);
    /* Expected loads: the expert of rank i expects its Zipf share 4096 x 4 / (i H) exactly (the
     * top share, 1404 tokens, is below the 4096 cap). */
    qsort(sorted, E, sizeof(double), by_descending);
    int far = 0;
    for (int i = 0; i < E; i++) {
        double want = 4096.0 * 4 / (i + 1) / harmonic;
        far += fabs(sorted[i] - want) > 1e-9 * want;
    }
    CHECK_MSG(far == 0, "%d experts off their Zipf share", far);
    free(sorted);
    moira_profile_free(&p);
}

int main(void) {
    test_cost_model();
    test_network_by_hand();
    test_eplb_example();
    test_heterogeneous();
    test_redundancy_never_hurts();
    test_decode_spreads();
    test_home();
    test_all_cpu_by_hand();
    test_caps();
    test_groups_and_determinism();
    test_replica_order();
    test_search_ends_at_local_optimum();
    test_large_profile();
    return moira_test_finish("test_placement_planner");
}
