/* Host memory for the cpu device: buffers and packed weights, bound to a NUMA node when one is
 * named so that weights sit next to the cores that read them. Private to backends/cpu/. */
#ifndef MOIRA_BACKENDS_CPU_HOST_MEMORY_H
#define MOIRA_BACKENDS_CPU_HOST_MEMORY_H

#include <stdbool.h>
#include <stddef.h>

/* A 64-byte aligned region, owned by whoever holds it; release with moira_cpu_host_free. */
typedef struct moira_cpu_host_region {
    void *data;
    size_t bytes;
    bool hwloc_allocated; /* freed with hwloc_free, else with free */
} moira_cpu_host_region_t;

/* Allocates `bytes` on NUMA node `numa_node` (-1: anywhere; a node hwloc does not know, or a
 * failed binding, falls back to ordinary memory). False when out of memory. */
bool moira_cpu_host_alloc(size_t bytes, int numa_node, moira_cpu_host_region_t *out_region);

/* Frees a region from moira_cpu_host_alloc and clears it; a cleared region is a no-op. */
void moira_cpu_host_free(moira_cpu_host_region_t *region);

#endif
