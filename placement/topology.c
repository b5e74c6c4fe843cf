/* Topology files (DESIGN.md §5): parsing and validation. Discovery lives in discover.c. */
#include "placement/topology.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/yaml_doc.h"

#define GIB 1073741824.0
/* No machine has an exabyte of memory per device; larger values are typos. */
#define MAX_MEMORY_GIB 1.0e9

const char *moira_target_kind_name(moira_target_kind_t kind) {
    switch (kind) {
    case MOIRA_TARGET_NUMA:
        return "numa";
    case MOIRA_TARGET_GPU:
        return "gpu";
    case MOIRA_TARGET_NPU:
        return "npu";
    }
    return "?";
}

void moira_topology_free(moira_topology_t *topology) {
    free(topology->hosts);
    free(topology->targets);
    free(topology->links);
    memset(topology, 0, sizeof(*topology));
}

int moira_topology_find_target(const moira_topology_t *topology, const char *name) {
    for (int i = 0; i < topology->n_targets; i++)
        if (!strcmp(topology->targets[i].name, name)) return i;
    return -1;
}

/* A peak table's figure for `weight_dtype`, widening as moira_target_peak_tflops says. */
static double peak_of(const double *peaks, moira_dtype_t weight_dtype) {
    if (weight_dtype < MOIRA_DTYPE_COUNT && peaks[weight_dtype] > 0) return peaks[weight_dtype];
    static const moira_dtype_t widening[] = {MOIRA_DTYPE_BF16, MOIRA_DTYPE_F16, MOIRA_DTYPE_F32};
    for (size_t i = 0; i < sizeof(widening) / sizeof(widening[0]); i++)
        if (peaks[widening[i]] > 0) return peaks[widening[i]];
    return 0;
}

/* Measured throughput first: what the device delivered beats what its data sheet says. */
double moira_target_peak_tflops(const moira_target_t *target, moira_dtype_t weight_dtype) {
    double measured = peak_of(target->measured.tflops, weight_dtype);
    return measured > 0 ? measured : peak_of(target->peak_tflops, weight_dtype);
}

/* Measured bandwidth first, as for the peak. */
double moira_target_bandwidth_gbs(const moira_target_t *target) {
    return target->measured.bandwidth_gbs > 0 ? target->measured.bandwidth_gbs
                                              : target->bandwidth_gbs;
}

/* CPU memory has no link (its activations are already there), whatever a file says. */
double moira_target_link_gbs(const moira_target_t *target) {
    if (target->kind == MOIRA_TARGET_NUMA) return 0;
    return target->measured.link_gbs > 0 ? target->measured.link_gbs : target->link_gbs;
}

/* The array grows by doubling; a topology has at most a few hundred targets. */
moira_status_t moira_topology_add_target(moira_topology_t *topology, const moira_target_t *target) {
    if (topology->n_targets == topology->targets_capacity) {
        int cap = topology->targets_capacity ? topology->targets_capacity * 2 : 16;
        moira_target_t *grown = realloc(topology->targets, (size_t)cap * sizeof(*grown));
        if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "topology: out of memory");
        topology->targets = grown;
        topology->targets_capacity = cap;
    }
    topology->targets[topology->n_targets++] = *target;
    return MOIRA_OK_STATUS;
}

typedef struct parse_ctx {
    moira_yaml_doc_t *doc;
    moira_topology_t *topology;
    const moira_discovery_devices_t *devices;
} parse_ctx_t;

/* `peak_tflops: {f32: 2.5, bf16: 10}` (or measured `tflops:`, named `what` in messages); keys are
 * Moira's dtype names (fp8 for fp8_e4m3). */
static moira_status_t parse_peaks(parse_ctx_t *ctx, const yaml_node_t *node, const char *what,
                                  double *peaks) {
    moira_yaml_doc_t *doc = ctx->doc;
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, node, what));
    static const char *const keys[] = {"f32", "f16", "bf16", "fp8", "fp8_e4m3", NULL};
    static const moira_dtype_t dtypes[] = {MOIRA_DTYPE_F32, MOIRA_DTYPE_F16, MOIRA_DTYPE_BF16,
                                           MOIRA_DTYPE_F8_E4M3, MOIRA_DTYPE_F8_E4M3};
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, node, keys));
    bool any = false;
    for (int k = 0; keys[k]; k++) {
        yaml_node_t *value = moira_yaml_get(doc, node, keys[k]);
        if (!value) continue;
        char name[48];
        snprintf(name, sizeof(name), "%s.%s", what, keys[k]);
        MOIRA_RETURN_IF_ERROR(moira_yaml_number(doc, value, name, 0, &peaks[dtypes[k]]));
        any = any || peaks[dtypes[k]] > 0;
    }
    if (!any) return moira_yaml_fail(doc, node, "%s needs at least one positive value", what);
    return MOIRA_OK_STATUS;
}

/* `memory_gib` as bytes; negative or absurd sizes are errors at the value. */
static moira_status_t parse_memory(parse_ctx_t *ctx, const yaml_node_t *node, uint64_t *out) {
    double gib = 0;
    MOIRA_RETURN_IF_ERROR(moira_yaml_number(ctx->doc, node, "memory_gib", 0, &gib));
    if (gib > MAX_MEMORY_GIB)
        return moira_yaml_fail(ctx->doc, node, "memory_gib %g is implausibly large", gib);
    *out = (uint64_t)(gib * GIB);
    return MOIRA_OK_STATUS;
}

/* Every target name is unique across the topology: plans refer to targets by name. */
static moira_status_t check_unique_name(parse_ctx_t *ctx, const yaml_node_t *at, const char *name) {
    int other = moira_topology_find_target(ctx->topology, name);
    if (other < 0) return MOIRA_OK_STATUS;
    const moira_target_t *t = &ctx->topology->targets[other];
    if (t->line > 0)
        return moira_yaml_fail(ctx->doc, at, "duplicate name \"%s\" (first declared at line %d)",
                               name, t->line);
    return moira_yaml_fail(ctx->doc, at, "duplicate name \"%s\"", name);
}

/* `measured: {bandwidth_gbs, tflops: {f32, bf16}, launch_us, link_gbs, home_launch_us,
 * home_tflops, home_attention_tflops}` as `moira calibrate` writes it; every key optional, none
 * negative, rates positive.
 */
static moira_status_t parse_measured(parse_ctx_t *ctx, const yaml_node_t *node,
                                     moira_measured_t *m) {
    moira_yaml_doc_t *doc = ctx->doc;
    static const char *const keys[] = {"bandwidth_gbs",  "tflops",      "launch_us",
                                       "link_gbs",       "home_tflops", "home_attention_tflops",
                                       "home_launch_us", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, node, "measured"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, node, keys));
    static const char *const rates[] = {"bandwidth_gbs", "link_gbs", "home_tflops",
                                        "home_attention_tflops"};
    double *rate_values[] = {&m->bandwidth_gbs, &m->link_gbs, &m->home_tflops,
                             &m->home_attention_tflops};
    for (int i = 0; i < 4; i++) {
        yaml_node_t *v = moira_yaml_get(doc, node, rates[i]);
        if (!v) continue;
        char what[48];
        snprintf(what, sizeof(what), "measured.%s", rates[i]);
        MOIRA_RETURN_IF_ERROR(moira_yaml_number(doc, v, what, 0, rate_values[i]));
        if (!(*rate_values[i] > 0)) return moira_yaml_fail(doc, v, "%s must be positive", what);
    }
    yaml_node_t *v = moira_yaml_get(doc, node, "launch_us");
    if (v) MOIRA_RETURN_IF_ERROR(moira_yaml_number(doc, v, "measured.launch_us", 0, &m->launch_us));
    if ((v = moira_yaml_get(doc, node, "home_launch_us")))
        MOIRA_RETURN_IF_ERROR(
            moira_yaml_number(doc, v, "measured.home_launch_us", 0, &m->home_launch_us));
    if ((v = moira_yaml_get(doc, node, "tflops"))) {
        MOIRA_RETURN_IF_ERROR(parse_peaks(ctx, v, "measured.tflops", m->tflops));
    }
    return MOIRA_OK_STATUS;
}

/* One NUMA node of a host: a CPU-memory target named HOST/numaID. */
static moira_status_t parse_numa_node(parse_ctx_t *ctx, int host, const yaml_node_t *node) {
    moira_yaml_doc_t *doc = ctx->doc;
    static const char *const keys[] = {
        "id", "memory_gib", "bandwidth_gbs", "cores", "peak_tflops", "measured", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, node, "a NUMA node"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, node, keys));
    moira_target_t t;
    memset(&t, 0, sizeof(t));
    t.kind = MOIRA_TARGET_NUMA;
    t.host = host;
    t.line = (int)node->start_mark.line + 1;
    t.column = (int)node->start_mark.column + 1;
    snprintf(t.backend, sizeof(t.backend), "%s", MOIRA_TOPOLOGY_HOST_BACKEND);
    yaml_node_t *v = NULL;
    int64_t id = 0, cores = 0;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "id", "a NUMA node", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_int(doc, v, "id", 0, 4095, &id));
    t.numa = (int)id;
    snprintf(t.name, sizeof(t.name), "%s/numa%d", ctx->topology->hosts[host].name, t.numa);
    MOIRA_RETURN_IF_ERROR(check_unique_name(ctx, v, t.name));
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "memory_gib", "a NUMA node", &v));
    MOIRA_RETURN_IF_ERROR(parse_memory(ctx, v, &t.memory_bytes));
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "bandwidth_gbs", "a NUMA node", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_number(doc, v, "bandwidth_gbs", 0, &t.bandwidth_gbs));
    if (t.bandwidth_gbs <= 0) return moira_yaml_fail(doc, v, "bandwidth_gbs must be positive");
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "cores", "a NUMA node", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_int(doc, v, "cores", 0, 1 << 20, &cores));
    t.cores = (int)cores;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "peak_tflops", "a NUMA node", &v));
    MOIRA_RETURN_IF_ERROR(parse_peaks(ctx, v, "peak_tflops", t.peak_tflops));
    if ((v = moira_yaml_get(doc, node, "measured")))
        MOIRA_RETURN_IF_ERROR(parse_measured(ctx, v, &t.measured));
    return moira_topology_add_target(ctx->topology, &t);
}

/* A device's `numa:` must name a NUMA node of the same host. */
static bool host_has_numa(const moira_topology_t *topology, int host, int numa) {
    for (int i = 0; i < topology->n_targets; i++) {
        const moira_target_t *t = &topology->targets[i];
        if (t->host == host && t->kind == MOIRA_TARGET_NUMA && t->numa == numa) return true;
    }
    return false;
}

/* A device without `numa:` keeps its host buffers on the host's first NUMA node. */
static int first_numa_of_host(const moira_topology_t *topology, int host) {
    for (int i = 0; i < topology->n_targets; i++) {
        const moira_target_t *t = &topology->targets[i];
        if (t->host == host && t->kind == MOIRA_TARGET_NUMA) return t->numa;
    }
    return -1;
}

/* A device's backend: not the host memory's (CPU memory is listed under numa_nodes), and, when
 * the caller gave the registered backends, one of them. */
static moira_status_t check_backend(parse_ctx_t *ctx, const yaml_node_t *at, const char *backend) {
    if (!backend[0]) return moira_yaml_fail(ctx->doc, at, "backend must not be empty");
    if (!strcmp(backend, MOIRA_TOPOLOGY_HOST_BACKEND))
        return moira_yaml_fail(ctx->doc, at,
                               "the %s backend computes on CPU memory, which is listed under "
                               "numa_nodes, not devices",
                               backend);
    const moira_discovery_devices_t *d = ctx->devices;
    if (!d || !d->backends) return MOIRA_OK_STATUS;
    char known[256] = "";
    size_t used = 0;
    for (int i = 0; i < d->n_backends; i++) {
        if (!strcmp(d->backends[i], backend)) return MOIRA_OK_STATUS;
        if (used < sizeof(known))
            used += (size_t)snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
                                     d->backends[i]);
    }
    return moira_yaml_fail(ctx->doc, at, "unknown backend \"%s\" (this build has %s)", backend,
                           used ? known : "none");
}

/* One GPU or NPU: kind and backend known, sizes positive, NUMA in range. */
static moira_status_t parse_device(parse_ctx_t *ctx, int host, const yaml_node_t *node) {
    moira_yaml_doc_t *doc = ctx->doc;
    static const char *const keys[] = {"name",       "kind",          "backend",     "select",
                                       "memory_gib", "bandwidth_gbs", "peak_tflops", "numa",
                                       "link_gbs",   "pci_bus_id",    "measured",    NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, node, "a device"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, node, keys));
    moira_target_t t;
    memset(&t, 0, sizeof(t));
    t.host = host;
    t.line = (int)node->start_mark.line + 1;
    t.column = (int)node->start_mark.column + 1;
    yaml_node_t *v = NULL;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "name", "a device", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "name", t.name, sizeof(t.name)));
    if (strchr(t.name, '/'))
        return moira_yaml_fail(doc, v,
                               "device names may not contain '/' (reserved for HOST/numaN)");
    MOIRA_RETURN_IF_ERROR(check_unique_name(ctx, v, t.name));

    char text[32];
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "kind", "a device", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "kind", text, sizeof(text)));
    if (!strcmp(text, "gpu"))
        t.kind = MOIRA_TARGET_GPU;
    else if (!strcmp(text, "npu"))
        t.kind = MOIRA_TARGET_NPU;
    else if (!strcmp(text, "cpu"))
        return moira_yaml_fail(doc, v, "CPU memory is listed under numa_nodes, not devices");
    else
        return moira_yaml_fail(doc, v, "unknown device kind \"%s\" (expected gpu or npu)", text);

    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "backend", "a device", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "backend", t.backend, sizeof(t.backend)));
    MOIRA_RETURN_IF_ERROR(check_backend(ctx, v, t.backend));
    if ((v = moira_yaml_get(doc, node, "select")))
        MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "select", t.select, sizeof(t.select)));
    if ((v = moira_yaml_get(doc, node, "pci_bus_id")))
        MOIRA_RETURN_IF_ERROR(
            moira_yaml_string(doc, v, "pci_bus_id", t.pci_bus_id, sizeof(t.pci_bus_id)));
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "memory_gib", "a device", &v));
    MOIRA_RETURN_IF_ERROR(parse_memory(ctx, v, &t.memory_bytes));
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "bandwidth_gbs", "a device", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_number(doc, v, "bandwidth_gbs", 0, &t.bandwidth_gbs));
    if (t.bandwidth_gbs <= 0) return moira_yaml_fail(doc, v, "bandwidth_gbs must be positive");
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "peak_tflops", "a device", &v));
    MOIRA_RETURN_IF_ERROR(parse_peaks(ctx, v, "peak_tflops", t.peak_tflops));
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "link_gbs", "a device", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_number(doc, v, "link_gbs", 0, &t.link_gbs));
    if (t.link_gbs <= 0) return moira_yaml_fail(doc, v, "link_gbs must be positive");
    t.numa = first_numa_of_host(ctx->topology, host);
    if ((v = moira_yaml_get(doc, node, "numa"))) {
        int64_t numa = 0;
        MOIRA_RETURN_IF_ERROR(moira_yaml_int(doc, v, "numa", 0, 4095, &numa));
        if (!host_has_numa(ctx->topology, host, (int)numa))
            return moira_yaml_fail(doc, v,
                                   "numa %lld is out of range: host \"%s\" has no such "
                                   "NUMA node",
                                   (long long)numa, ctx->topology->hosts[host].name);
        t.numa = (int)numa;
    }
    if ((v = moira_yaml_get(doc, node, "measured")))
        MOIRA_RETURN_IF_ERROR(parse_measured(ctx, v, &t.measured));
    return moira_topology_add_target(ctx->topology, &t);
}

/* One host: its name unique; NUMA nodes from the file or from discovery; then its devices. */
static moira_status_t parse_host(parse_ctx_t *ctx, const yaml_node_t *node) {
    moira_yaml_doc_t *doc = ctx->doc;
    moira_topology_t *topology = ctx->topology;
    static const char *const keys[] = {"name", "discover", "numa_nodes", "devices", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, node, "a host"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, node, keys));
    int host = topology->n_hosts;
    moira_host_t *h = &topology->hosts[host];
    memset(h, 0, sizeof(*h));
    yaml_node_t *v = NULL;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "name", "a host", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "name", h->name, sizeof(h->name)));
    if (strchr(h->name, '/')) return moira_yaml_fail(doc, v, "host names may not contain '/'");
    for (int i = 0; i < host; i++)
        if (!strcmp(topology->hosts[i].name, h->name))
            return moira_yaml_fail(doc, v, "duplicate host name \"%s\"", h->name);
    topology->n_hosts++;
    if ((v = moira_yaml_get(doc, node, "discover")))
        MOIRA_RETURN_IF_ERROR(moira_yaml_bool(doc, v, "discover", &h->discovered));
    yaml_node_t *numa_nodes = moira_yaml_get(doc, node, "numa_nodes");
    if (h->discovered) {
        if (numa_nodes)
            return moira_yaml_fail(doc, numa_nodes,
                                   "a host with discover: true takes its NUMA nodes from hwloc");
        MOIRA_RETURN_IF_ERROR(moira_topology_discover_host(topology, host, ctx->devices));
    } else {
        if (!numa_nodes)
            return moira_yaml_fail(doc, node, "host \"%s\" needs numa_nodes (or discover: true)",
                                   h->name);
        MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, numa_nodes, "numa_nodes"));
        for (int i = 0; i < moira_yaml_length(numa_nodes); i++)
            MOIRA_RETURN_IF_ERROR(parse_numa_node(ctx, host, moira_yaml_item(doc, numa_nodes, i)));
    }
    yaml_node_t *devices = moira_yaml_get(doc, node, "devices");
    if (devices) {
        MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, devices, "devices"));
        for (int i = 0; i < moira_yaml_length(devices); i++)
            MOIRA_RETURN_IF_ERROR(parse_device(ctx, host, moira_yaml_item(doc, devices, i)));
    }
    return MOIRA_OK_STATUS;
}

/* A direct link between two named devices of the topology. */
static moira_status_t parse_link(parse_ctx_t *ctx, const yaml_node_t *node) {
    moira_yaml_doc_t *doc = ctx->doc;
    static const char *const keys[] = {"between", "bandwidth_gbs", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, node, "a link"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, node, keys));
    moira_link_t link = {0, 0, 0};
    yaml_node_t *between = NULL, *v = NULL;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "between", "a link", &between));
    if (between->type != YAML_SEQUENCE_NODE || moira_yaml_length(between) != 2)
        return moira_yaml_fail(doc, between, "between must be a list of two device names");
    int ends[2];
    for (int i = 0; i < 2; i++) {
        yaml_node_t *end = moira_yaml_item(doc, between, i);
        char name[MOIRA_TARGET_NAME_MAX];
        MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, end, "a link end", name, sizeof(name)));
        ends[i] = moira_topology_find_target(ctx->topology, name);
        if (ends[i] < 0 || ctx->topology->targets[ends[i]].kind == MOIRA_TARGET_NUMA)
            return moira_yaml_fail(doc, end, "link to unknown device \"%s\"", name);
    }
    if (ends[0] == ends[1])
        return moira_yaml_fail(doc, between, "a link joins two different devices");
    link.a = ends[0];
    link.b = ends[1];
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "bandwidth_gbs", "a link", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_number(doc, v, "bandwidth_gbs", 0, &link.bandwidth_gbs));
    if (link.bandwidth_gbs <= 0) return moira_yaml_fail(doc, v, "bandwidth_gbs must be positive");
    ctx->topology->links[ctx->topology->n_links++] = link;
    return MOIRA_OK_STATUS;
}

/* The network between hosts: bandwidth (required) and latency. */
static moira_status_t parse_network(parse_ctx_t *ctx, const yaml_node_t *node) {
    moira_yaml_doc_t *doc = ctx->doc;
    static const char *const keys[] = {"bandwidth_gbs", "latency_us", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, node, "network"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, node, keys));
    yaml_node_t *v = NULL;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "bandwidth_gbs", "network", &v));
    MOIRA_RETURN_IF_ERROR(
        moira_yaml_number(doc, v, "bandwidth_gbs", 0, &ctx->topology->network_gbs));
    if (ctx->topology->network_gbs <= 0)
        return moira_yaml_fail(doc, v, "bandwidth_gbs must be positive");
    if ((v = moira_yaml_get(doc, node, "latency_us")))
        MOIRA_RETURN_IF_ERROR(
            moira_yaml_number(doc, v, "latency_us", 0, &ctx->topology->network_latency_us));
    return MOIRA_OK_STATUS;
}

/* The whole document: name, hosts (at least one, some memory somewhere), links, network
 * (required with several hosts). */
static moira_status_t parse_topology(parse_ctx_t *ctx) {
    moira_yaml_doc_t *doc = ctx->doc;
    moira_topology_t *topology = ctx->topology;
    yaml_node_t *root = moira_yaml_root(doc);
    static const char *const keys[] = {"name", "hosts", "links", "network", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, root, "a topology"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, root, keys));
    yaml_node_t *v = NULL, *hosts = NULL;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, root, "name", "a topology", &v));
    MOIRA_RETURN_IF_ERROR(
        moira_yaml_string(doc, v, "name", topology->name, sizeof(topology->name)));
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, root, "hosts", "a topology", &hosts));
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, hosts, "hosts"));
    int n_hosts = moira_yaml_length(hosts);
    if (n_hosts == 0) return moira_yaml_fail(doc, hosts, "a topology needs at least one host");
    topology->hosts = calloc((size_t)n_hosts, sizeof(moira_host_t));
    if (!topology->hosts) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; i < n_hosts; i++)
        MOIRA_RETURN_IF_ERROR(parse_host(ctx, moira_yaml_item(doc, hosts, i)));
    bool any_capacity = false;
    for (int i = 0; i < topology->n_targets; i++)
        any_capacity = any_capacity || topology->targets[i].memory_bytes > 0;
    if (!any_capacity) return moira_yaml_fail(doc, hosts, "no NUMA node or device has memory");

    yaml_node_t *links = moira_yaml_get(doc, root, "links");
    if (links) {
        MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, links, "links"));
        int n_links = moira_yaml_length(links);
        topology->links = calloc((size_t)n_links + 1, sizeof(moira_link_t));
        if (!topology->links) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
        for (int i = 0; i < n_links; i++)
            MOIRA_RETURN_IF_ERROR(parse_link(ctx, moira_yaml_item(doc, links, i)));
    }
    yaml_node_t *network = moira_yaml_get(doc, root, "network");
    if (network) MOIRA_RETURN_IF_ERROR(parse_network(ctx, network));
    if (!network && n_hosts > 1)
        return moira_yaml_fail(doc, root,
                               "a topology with %d hosts needs a network "
                               "{bandwidth_gbs, latency_us}",
                               n_hosts);
    return MOIRA_OK_STATUS;
}

/* Shared tail of _load and _parse; frees what was built on error. */
static moira_status_t finish_parse(moira_yaml_doc_t *doc, const moira_discovery_devices_t *devices,
                                   moira_topology_t *out) {
    memset(out, 0, sizeof(*out));
    parse_ctx_t ctx = {doc, out, devices};
    moira_status_t status = parse_topology(&ctx);
    moira_yaml_doc_free(doc);
    if (status) moira_topology_free(out);
    return status;
}

moira_status_t moira_topology_load(const char *path, const moira_discovery_devices_t *devices,
                                   moira_topology_t *out) {
    moira_yaml_doc_t doc;
    MOIRA_RETURN_IF_ERROR(moira_yaml_doc_load(path, "topology", &doc));
    return finish_parse(&doc, devices, out);
}

moira_status_t moira_topology_parse(const char *text, size_t len, const char *display_name,
                                    const moira_discovery_devices_t *devices,
                                    moira_topology_t *out) {
    moira_yaml_doc_t doc;
    MOIRA_RETURN_IF_ERROR(moira_yaml_doc_parse(text, len, display_name, "topology", &doc));
    return finish_parse(&doc, devices, out);
}
