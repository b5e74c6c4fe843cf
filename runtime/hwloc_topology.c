#include "runtime/hwloc_topology.h"

#include <pthread.h>

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static hwloc_topology_t shared_topology;
static int load_error;

/* I/O devices (PCI) are kept so that GPU locality can be joined by bus id later. */
static void load_topology(void) {
    if (hwloc_topology_init(&shared_topology) < 0) {
        load_error = 1;
        return;
    }
    hwloc_topology_set_io_types_filter(shared_topology, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    if (hwloc_topology_load(shared_topology) < 0) {
        hwloc_topology_destroy(shared_topology);
        load_error = 1;
    }
}

moira_status_t moira_hwloc_topology(hwloc_topology_t *out_topology) {
    pthread_once(&load_once, load_topology);
    if (load_error)
        return moira_status_make(MOIRA_CODE_DEVICE, "hwloc could not load the machine topology");
    *out_topology = shared_topology;
    return MOIRA_OK_STATUS;
}
