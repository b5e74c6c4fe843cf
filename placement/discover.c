/* Discovery: the local machine as a topology host, from hwloc and the device layer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "placement/topology.h"
#include "runtime/hwloc_topology.h"

/* When hwloc has no memory attributes (most VMs and containers), a NUMA node's bandwidth is
 * estimated as one DDR4-3200 channel, 25.6 GB/s: a floor real machines exceed, so the planner
 * never overrates CPU memory. */
#define FALLBACK_NUMA_BANDWIDTH_GBS 25.6
/* Without a cpu device to ask, a core is taken to sustain 32 f32 FLOP/cycle at 2 GHz. */
#define FALLBACK_CORE_TFLOPS 0.064
/* A device whose PCIe link speed hwloc cannot tell is taken to sit on PCIe 4.0 x8 (16 GB/s). */
#define FALLBACK_LINK_GBS 16.0

/* hwloc reports bandwidth in MiB/s for an initiator (the node's own cores) and a target node. */
static double numa_bandwidth_gbs(hwloc_topology_t hw, hwloc_obj_t node) {
    struct hwloc_location initiator;
    initiator.type = HWLOC_LOCATION_TYPE_CPUSET;
    initiator.location.cpuset = node->cpuset;
    hwloc_uint64_t mib_per_s = 0;
    if (node->cpuset && !hwloc_bitmap_iszero(node->cpuset) &&
        hwloc_memattr_get_value(hw, HWLOC_MEMATTR_ID_BANDWIDTH, node, &initiator, 0, &mib_per_s) ==
            0 &&
        mib_per_s > 0)
        return (double)mib_per_s * 1048576.0 / 1e9;
    return FALLBACK_NUMA_BANDWIDTH_GBS;
}

/* The cpu-backend device's peak covers all cores; NUMA targets get shares by core count. */
static const moira_device_info_t *find_cpu_device(const moira_discovery_devices_t *devices) {
    for (int i = 0; devices && i < devices->count; i++)
        if (devices->infos[i].kind == MOIRA_DEVICE_KIND_CPU) return &devices->infos[i];
    return NULL;
}

/* Each hwloc NUMA node becomes a CPU-memory target named HOST/numaN: its memory, its cores, its
 * bandwidth, and a share of the cpu device's peak by core count. */
static moira_status_t add_numa_targets(moira_topology_t *topology, int host, hwloc_topology_t hw,
                                       const moira_discovery_devices_t *devices) {
    int n_nodes = hwloc_get_nbobjs_by_type(hw, HWLOC_OBJ_NUMANODE);
    int total_cores = hwloc_get_nbobjs_by_type(hw, HWLOC_OBJ_CORE);
    const moira_device_info_t *cpu = find_cpu_device(devices);
    hwloc_obj_t root = hwloc_get_root_obj(hw);
    for (int i = 0; i < n_nodes; i++) {
        hwloc_obj_t node = hwloc_get_obj_by_type(hw, HWLOC_OBJ_NUMANODE, (unsigned)i);
        moira_target_t t;
        memset(&t, 0, sizeof(t));
        t.kind = MOIRA_TARGET_NUMA;
        t.host = host;
        t.numa = (int)node->os_index;
        snprintf(t.name, sizeof(t.name), "%s/numa%d", topology->hosts[host].name, t.numa);
        snprintf(t.backend, sizeof(t.backend), "%s", MOIRA_TOPOLOGY_HOST_BACKEND);
        t.memory_bytes = node->attr->numanode.local_memory;
        if (t.memory_bytes == 0 && n_nodes == 1) t.memory_bytes = root->total_memory;
        t.cores = node->cpuset
                      ? hwloc_get_nbobjs_inside_cpuset_by_type(hw, node->cpuset, HWLOC_OBJ_CORE)
                      : 0;
        t.bandwidth_gbs = numa_bandwidth_gbs(hw, node);
        double share = total_cores > 0 ? (double)t.cores / total_cores : 1.0 / n_nodes;
        for (int d = 0; d < MOIRA_DTYPE_COUNT; d++)
            t.peak_tflops[d] = cpu ? cpu->peak_tflops[d] * share : 0;
        if (moira_target_peak_tflops(&t, MOIRA_DTYPE_F32) <= 0) {
            t.peak_tflops[MOIRA_DTYPE_F32] = FALLBACK_CORE_TFLOPS * (t.cores > 0 ? t.cores : 1);
            t.peak_tflops[MOIRA_DTYPE_BF16] = t.peak_tflops[MOIRA_DTYPE_F32];
        }
        if (moira_topology_find_target(topology, t.name) >= 0)
            return moira_status_make(MOIRA_CODE_INVALID_INPUT, "duplicate name \"%s\"", t.name);
        MOIRA_RETURN_IF_ERROR(moira_topology_add_target(topology, &t));
    }
    return MOIRA_OK_STATUS;
}

/* Joins a device to hwloc's PCI tree: its NUMA node is the first one of its nearest non-I/O
 * ancestor, its link speed hwloc's PCIe link speed. */
static void locate_by_pci(hwloc_topology_t hw, moira_target_t *t) {
    if (!t->pci_bus_id[0]) return;
    hwloc_obj_t pci = hwloc_get_pcidev_by_busidstring(hw, t->pci_bus_id);
    if (!pci) return;
    if (pci->attr->pcidev.linkspeed > 0) t->link_gbs = pci->attr->pcidev.linkspeed;
    hwloc_obj_t parent = hwloc_get_non_io_ancestor_obj(hw, pci);
    if (parent && parent->nodeset && !hwloc_bitmap_iszero(parent->nodeset)) {
        int first = hwloc_bitmap_first(parent->nodeset);
        if (first >= 0) t->numa = first;
    }
}

/* An emulated device computes on the host's cores from host memory: it is costed as the host's
 * CPU memory targets together (their bandwidth and peak), never as the device it models. */
static void cost_as_host(const moira_topology_t *topology, int host, const moira_device_info_t *cpu,
                         moira_target_t *t) {
    double bandwidth = 0, peak = 0;
    for (int i = 0; i < topology->n_targets; i++) {
        const moira_target_t *numa = &topology->targets[i];
        if (numa->host != host || numa->kind != MOIRA_TARGET_NUMA) continue;
        bandwidth += numa->bandwidth_gbs;
        peak += moira_target_peak_tflops(numa, MOIRA_DTYPE_F32);
    }
    if (cpu && cpu->peak_tflops[MOIRA_DTYPE_F32] > 0) peak = cpu->peak_tflops[MOIRA_DTYPE_F32];
    t->bandwidth_gbs = bandwidth > 0 ? bandwidth : FALLBACK_NUMA_BANDWIDTH_GBS;
    for (int d = 0; d < MOIRA_DTYPE_COUNT; d++)
        t->peak_tflops[d] = peak > 0 ? peak : FALLBACK_CORE_TFLOPS;
}

/* An emulated device keeps its buffers in host memory, which the host's NUMA targets already
 * count: each emulated device gets an equal share of it (at most what it reports) and the NUMA
 * targets keep the rest, in proportion, so the plan never places the host's memory twice. */
static void share_host_memory(moira_topology_t *topology, int host) {
    double host_bytes = 0, emulated_bytes = 0;
    int emulated = 0;
    for (int i = 0; i < topology->n_targets; i++) {
        const moira_target_t *t = &topology->targets[i];
        if (t->host != host) continue;
        if (t->kind == MOIRA_TARGET_NUMA) host_bytes += (double)t->memory_bytes;
        emulated += t->emulated;
    }
    if (!emulated || !(host_bytes > 0)) return;
    double share = host_bytes / (emulated + 1);
    for (int i = 0; i < topology->n_targets; i++) {
        moira_target_t *t = &topology->targets[i];
        if (t->host != host || !t->emulated) continue;
        if ((double)t->memory_bytes > share) t->memory_bytes = (uint64_t)share;
        emulated_bytes += (double)t->memory_bytes;
    }
    double keep = (host_bytes - emulated_bytes) / host_bytes;
    for (int i = 0; i < topology->n_targets; i++) {
        moira_target_t *t = &topology->targets[i];
        if (t->host == host && t->kind == MOIRA_TARGET_NUMA)
            t->memory_bytes = (uint64_t)((double)t->memory_bytes * keep);
    }
}

/* Every non-CPU device the backends enumerated becomes a target with the figures it reports,
 * placed on the NUMA node its PCI bus id leads to. */
static moira_status_t add_device_targets(moira_topology_t *topology, int host, hwloc_topology_t hw,
                                         const moira_discovery_devices_t *devices) {
    int first_numa = -1;
    for (int i = 0; i < topology->n_targets && first_numa < 0; i++)
        if (topology->targets[i].host == host) first_numa = topology->targets[i].numa;
    const moira_device_info_t *cpu = find_cpu_device(devices);
    for (int i = 0; devices && i < devices->count; i++) {
        const moira_device_info_t *info = &devices->infos[i];
        if (info->kind == MOIRA_DEVICE_KIND_CPU) continue;
        if (info->emulated && !devices->with_emulated) continue;
        moira_target_t t;
        memset(&t, 0, sizeof(t));
        t.kind = info->kind == MOIRA_DEVICE_KIND_NPU ? MOIRA_TARGET_NPU : MOIRA_TARGET_GPU;
        t.host = host;
        snprintf(t.name, sizeof(t.name), "%s", info->name);
        snprintf(t.backend, sizeof(t.backend), "%s", info->backend);
        snprintf(t.select, sizeof(t.select), "%s", info->name);
        snprintf(t.pci_bus_id, sizeof(t.pci_bus_id), "%s", info->pci_bus_id);
        t.memory_bytes = info->memory_bytes;
        t.bandwidth_gbs = info->bandwidth_gbs;
        for (int d = 0; d < MOIRA_DTYPE_COUNT; d++)
            t.peak_tflops[d] = info->peak_tflops[d];
        t.link_gbs = FALLBACK_LINK_GBS;
        t.numa = info->numa_node >= 0 ? info->numa_node : first_numa;
        locate_by_pci(hw, &t);
        if (info->emulated) cost_as_host(topology, host, cpu, &t);
        t.emulated = info->emulated;
        /* A device that cannot say how fast it is cannot be costed; leave it out of plans. */
        if (t.bandwidth_gbs <= 0 || moira_target_peak_tflops(&t, MOIRA_DTYPE_F32) <= 0) continue;
        if (moira_topology_find_target(topology, t.name) >= 0)
            return moira_status_make(MOIRA_CODE_INVALID_INPUT, "duplicate name \"%s\"", t.name);
        MOIRA_RETURN_IF_ERROR(moira_topology_add_target(topology, &t));
    }
    return MOIRA_OK_STATUS;
}

moira_status_t moira_topology_discover_host(moira_topology_t *topology, int host_index,
                                            const moira_discovery_devices_t *devices) {
    hwloc_topology_t hw;
    MOIRA_RETURN_IF_ERROR(moira_hwloc_topology(&hw));
    MOIRA_RETURN_IF_ERROR(add_numa_targets(topology, host_index, hw, devices));
    MOIRA_RETURN_IF_ERROR(add_device_targets(topology, host_index, hw, devices));
    share_host_memory(topology, host_index);
    return MOIRA_OK_STATUS;
}

/* A topology of one host named after this machine, with no targets yet. */
static moira_status_t local_host_topology(const char *name, moira_topology_t *out) {
    memset(out, 0, sizeof(*out));
    out->hosts = calloc(1, sizeof(moira_host_t));
    if (!out->hosts) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    out->n_hosts = 1;
    out->hosts[0].discovered = true;
    char hostname[MOIRA_TOPOLOGY_NAME_MAX] = "";
    if (gethostname(hostname, sizeof(hostname) - 1) != 0 || !hostname[0] || strchr(hostname, '/'))
        snprintf(hostname, sizeof(hostname), "local");
    hostname[sizeof(hostname) - 1] = '\0';
    snprintf(out->hosts[0].name, sizeof(out->hosts[0].name), "%s", hostname);
    snprintf(out->name, sizeof(out->name), "%s", name);
    return MOIRA_OK_STATUS;
}

moira_status_t moira_topology_discover_local(const moira_discovery_devices_t *devices,
                                             moira_topology_t *out) {
    MOIRA_RETURN_IF_ERROR(local_host_topology("local", out));
    moira_status_t status = moira_topology_discover_host(out, 0, devices);
    if (status) moira_topology_free(out);
    return status;
}

/* An emulated device alone (`--backend npu:0`) has no NUMA targets to be costed as: it gets the
 * host CPU's fallbacks - one DDR channel's bandwidth and every online core's fallback peak - not
 * the figures of the device it models (an Ascend 910B's 1600 GB/s and 354 TFLOP/s). */
static void emulated_as_host(moira_target_t *t) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    t->bandwidth_gbs = FALLBACK_NUMA_BANDWIDTH_GBS;
    for (int d = 0; d < MOIRA_DTYPE_COUNT; d++)
        t->peak_tflops[d] = FALLBACK_CORE_TFLOPS * (double)(cores > 0 ? cores : 1);
}

/* Whatever figure a device cannot report gets discovery's conservative fallback, so that even
 * a device that reports nothing (PoCL) can be costed when the user asks to run on it alone. */
moira_status_t moira_topology_for_device(const moira_device_info_t *info, moira_topology_t *out) {
    char name[MOIRA_TOPOLOGY_NAME_MAX];
    snprintf(name, sizeof(name), "%s", info->name);
    MOIRA_RETURN_IF_ERROR(local_host_topology(name, out));
    moira_target_t t;
    memset(&t, 0, sizeof(t));
    bool cpu = !strcmp(info->backend, MOIRA_TOPOLOGY_HOST_BACKEND);
    t.kind = cpu                                   ? MOIRA_TARGET_NUMA
             : info->kind == MOIRA_DEVICE_KIND_NPU ? MOIRA_TARGET_NPU
                                                   : MOIRA_TARGET_GPU;
    snprintf(t.name, sizeof(t.name), "%s", info->name);
    snprintf(t.backend, sizeof(t.backend), "%s", info->backend);
    snprintf(t.select, sizeof(t.select), "%s", info->name);
    snprintf(t.pci_bus_id, sizeof(t.pci_bus_id), "%s", info->pci_bus_id);
    t.numa = info->numa_node;
    t.cores = cpu ? info->compute_units : 0;
    t.memory_bytes = info->memory_bytes;
    t.bandwidth_gbs = info->bandwidth_gbs > 0 ? info->bandwidth_gbs : FALLBACK_NUMA_BANDWIDTH_GBS;
    for (int d = 0; d < MOIRA_DTYPE_COUNT; d++)
        t.peak_tflops[d] = info->peak_tflops[d];
    if (moira_target_peak_tflops(&t, MOIRA_DTYPE_F32) <= 0) {
        int units = info->compute_units > 0 ? info->compute_units : 1;
        t.peak_tflops[MOIRA_DTYPE_F32] = FALLBACK_CORE_TFLOPS * units;
    }
    t.link_gbs = cpu ? 0 : FALLBACK_LINK_GBS;
    if (info->emulated) emulated_as_host(&t);
    moira_status_t status = moira_topology_add_target(out, &t);
    if (status) moira_topology_free(out);
    return status;
}
