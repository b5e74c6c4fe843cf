/* Topology: the machines a plan places experts on (DESIGN.md §5).
 *
 * Every place an expert can live is a target: a GPU, an NPU, or one NUMA node of a host's CPU
 * memory (named HOST/numaN). Targets carry what the cost model needs: memory, bandwidth, peak
 * throughput per dtype, the link to host memory, and the NUMA node nearest them (where their host
 * buffers go). Topologies come from YAML files, validated with file:line:col, or from discovery
 * of the local machine (hwloc plus the device layer's devices). */
#ifndef MOIRA_PLACEMENT_TOPOLOGY_H
#define MOIRA_PLACEMENT_TOPOLOGY_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/device.h"
#include "runtime/dtype.h"
#include "runtime/status.h"

#define MOIRA_TOPOLOGY_NAME_MAX 64
#define MOIRA_TARGET_NAME_MAX 96

typedef enum moira_target_kind {
    MOIRA_TARGET_NUMA = 0, /* CPU memory of one NUMA node, computed on by its cores */
    MOIRA_TARGET_GPU,
    MOIRA_TARGET_NPU,
} moira_target_kind_t;

/* "numa", "gpu", "npu". Static storage. */
const char *moira_target_kind_name(moira_target_kind_t kind);

/* What `moira calibrate` timed on the real device (DESIGN.md §5 `measured:`); 0 where nothing was
 * measured. The cost model prefers each measured figure to the specified one. A plain value. */
typedef struct moira_measured {
    double bandwidth_gbs;             /* expert weight reads, GB/s */
    double tflops[MOIRA_DTYPE_COUNT]; /* expert FFN throughput by weight dtype, TFLOP/s */
    double launch_us;                 /* fixed cost of one layer's expert work on it */
    double link_gbs;                  /* host <-> device copies, GB/s */
    double home_launch_us;            /* fixed cost of one layer's home work run here */
    double home_tflops;               /* the home's projections and shared experts, TFLOP/s */
    double home_attention_tflops;     /* the home's attention scores and sums (grow with T^2) */
} moira_measured_t;

typedef struct moira_target {
    char name[MOIRA_TARGET_NAME_MAX]; /* "gpu0", or "node0/numa1" for CPU memory */
    char backend[16];                 /* "opencl", "npu"; "cpu" for NUMA targets */
    char select[64];                  /* binds to a real device at run time; "" when not given */
    char pci_bus_id[32];              /* "" when unknown */
    moira_target_kind_t kind;
    int host;  /* index into moira_topology_t.hosts */
    int numa;  /* NUMA node id: its own for CPU memory, the nearest one for a device; -1 none */
    int cores; /* CPU cores of a NUMA target; 0 for devices */
    uint64_t memory_bytes;
    uint64_t reserve_bytes; /* kept free of experts by the planner (placement/reserve.h); 0 none */
    double bandwidth_gbs;   /* memory bandwidth, GB/s (1e9 bytes/s) */
    double peak_tflops[MOIRA_DTYPE_COUNT]; /* by compute dtype; 0 = not supported or unknown */
    double link_gbs; /* device <-> host memory link; 0 for CPU memory (activations are local) */
    moira_measured_t measured; /* calibrated figures; zeroed when not calibrated */
    double time_scale; /* measured / predicted in a recorded run (placement/speed.h); 0: none */
    bool emulated;     /* runs on the host's cores in host memory (the npu emulator) */
    int line, column;  /* where the file declared it; 0 when discovered or built in code */
} moira_target_t;

typedef struct moira_host {
    char name[MOIRA_TOPOLOGY_NAME_MAX];
    bool discovered; /* filled from the local machine */
} moira_host_t;

typedef struct moira_link {
    int a, b; /* target indices */
    double bandwidth_gbs;
} moira_link_t;

/* A whole topology. Owns its arrays; release with moira_topology_free. */
typedef struct moira_topology {
    char name[MOIRA_TOPOLOGY_NAME_MAX];
    int n_hosts;
    moira_host_t *hosts; /* owned */
    int n_targets;
    int targets_capacity;    /* allocated length of targets */
    moira_target_t *targets; /* owned; a host's NUMA targets first, then its devices */
    int n_links;
    moira_link_t *links; /* owned */
    double network_gbs;  /* between hosts; 0 when there is one host */
    double network_latency_us;
} moira_topology_t;

/* The backend whose devices compute on host memory: CPU NUMA targets bind to it. The one backend
 * name placement knows; every other comes from the topology file and is checked against the
 * registered backends (`backends` below, and again when a plan is bound). */
#define MOIRA_TOPOLOGY_HOST_BACKEND "cpu"

/* The devices discovery may use: the device layer's enumerated devices (the caller gathers them,
 * so placement needs no backend). `infos` is borrowed for the call. A cpu-backend device is not a
 * target itself (its memory is the NUMA targets) but lends its peak throughput to them.
 * `backends` (borrowed, may be NULL) names the registered backends: a topology device naming
 * another is refused at its file:line:col; NULL accepts any name. */
typedef struct moira_discovery_devices {
    const moira_device_info_t *infos;
    int count;
    const char *const *backends;
    int n_backends;
    /* Emulated devices (moira_device_info_t.emulated) become targets only when asked for
     * (--with-emulated, MOIRA_NPU_DEVICES): they run on the host's cores in host memory, so a
     * plan counting them as extra devices would be slower than the CPU alone. When asked for,
     * they are costed as the host CPU they run on (an upper bound on their speed). */
    bool with_emulated;
} moira_discovery_devices_t;

/* Reads and validates a topology file. Hosts with `discover: true` are filled from the local
 * machine using `devices` (may be NULL: NUMA nodes only). On success the caller owns *out and
 * frees it with moira_topology_free. Errors: NOT_FOUND, IO, INVALID_INPUT at file:line:col
 * (unknown keys or backends, negative sizes, duplicate names, links to unknown devices, NUMA
 * references out of range, ...). */
moira_status_t moira_topology_load(const char *path, const moira_discovery_devices_t *devices,
                                   moira_topology_t *out);

/* As moira_topology_load, from text in memory named `display_name` in messages. */
moira_status_t moira_topology_parse(const char *text, size_t len, const char *display_name,
                                    const moira_discovery_devices_t *devices,
                                    moira_topology_t *out);

/* The built-in default: the local machine as one discovered host named after it. Caller owns
 * *out. */
moira_status_t moira_topology_discover_local(const moira_discovery_devices_t *devices,
                                             moira_topology_t *out);

/* A topology of this machine with one target: `info`'s device, named after it and selecting it
 * (a cpu-backend device becomes CPU memory), with discovery's fallbacks for figures it does not
 * report. What `moira run --backend DEVICE` plans for. `info` is borrowed. Caller owns *out. */
moira_status_t moira_topology_for_device(const moira_device_info_t *info, moira_topology_t *out);

/* Appends the local machine's NUMA nodes and devices to `topology` as host `host_index`
 * (discover.c). Uses hwloc: NUMA nodes, their memory and cores, bandwidth from hwloc's memory
 * attributes when the platform reports them, and joins each device to its NUMA node by PCI bus
 * id. */
moira_status_t moira_topology_discover_host(moira_topology_t *topology, int host_index,
                                            const moira_discovery_devices_t *devices);

/* Adds one target (copied) to the topology; used by the loader and by discovery. */
moira_status_t moira_topology_add_target(moira_topology_t *topology, const moira_target_t *target);

/* Index of the target named `name`, or -1. */
int moira_topology_find_target(const moira_topology_t *topology, const char *name);

/* The peak TFLOP/s a target reaches on experts stored as `weight_dtype`: that dtype's peak when
 * the target has one, else bf16, f16, f32 in that order (weights are widened to compute); the
 * measured figures when calibration gave any, else the specified ones. 0 when it reports none. */
double moira_target_peak_tflops(const moira_target_t *target, moira_dtype_t weight_dtype);

/* The figures the cost model uses: the measured one where calibration gave it, else the
 * specified one. Link: 0 for CPU memory. */
double moira_target_bandwidth_gbs(const moira_target_t *target);
double moira_target_link_gbs(const moira_target_t *target);

/* Writes `topology` as a topology file (YAML, or JSON with `json`) that moira_topology_load reads
 * back to the same targets: discovered hosts are written out as what was found, with each
 * target's `measured:` figures. `out` is borrowed. False when a write failed. */
bool moira_topology_write_stream(const moira_topology_t *topology, FILE *out, bool json);

/* Releases a topology's arrays and zeroes it. Accepts a zeroed topology. */
void moira_topology_free(moira_topology_t *topology);

#endif
