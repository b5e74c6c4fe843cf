/* The largest cache from hwloc (largest_cache.h). */
#include "bench/largest_cache.h"

#include "runtime/hwloc_topology.h"

/* Every cache level hwloc may report is looked at; the first object of each is enough, the
 * machine's caches of one level being alike. */
double moira_bench_largest_cache_bytes(void) {
    hwloc_topology_t topology;
    moira_status_t status = moira_hwloc_topology(&topology);
    double largest = 0;
    for (int type = HWLOC_OBJ_L1CACHE; !status && type <= HWLOC_OBJ_L5CACHE; type++) {
        hwloc_obj_t cache = hwloc_get_obj_by_type(topology, (hwloc_obj_type_t)type, 0);
        if (cache && cache->attr && (double)cache->attr->cache.size > largest)
            largest = (double)cache->attr->cache.size;
    }
    moira_status_free(status);
    return largest > 0 ? largest : 32.0 * 1024 * 1024;
}
