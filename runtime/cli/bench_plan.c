/* `moira bench plan`: Moira's planner against EPLB's hierarchical policy (placement/eplb_peer.c)
 * on DeepSeek-V3 over 8 hosts x 8 GPUs with 64 redundant experts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/eplb_peer.h"
#include "placement/plan.h"
#include "runtime/cli/bench.h"
#include "runtime/cli/cli.h"

/* DeepSeek-V3's MoE shape, from its Hugging Face config.json (configs/models/deepseek-v3.yaml
 * has the whole file); --model replaces it. */
static const char deepseek_v3_moe[] =
    "name: deepseek-v3\nhidden_size: 7168\nnum_hidden_layers: 61\nfirst_k_dense_replace: 3\n"
    "intermediate_size: 18432\nn_routed_experts: 256\nn_shared_experts: 1\n"
    "moe_intermediate_size: 2048\nnum_experts_per_tok: 8\nn_group: 8\ntopk_group: 4\n"
    "scoring_func: sigmoid\nnum_attention_heads: 128\nq_lora_rank: 1536\nkv_lora_rank: 512\n"
    "qk_nope_head_dim: 128\nqk_rope_head_dim: 64\nv_head_dim: 128\nweight_dtype: fp8_e4m3\n";

#define BENCH_HOSTS 8
#define BENCH_GPUS_PER_HOST 8
#define BENCH_REDUNDANT 64

/* 8 hosts of 8 MI300X-class GPUs (configs/topologies/mi300x-8.yaml's figures) on a 400 GB/s
 * network. CPU memory is given 0 GiB so that, as in EPLB, only GPUs hold experts. Caller frees
 * the topology. */
static moira_status_t bench_topology(moira_topology_t *out) {
    size_t cap = 64 * 1024, used = 0;
    char *text = malloc(cap);
    if (!text) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    used += (size_t)snprintf(text + used, cap - used, "name: cluster-8x8\nhosts:\n");
    for (int h = 0; h < BENCH_HOSTS; h++) {
        used += (size_t)snprintf(text + used, cap - used,
                                 "  - name: node%d\n    numa_nodes: [{id: 0, memory_gib: 0, "
                                 "bandwidth_gbs: 460.8, cores: 96, peak_tflops: {f32: 7.4}}]\n"
                                 "    devices:\n",
                                 h);
        for (int g = 0; g < BENCH_GPUS_PER_HOST; g++)
            used += (size_t)snprintf(text + used, cap - used,
                                     "      - {name: n%dg%d, kind: gpu, backend: opencl, "
                                     "memory_gib: 178.8, bandwidth_gbs: 5300, peak_tflops: "
                                     "{f32: 163.4, bf16: 1307.4, fp8: 2614.9}, link_gbs: 64}\n",
                                     h, g);
    }
    used += (size_t)snprintf(text + used, cap - used,
                             "network: {bandwidth_gbs: 400, latency_us: 10}\n");
    moira_status_t status = moira_topology_parse(text, used, "cluster-8x8", NULL, out);
    free(text);
    return status;
}

typedef struct plan_result {
    const char *skew;
    double moira_seconds, moira_max_over_mean, moira_us;
    double eplb_seconds, eplb_max_over_mean;
} plan_result_t;

/* One skew: Moira's planner against the EPLB peer on the same loads. */
static moira_status_t run_plan_case(const moira_topology_t *topology,
                                    const moira_model_config_t *model, const char *skew,
                                    long long tokens, plan_result_t *out) {
    moira_profile_t profile;
    MOIRA_RETURN_IF_ERROR(moira_profile_synthesise(model, skew, tokens, &profile));
    int gpus = BENCH_HOSTS * BENCH_GPUS_PER_HOST;
    int experts = (int)model->n_routed_experts, replicas = experts + BENCH_REDUNDANT;
    moira_plan_options_t options = {BENCH_REDUNDANT, replicas / gpus, MOIRA_PLAN_BALANCED};
    moira_plan_t plan;
    double start = moira_bench_seconds();
    moira_status_t status = moira_plan_make(topology, model, &profile, &options, &plan);
    out->moira_seconds = moira_bench_seconds() - start;
    if (status) {
        moira_profile_free(&profile);
        return status;
    }
    moira_plan_summary_t summary;
    moira_plan_summarise(&plan, &summary);
    out->moira_max_over_mean = summary.max_over_mean;
    out->moira_us = summary.predicted_us_per_layer;
    moira_plan_free(&plan);
    double gpu_load[BENCH_HOSTS * BENCH_GPUS_PER_HOST], sum = 0;
    start = moira_bench_seconds();
    for (int l = 0; !status && l < profile.n_layers; l++) {
        double mm = 0;
        status = moira_eplb_hierarchical(profile.load + (size_t)l * experts, experts, replicas,
                                         (int)model->n_group, BENCH_HOSTS, BENCH_GPUS_PER_HOST,
                                         gpu_load, &mm);
        sum += mm;
    }
    out->eplb_seconds = moira_bench_seconds() - start;
    out->eplb_max_over_mean = profile.n_layers ? sum / profile.n_layers : 0;
    out->skew = skew;
    moira_profile_free(&profile);
    return status;
}

/* Plans DeepSeek-V3 on the 8 x 8 cluster for three skews and prints Moira next to EPLB. */
int moira_bench_plan(const moira_bench_args_t *args) {
    moira_model_config_t model;
    moira_status_t status =
        args->model ? moira_model_config_load(args->model, &model)
                    : moira_model_config_parse_string(deepseek_v3_moe, strlen(deepseek_v3_moe),
                                                      "deepseek-v3", &model);
    moira_topology_t topology;
    memset(&topology, 0, sizeof(topology));
    if (!status) status = bench_topology(&topology);
    long long tokens = args->tokens > 0 ? args->tokens : 65536;
    static const char *const skews[] = {"zipf:0.5", "zipf:1", "zipf:1.5"};
    plan_result_t results[3];
    for (int i = 0; !status && i < 3; i++)
        status = run_plan_case(&topology, &model, skews[i], tokens, &results[i]);
    moira_topology_free(&topology);
    if (status) return moira_status_report(status);
    int layers = (int)moira_model_config_moe_layer_count(&model);
    if (args->json) {
        printf("{\"bench\": \"plan\", \"model\": ");
        moira_cli_json_string(stdout, model.name);
        printf(", \"moe_layers\": %d, \"experts\": %lld, \"redundant\": %d, \"hosts\": %d, "
               "\"gpus_per_host\": %d, \"tokens\": %lld, \"cases\": [",
               layers, (long long)model.n_routed_experts, BENCH_REDUNDANT, BENCH_HOSTS,
               BENCH_GPUS_PER_HOST, tokens);
        for (int i = 0; i < 3; i++)
            printf("%s{\"skew\": \"%s\", \"moira_seconds\": %.6f, \"moira_max_over_mean\": %.6f, "
                   "\"moira_predicted_us_per_layer\": %.3f, \"eplb_seconds\": %.6f, "
                   "\"eplb_max_over_mean\": %.6f}",
                   i ? ", " : "", results[i].skew, results[i].moira_seconds,
                   results[i].moira_max_over_mean, results[i].moira_us, results[i].eplb_seconds,
                   results[i].eplb_max_over_mean);
        printf("]}\n");
    } else {
        printf("bench plan: %s, %d MoE layers x %lld experts + %d redundant, %d hosts x %d GPUs, "
               "%lld tokens per batch\n",
               model.name, layers, (long long)model.n_routed_experts, BENCH_REDUNDANT, BENCH_HOSTS,
               BENCH_GPUS_PER_HOST, tokens);
        printf("%-10s %12s %14s %14s %12s %10s\n", "SKEW", "MOIRA S", "MOIRA MAX/MEAN",
               "EPLB MAX/MEAN", "EPLB S", "PRED US");
        for (int i = 0; i < 3; i++)
            printf("%-10s %12.3f %14.4f %14.4f %12.4f %10.1f\n", results[i].skew,
                   results[i].moira_seconds, results[i].moira_max_over_mean,
                   results[i].eplb_max_over_mean, results[i].eplb_seconds, results[i].moira_us);
    }
    return 0;
}
