/* The machine's hwloc topology, loaded once per process and shared read-only. */
#ifndef MOIRA_RUNTIME_HWLOC_TOPOLOGY_H
#define MOIRA_RUNTIME_HWLOC_TOPOLOGY_H

#include <hwloc.h>

#include "runtime/status.h"

/* Loads the topology on first call (thread-safe) and returns it. Borrowed: valid until exit. */
moira_status_t moira_hwloc_topology(hwloc_topology_t *out_topology);

#endif
