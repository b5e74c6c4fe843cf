/* Placement inputs: topology files (the shipped configs load with their authors' figures; every
 * kind of malformed file is an INVALID_INPUT at the offending value's file:line:col), discovery
 * of the local machine, and expert load profiles (read, validated, synthesised). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "placement/profile.h"
#include "placement/topology.h"
#include "tests/unit/testing.h"

#define CONFIGS MOIRA_TEST_DATA_DIR "/../../configs/"

/* A small valid topology; tests replace one line to break it. Line numbers are 1-based. */
static const char *const base_topology[] = {
    "name: t",                                                                              /* 1 */
    "hosts:",                                                                               /* 2 */
    "  - name: h0",                                                                         /* 3 */
    "    numa_nodes:",                                                                      /* 4 */
    "      - {id: 0, memory_gib: 64, bandwidth_gbs: 100, cores: 8, peak_tflops: {f32: 1}}", /* 5 */
    "      - {id: 1, memory_gib: 64, bandwidth_gbs: 100, cores: 8, peak_tflops: {f32: 1}}", /* 6 */
    "    devices:",                                                                         /* 7 */
    "      - {name: g0, kind: gpu, backend: opencl, memory_gib: 16, bandwidth_gbs: 900,",   /* 8 */
    "         peak_tflops: {f32: 20, bf16: 80}, numa: 1, link_gbs: 32}",                    /* 9 */
    "      - {name: n0, kind: npu, backend: npu, memory_gib: 32, bandwidth_gbs: 1600,",     /* 10 */
    "         peak_tflops: {bf16: 300}, numa: 0, link_gbs: 32}",                            /* 11 */
    "links: [{between: [g0, n0], bandwidth_gbs: 32}]",                                      /* 12 */
};
#define BASE_LINES (int)(sizeof(base_topology) / sizeof(base_topology[0]))

/* Joins the base lines, with line `replace` (1-based; 0 none) swapped for `with`. */
static char *topology_text(int replace, const char *with) {
    static char text[8192];
    size_t used = 0;
    for (int i = 0; i < BASE_LINES; i++)
        used += (size_t)snprintf(text + used, sizeof(text) - used, "%s\n",
                                 i + 1 == replace ? with : base_topology[i]);
    return text;
}

/* Expects INVALID_INPUT located at `line` and at the column where `token` starts on that line
 * of the text (found independently of the parser, by searching the text). */
static void expect_topology_error(int replace, const char *with, int line, const char *token) {
    const char *text = topology_text(replace, with);
    const char *line_start = text;
    for (int l = 1; l < line; l++)
        line_start = strchr(line_start, '\n') + 1;
    const char *at = strstr(line_start, token);
    /* A token starting with a space names the value after that space. */
    int column = at ? (int)(at - line_start) + 1 + (token[0] == ' ') : -1;
    char expected[64];
    snprintf(expected, sizeof(expected), "bad.yaml:%d:%d: ", line, column);
    moira_topology_t topology;
    moira_status_t status = moira_topology_parse(text, strlen(text), "bad.yaml", NULL, &topology);
    CHECK_MSG(moira_status_code(status) == MOIRA_CODE_INVALID_INPUT, "line %d: %s -> %s", line,
              with, moira_status_message(status));
    CHECK_MSG(strncmp(moira_status_message(status), expected, strlen(expected)) == 0,
              "expected %s..., got %s", expected, moira_status_message(status));
    printf("  rejected: %s\n", moira_status_message(status));
    moira_status_free(status);
}

static void test_valid_topology(void) {
    const char *text = topology_text(0, NULL);
    moira_topology_t t;
    CHECK_OK(moira_topology_parse(text, strlen(text), "ok.yaml", NULL, &t));
    CHECK(!strcmp(t.name, "t"));
    CHECK(t.n_hosts == 1 && t.n_targets == 4 && t.n_links == 1);
    CHECK(!strcmp(t.targets[0].name, "h0/numa0") && t.targets[0].kind == MOIRA_TARGET_NUMA);
    CHECK(t.targets[0].memory_bytes == 64ull << 30);
    CHECK(!strcmp(t.targets[2].name, "g0") && t.targets[2].numa == 1);
    CHECK(t.targets[2].memory_bytes == 16ull << 30);
    CHECK(t.targets[2].peak_tflops[MOIRA_DTYPE_BF16] == 80);
    CHECK(t.targets[3].kind == MOIRA_TARGET_NPU && t.targets[3].link_gbs == 32);
    /* fp8 weights are widened to the best dtype the target has. */
    CHECK(moira_target_peak_tflops(&t.targets[2], MOIRA_DTYPE_F8_E4M3) == 80);
    CHECK(moira_target_peak_tflops(&t.targets[0], MOIRA_DTYPE_F8_E4M3) == 1);
    CHECK(t.links[0].a == 2 && t.links[0].b == 3);
    moira_topology_free(&t);
}

static void test_malformed_topologies(void) {
    /* The host memory's backend is not a device's; other names are checked against the
     * registered backends when the caller gives them (below), not against a list here. */
    expect_topology_error(8,
                          "      - {name: g0, kind: gpu, backend: cpu, memory_gib: 16, "
                          "bandwidth_gbs: 900,",
                          8, "cpu");
    const char *cuda = topology_text(8, "      - {name: g0, kind: gpu, backend: cuda, "
                                        "memory_gib: 16, bandwidth_gbs: 900,");
    static const char *const registered[] = {"cpu", "opencl"};
    moira_discovery_devices_t none = {NULL, 0, registered, 2, false};
    moira_topology_t t;
    moira_status_t status = moira_topology_parse(cuda, strlen(cuda), "bad.yaml", &none, &t);
    CHECK_MSG(moira_status_code(status) == MOIRA_CODE_INVALID_INPUT &&
                  !strcmp(moira_status_message(status),
                          "bad.yaml:8:40: unknown backend \"cuda\" (this build has cpu, opencl)"),
              "got %s", moira_status_message(status));
    moira_status_free(status);
    expect_topology_error(8,
                          "      - {name: g0, kind: gpu, backend: opencl, memory_gib: -16, "
                          "bandwidth_gbs: 900,",
                          8, "-16");
    expect_topology_error(10,
                          "      - {name: g0, kind: npu, backend: npu, memory_gib: 32, "
                          "bandwidth_gbs: 1600,",
                          10, "g0");
    expect_topology_error(12, "links: [{between: [g0, gpu7], bandwidth_gbs: 32}]", 12, "gpu7");
    expect_topology_error(9, "         peak_tflops: {f32: 20, bf16: 80}, numa: 2, link_gbs: 32}", 9,
                          "2,");
    expect_topology_error(6,
                          "      - {id: 0, memory_gib: 64, bandwidth_gbs: 100, cores: 8, "
                          "peak_tflops: {f32: 1}}",
                          6, "0,");
    expect_topology_error(11, "         peak_tflops: {bf16: 300}, numa: 0, link_gbs: 32, speed: 1}",
                          11, "speed");
    expect_topology_error(11, "         peak_tflops: {bf16: 300}, numa: 0, link_gbs: 0}", 11,
                          " 0}");
    expect_topology_error(11, "         peak_tflops: {bf17: 300}, numa: 0, link_gbs: 32}", 11,
                          "bf17");
    expect_topology_error(5, "      - {id: 0, memory_gib: 64, bandwidth_gbs: 100, cores: 8", 6,
                          "{id");
    expect_topology_error(12, "links: [{between: [g0, g0], bandwidth_gbs: 32}]", 12, "[g0");
    expect_topology_error(8,
                          "      - {name: g0, kind: tpu, backend: opencl, memory_gib: 16, "
                          "bandwidth_gbs: 900,",
                          8, "tpu");
    /* Two hosts need a network; the error points at the top-level mapping. */
    const char *two =
        "name: x\nhosts:\n  - name: a\n    numa_nodes: [{id: 0, memory_gib: 1, bandwidth_gbs: 1, "
        "cores: 1, peak_tflops: {f32: 1}}]\n  - name: b\n    numa_nodes: [{id: 0, memory_gib: 1, "
        "bandwidth_gbs: 1, cores: 1, peak_tflops: {f32: 1}}]\n";
    status = moira_topology_parse(two, strlen(two), "two.yaml", NULL, &t);
    CHECK(moira_status_code(status) == MOIRA_CODE_INVALID_INPUT);
    CHECK(strstr(moira_status_message(status), "two.yaml:1:1: ") != NULL);
    CHECK(strstr(moira_status_message(status), "network") != NULL);
    moira_status_free(status);
    /* Duplicate host names. */
    const char *dup =
        "name: x\nhosts:\n  - name: a\n    numa_nodes: [{id: 0, memory_gib: 1, bandwidth_gbs: 1, "
        "cores: 1, peak_tflops: {f32: 1}}]\n  - name: a\n    numa_nodes: []\n"
        "network: {bandwidth_gbs: 1}\n";
    status = moira_topology_parse(dup, strlen(dup), "dup.yaml", NULL, &t);
    CHECK(strstr(moira_status_message(status), "dup.yaml:5:11: duplicate host") != NULL);
    moira_status_free(status);
    CHECK_CODE(moira_topology_load("/nonexistent/topology.yaml", NULL, &t), MOIRA_CODE_NOT_FOUND);
}

/* Every shipped topology loads, with figures checked against the public specifications that its
 * comments quote. */
static void test_shipped_topologies(void) {
    moira_topology_t t;
    CHECK_OK(moira_topology_load(CONFIGS "topologies/mi300x-8.yaml", NULL, &t));
    CHECK(t.n_targets == 10 && t.n_links == 28);
    int g = moira_topology_find_target(&t, "gpu5");
    CHECK(g >= 0 && t.targets[g].bandwidth_gbs == 5300 && t.targets[g].numa == 1);
    CHECK(t.targets[g].peak_tflops[MOIRA_DTYPE_BF16] == 1307.4);
    moira_topology_free(&t);
    CHECK_OK(moira_topology_load(CONFIGS "topologies/ascend-910b-8.yaml", NULL, &t));
    CHECK(t.n_targets == 12);
    g = moira_topology_find_target(&t, "npu7");
    CHECK(g >= 0 && t.targets[g].kind == MOIRA_TARGET_NPU && t.targets[g].numa == 3);
    moira_topology_free(&t);
    CHECK_OK(moira_topology_load(CONFIGS "topologies/intel-gpu-xeon.yaml", NULL, &t));
    CHECK(t.n_targets == 3);
    moira_topology_free(&t);
    CHECK_OK(moira_topology_load(CONFIGS "topologies/mixed-amd-ascend-ddr.yaml", NULL, &t));
    CHECK(t.n_targets == 5);
    moira_topology_free(&t);
    CHECK_OK(moira_topology_load(CONFIGS "topologies/two-host-mi300x.yaml", NULL, &t));
    CHECK(t.n_hosts == 2 && t.n_targets == 20 && t.network_gbs == 400);
    CHECK(t.targets[moira_topology_find_target(&t, "n1gpu0")].host == 1);
    moira_topology_free(&t);
}

/* Discovery: the local machine has at least one NUMA node with memory and cores, named after
 * the host; a fake accelerator joins with its reported figures; a cpu device lends its peak. */
static void test_discovery(void) {
    moira_device_info_t infos[2];
    memset(infos, 0, sizeof(infos));
    snprintf(infos[0].name, sizeof(infos[0].name), "cpu:0");
    snprintf(infos[0].backend, sizeof(infos[0].backend), "cpu");
    infos[0].kind = MOIRA_DEVICE_KIND_CPU;
    infos[0].peak_tflops[MOIRA_DTYPE_F32] = 2.0;
    snprintf(infos[1].name, sizeof(infos[1].name), "npu:0");
    snprintf(infos[1].backend, sizeof(infos[1].backend), "npu");
    infos[1].kind = MOIRA_DEVICE_KIND_NPU;
    infos[1].memory_bytes = 1ull << 30;
    infos[1].bandwidth_gbs = 100;
    infos[1].peak_tflops[MOIRA_DTYPE_BF16] = 10;
    infos[1].numa_node = -1;
    moira_discovery_devices_t devices = {infos, 2, NULL, 0, false};
    moira_topology_t t;
    CHECK_OK(moira_topology_discover_local(&devices, &t));
    CHECK(t.n_hosts == 1 && t.n_targets >= 2);
    double cpu_peak = 0;
    int numa = 0;
    for (int i = 0; i < t.n_targets; i++) {
        const moira_target_t *target = &t.targets[i];
        if (target->kind != MOIRA_TARGET_NUMA) continue;
        numa++;
        CHECK(target->memory_bytes > 0 && target->cores > 0 && target->bandwidth_gbs > 0);
        CHECK(strncmp(target->name, t.hosts[0].name, strlen(t.hosts[0].name)) == 0);
        cpu_peak += target->peak_tflops[MOIRA_DTYPE_F32];
    }
    CHECK(numa >= 1);
    CHECK_NEAR(cpu_peak, 2.0, 1e-9); /* shares of the cpu device's peak add up to it */
    int n = moira_topology_find_target(&t, "npu:0");
    CHECK(n >= 0 && t.targets[n].kind == MOIRA_TARGET_NPU && t.targets[n].bandwidth_gbs == 100);
    CHECK(t.targets[n].numa >= 0 && !strcmp(t.targets[n].select, "npu:0"));
    moira_topology_free(&t);
    /* An emulated device stays out unless asked for; then it is costed as the host's CPU
     * memory targets together (their bandwidth, the cpu device's 2 TFLOP/s), not as reported. */
    infos[1].emulated = true;
    CHECK_OK(moira_topology_discover_local(&devices, &t));
    CHECK(moira_topology_find_target(&t, "npu:0") < 0);
    double numa_bandwidth = 0;
    for (int i = 0; i < t.n_targets; i++)
        numa_bandwidth += t.targets[i].kind == MOIRA_TARGET_NUMA ? t.targets[i].bandwidth_gbs : 0;
    double host_bytes = 0;
    for (int i = 0; i < t.n_targets; i++)
        host_bytes +=
            t.targets[i].kind == MOIRA_TARGET_NUMA ? (double)t.targets[i].memory_bytes : 0;
    moira_topology_free(&t);
    devices.with_emulated = true;
    CHECK_OK(moira_topology_discover_local(&devices, &t));
    n = moira_topology_find_target(&t, "npu:0");
    CHECK(n >= 0 && t.targets[n].bandwidth_gbs == numa_bandwidth &&
          moira_target_peak_tflops(&t.targets[n], MOIRA_DTYPE_BF16) == 2.0);
    /* Its memory is the host's: the NUMA targets and it share the host's bytes, not twice. */
    double shared = 0;
    for (int i = 0; i < t.n_targets; i++)
        if (t.targets[i].kind == MOIRA_TARGET_NUMA || i == n)
            shared += (double)t.targets[i].memory_bytes;
    CHECK(n >= 0 && t.targets[n].emulated && t.targets[n].memory_bytes > 0);
    CHECK_MSG(shared <= host_bytes && shared > host_bytes - 16, "%.0f of %.0f", shared, host_bytes);
    moira_topology_free(&t);
    /* Alone (run --backend npu:0) it is costed as the host too: one DDR channel (25.6 GB/s)
     * and 0.064 TFLOP/s per online core, not the 100 GB/s it reports. */
    CHECK_OK(moira_topology_for_device(&infos[1], &t));
    double cores = (double)sysconf(_SC_NPROCESSORS_ONLN);
    CHECK(t.n_targets == 1 && t.targets[0].bandwidth_gbs == 25.6);
    CHECK_NEAR(moira_target_peak_tflops(&t.targets[0], MOIRA_DTYPE_BF16), 0.064 * cores, 1e-12);
    moira_topology_free(&t);
    devices.with_emulated = false;
    infos[1].emulated = false;
    /* A topology host with discover: true is filled the same way. */
    const char *text = "name: d\nhosts:\n  - {name: here, discover: true}\n";
    CHECK_OK(moira_topology_parse(text, strlen(text), "d.yaml", &devices, &t));
    CHECK(t.n_targets >= 2 && strncmp(t.targets[0].name, "here/numa", 9) == 0);
    moira_topology_free(&t);
    CHECK_OK(moira_topology_load(CONFIGS "topologies/local-cpu.yaml", NULL, &t));
    CHECK(t.n_targets >= 1 && t.targets[0].kind == MOIRA_TARGET_NUMA);
    moira_topology_free(&t);
}

/* DESIGN.md §5's example topology, verbatim: two hosts, the second discovered. */
static void test_design_example(void) {
    const char *text =
        "name: mixed-box\n"
        "hosts:\n"
        "  - name: node0\n"
        "    numa_nodes:\n"
        "      - {id: 0, memory_gib: 512, bandwidth_gbs: 200, cores: 32, peak_tflops: {f32: 2.5, "
        "bf16: 10}}\n"
        "    devices:\n"
        "      - {name: gpu0, kind: gpu, backend: opencl, select: \"opencl:0\", memory_gib: 192,\n"
        "         bandwidth_gbs: 5300, peak_tflops: {f32: 163, bf16: 1307}, numa: 0, link_gbs: "
        "64}\n"
        "      - {name: npu0, kind: npu, backend: npu, memory_gib: 64, bandwidth_gbs: 1600,\n"
        "         peak_tflops: {bf16: 354}, numa: 0, link_gbs: 32}\n"
        "  - name: node1\n"
        "    discover: true          # fill NUMA nodes and devices of the local machine\n"
        "links:   [{between: [gpu0, npu0], bandwidth_gbs: 32}]\n"
        "network: {bandwidth_gbs: 50, latency_us: 10}\n";
    moira_topology_t t;
    CHECK_OK(moira_topology_parse(text, strlen(text), "design.yaml", NULL, &t));
    CHECK(t.n_hosts == 2 && t.hosts[1].discovered && !t.hosts[0].discovered);
    CHECK(moira_topology_find_target(&t, "node0/numa0") == 0);
    CHECK(!strcmp(t.targets[1].select, "opencl:0") && t.targets[1].memory_bytes == 192ull << 30);
    CHECK(moira_topology_find_target(&t, "node1/numa0") >= 0);
    CHECK(t.network_gbs == 50 && t.network_latency_us == 10);
    moira_topology_free(&t);
}

static moira_model_config_t small_model(void) {
    const char *text = "name: small\nhidden_size: 64\nmoe_intermediate_size: 32\n"
                       "num_hidden_layers: 4\nfirst_k_dense_replace: 1\nintermediate_size: 128\n"
                       "num_attention_heads: 2\nkv_lora_rank: 16\nqk_nope_head_dim: 8\n"
                       "qk_rope_head_dim: 8\nv_head_dim: 8\nn_routed_experts: 8\n"
                       "num_experts_per_tok: 2\nweight_dtype: bf16\n";
    moira_model_config_t model;
    moira_status_t status = moira_model_config_parse_string(text, strlen(text), "small", &model);
    CHECK_OK(status);
    return model;
}

static void test_profiles(void) {
    moira_model_config_t model = small_model();
    const char *text = "moira_profile: 1\nexperts: 8\nlayers:\n"
                       "  - {layer: 1, load: [1, 2, 3, 4, 5, 6, 7, 8]}\n"
                       "  - {layer: 3, load: [3, 2, 1, 0, 5, 6, 7, 0]}\n";
    moira_profile_t p;
    CHECK_OK(moira_profile_parse(text, strlen(text), "p.yaml", &model, &p));
    CHECK(p.n_layers == 3 && p.experts == 8);
    CHECK(moira_profile_layer_load(&p, 1)[7] == 8);
    CHECK(moira_profile_layer_load(&p, 0) == NULL); /* a dense layer */
    /* Layer 2 was left out: it gets the mean of layers 1 and 3. */
    const double *mean = moira_profile_layer_load(&p, 2);
    CHECK(mean[0] == 2 && mean[3] == 2 && mean[7] == 4);
    moira_profile_free(&p);

    struct {
        const char *text;
        const char *where;
    } bad[] = {
        {"moira_profile: 1\nexperts: 9\nlayers: []\n", "p.yaml:2:10: "},
        {"moira_profile: 1\nexperts: 8\nlayers:\n  - {layer: 0, load: [1,2,3,4,5,6,7,8]}\n",
         "p.yaml:4:13: "},
        {"moira_profile: 1\nexperts: 8\nlayers:\n  - {layer: 1, load: [1,2,3,4,5,6,7]}\n",
         "p.yaml:4:22: "},
        {"moira_profile: 1\nexperts: 8\nlayers:\n  - {layer: 1, load: [1,2,-3,4,5,6,7,8]}\n",
         "p.yaml:4:27: "},
        {"moira_profile: 2\nexperts: 8\nlayers: []\n", "p.yaml:1:16: "},
        {"moira_profile: 1\nexperts: 8\nlayers:\n  - {layer: 1, load: [1,2,3,4,5,6,7,8]}\n"
         "  - {layer: 1, load: [1,2,3,4,5,6,7,8]}\n",
         "p.yaml:5:13: "},
        {"moira_profile: 1\nexperts: 8\nlayers: [{layer: 1, load: [1, 2}\n", "p.yaml:3:"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        moira_status_t status =
            moira_profile_parse(bad[i].text, strlen(bad[i].text), "p.yaml", &model, &p);
        CHECK_MSG(
            moira_status_code(status) == MOIRA_CODE_INVALID_INPUT &&
                strncmp(moira_status_message(status), bad[i].where, strlen(bad[i].where)) == 0,
            "case %zu: expected %s..., got %s", i, bad[i].where, moira_status_message(status));
        printf("  rejected: %s\n", moira_status_message(status));
        moira_status_free(status);
    }
}

/* Descending order for qsort. */
static int by_double_descending(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    return a < b ? 1 : a > b ? -1 : 0;
}

static void test_synthesised_profiles(void) {
    moira_model_config_t model = small_model();
    moira_profile_t p;
    CHECK_OK(moira_profile_synthesise(&model, "uniform", 1000, &p));
    CHECK(p.n_layers == 3 && p.layers[0] == 1 && p.layers[2] == 3);
    /* 1000 tokens x k=2 over 8 experts: exactly 250 each. */
    for (int e = 0; e < 8; e++)
        CHECK(p.load[e] == 250);
    moira_profile_free(&p);
    CHECK_OK(moira_profile_synthesise(&model, "zipf:1", 1000, &p));
    for (int r = 0; r < p.n_layers; r++) {
        const double *load = p.load + (size_t)r * 8;
        double sum = 0, max = 0;
        for (int e = 0; e < 8; e++) {
            sum += load[e];
            if (load[e] > max) max = load[e];
        }
        CHECK_NEAR(sum, 2000, 1e-9);
        /* Zipf(1) over 8 ranks: the top share is 1 / H_8 = 1 / 2.717857 = 0.367937. */
        CHECK_NEAR(max, 2000 * 0.367937, 1.0);
    }
    /* Deterministic, and different layers have different hot experts. */
    moira_profile_t again;
    CHECK_OK(moira_profile_synthesise(&model, "zipf:1", 1000, &again));
    CHECK(memcmp(p.load, again.load, sizeof(double) * 8 * 3) == 0);
    CHECK(memcmp(p.load, p.load + 8, sizeof(double) * 8) != 0);
    moira_profile_free(&again);
    moira_profile_free(&p);
    /* Zipf(3): shares 1/r^3, H = sum over r = 1..8 = 1.195160. Uncapped, the top expert would get
     * 2000 / H = 1673 of 1000 tokens; it gets the batch, 1000, and the other 1000 are shared
     * in proportion: rank r gets 1000 r^-3 / (H - 1) (rank 2: 1000 x 0.125 / 0.195160 = 640.5). */
    CHECK_OK(moira_profile_synthesise(&model, "zipf:3", 1000, &p));
    double h = 0;
    for (int r = 1; r <= 8; r++)
        h += pow(r, -3.0);
    for (int r = 0; r < p.n_layers; r++) {
        const double *load = p.load + (size_t)r * 8;
        double sorted[8], sum = 0;
        for (int e = 0; e < 8; e++) {
            sorted[e] = load[e];
            sum += load[e];
        }
        qsort(sorted, 8, sizeof(double), by_double_descending);
        CHECK_NEAR(sum, 2000, 1e-9);
        CHECK(sorted[0] == 1000);
        for (int rank = 2; rank <= 8; rank++)
            CHECK_NEAR(sorted[rank - 1], 1000 * pow(rank, -3.0) / (h - 1), 1e-9);
    }
    moira_profile_free(&p);
    /* One token, k = 2: expected loads (fractions), none above the token, summing to 2; the
     * top expert expects the whole token, the second 1 x 2^-10 / (H_10(8) - 1) of the rest. */
    CHECK_OK(moira_profile_synthesise(&model, "zipf:10", 1, &p));
    double h10 = 0;
    for (int r = 2; r <= 8; r++)
        h10 += pow(r, -10.0);
    for (int r = 0; r < p.n_layers; r++) {
        double sorted[8], sum = 0;
        for (int e = 0; e < 8; e++) {
            sorted[e] = p.load[(size_t)r * 8 + e];
            sum += sorted[e];
        }
        qsort(sorted, 8, sizeof(double), by_double_descending);
        CHECK_NEAR(sum, 2, 1e-12);
        CHECK(sorted[0] == 1);
        CHECK_NEAR(sorted[1], pow(2, -10.0) / h10, 1e-12);
    }
    moira_profile_free(&p);
    CHECK_CODE(moira_profile_synthesise(&model, "zipf:x", 1000, &p), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK_CODE(moira_profile_synthesise(&model, "pareto", 1000, &p), MOIRA_CODE_INVALID_ARGUMENT);
}

/* Every prefix of a valid topology and of a valid profile loads or fails with a located input
 * error; nothing crashes (the suite also runs under the sanitizers). */
static void test_truncated_inputs(void) {
    const char *text = topology_text(0, NULL);
    size_t len = strlen(text);
    int failures = 0;
    for (size_t n = 0; n <= len; n++) {
        moira_topology_t t;
        moira_status_t status = moira_topology_parse(text, n, "cut.yaml", NULL, &t);
        if (!status) {
            moira_topology_free(&t);
            continue;
        }
        if (moira_status_code(status) != MOIRA_CODE_INVALID_INPUT ||
            strncmp(moira_status_message(status), "cut.yaml:", 9) != 0) {
            failures++;
            printf("  prefix %zu: %s\n", n, moira_status_message(status));
        }
        moira_status_free(status);
    }
    CHECK(failures == 0);
    moira_model_config_t model = small_model();
    const char *profile = "moira_profile: 1\nexperts: 8\nlayers:\n"
                          "  - {layer: 1, load: [1, 2, 3, 4, 5, 6, 7, 8]}\n"
                          "  - layer: 2\n    load: [3, 2, 1, 0, 5, 6, 7, 0]\n";
    failures = 0;
    for (size_t n = 0; n <= strlen(profile); n++) {
        moira_profile_t p;
        moira_status_t status = moira_profile_parse(profile, n, "cut.yaml", &model, &p);
        if (!status) {
            moira_profile_free(&p);
            continue;
        }
        failures += moira_status_code(status) != MOIRA_CODE_INVALID_INPUT ||
                    strncmp(moira_status_message(status), "cut.yaml:", 9) != 0;
        moira_status_free(status);
    }
    CHECK(failures == 0);
}

int main(void) {
    test_valid_topology();
    test_malformed_topologies();
    test_shipped_topologies();
    test_design_example();
    test_discovery();
    test_profiles();
    test_synthesised_profiles();
    test_truncated_inputs();
    return moira_test_finish("test_placement_inputs");
}
