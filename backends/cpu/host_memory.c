/* NUMA-bound host allocations (host_memory.h). */
#include "backends/cpu/host_memory.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/hwloc_topology.h"

/* hwloc binds the pages to the node's memory before they are first touched; without a node (or
 * where binding fails, as in some containers) the allocation is ordinary 64-byte aligned memory. */
bool moira_cpu_host_alloc(size_t bytes, int numa_node, moira_cpu_host_region_t *out_region) {
    memset(out_region, 0, sizeof(*out_region));
    out_region->bytes = bytes ? bytes : 1;
    if (numa_node >= 0) {
        hwloc_topology_t topology;
        moira_status_t status = moira_hwloc_topology(&topology);
        hwloc_obj_t node =
            status ? NULL : hwloc_get_numanode_obj_by_os_index(topology, (unsigned)numa_node);
        moira_status_free(status);
        if (node) {
            out_region->data = hwloc_alloc_membind(topology, out_region->bytes, node->nodeset,
                                                   HWLOC_MEMBIND_BIND, HWLOC_MEMBIND_BYNODESET);
            out_region->hwloc_allocated = out_region->data != NULL;
        }
    }
    if (!out_region->data) out_region->data = aligned_alloc(64, (out_region->bytes + 63) / 64 * 64);
    return out_region->data != NULL;
}

void moira_cpu_host_free(moira_cpu_host_region_t *region) {
    if (region->hwloc_allocated) {
        hwloc_topology_t topology;
        moira_status_t status = moira_hwloc_topology(&topology);
        if (!status) hwloc_free(topology, region->data, region->bytes);
        moira_status_free(status);
    } else {
        free(region->data);
    }
    memset(region, 0, sizeof(*region));
}
