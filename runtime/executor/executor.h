/* The executor: runs a model with its routed experts spread over devices as a placement plan says
 * (DESIGN.md §1: CLI -> executor -> ops -> device interface -> backend).
 *
 * Every decoder layer has a home device that runs its attention, norms, router and shared
 * experts (and the whole of a dense layer). The routed experts of an MoE layer live where the
 * plan puts their replicas: GPUs, NPUs, or CPU memory bound to a NUMA node. Per MoE layer:
 *
 *   home:     h = x + mla(rmsnorm(x)); normed = rmsnorm(h); gate(normed) -> top-k experts
 *   host:     each (token, expert) assignment goes to one replica of the expert (route.c says
 *             which), and every device gets the tokens it serves and their local expert numbers
 *   devices:  concurrently, each on its own queue and worker thread: upload tokens, dispatch,
 *             one grouped FFN over its experts, combine, download its partial sums
 *   home:     meanwhile out = h + shared(normed)
 *   host:     out[t] += each device's partial sum for t
 *
 * One host round trip per MoE layer carries the routing and the activations; none per expert.
 * The executor measures what ran where (busy time, bytes moved, assignments served) next to the
 * cost model's prediction for the same load, records the observed expert load as a profile, and
 * can check every device's expert outputs against the fp64 reference. */
#ifndef MOIRA_RUNTIME_EXECUTOR_EXECUTOR_H
#define MOIRA_RUNTIME_EXECUTOR_EXECUTOR_H

#include <stdbool.h>
#include <stdint.h>

#include "ops/weights.h"
#include "placement/plan.h"
#include "placement/profile.h"
#include "placement/topology.h"
#include "runtime/device.h"
#include "runtime/model_config.h"
#include "runtime/tensor.h"

/* Which real device each topology target runs on. Owns its array; release with
 * moira_exec_binding_free. */
typedef struct moira_exec_binding {
    int n_targets;            /* the topology's */
    int host;                 /* in a cluster, this rank's host, whose targets alone are bound;
                                 -1 in one process, where every target must be on one host */
    moira_device_t **devices; /* owned array of borrowed devices; NULL where the plan puts none */
    int64_t *replicas;        /* owned: expert replicas per target over all layers */
} moira_exec_binding_t;

/* Binds every target the plan puts experts on to an enumerated device, and rejects, before any
 * weight is loaded, a plan this machine cannot run:
 *   - a target whose `select` (or, without one, whose backend) matches no device here;
 *   - targets on more than one host, unless mpirun started one rank per host of the topology
 *     (runtime/cluster/cluster.h): then each rank binds its own host's targets only;
 *   - devices holding more expert bytes than they have memory;
 *   - devices without the dispatch / grouped FFN / combine kernels for the model's weights.
 * A target's `select` is a device name ("opencl:0") or a case-insensitive part of a device's
 * model, vendor or platform name; without one, CPU memory binds to the cpu backend's device and
 * a GPU or NPU to the first device of its backend no other target has taken. `plan_path` names
 * the plan in messages (may be NULL). The runtime must be initialised. Errors are NOT_FOUND,
 * INVALID_INPUT or UNSUPPORTED (exit code 2). Caller frees *out. */
moira_status_t moira_exec_bind(const moira_topology_t *topology, const moira_plan_t *plan,
                               const moira_model_config_t *model, const char *plan_path,
                               moira_exec_binding_t *out);

void moira_exec_binding_free(moira_exec_binding_t *binding);

/* Checks that `device` can run a layer's home work (norms, attention, router, shared experts,
 * dense MLP) for the model's weights. UNSUPPORTED naming the op otherwise. */
moira_status_t moira_exec_check_home(const moira_device_t *device,
                                     const moira_model_config_t *model);

/* Called after each layer's weights reach their devices, with the bytes uploaded so far. */
typedef void (*moira_exec_progress_fn)(void *context, int64_t layers_done, int64_t layers,
                                       double bytes_uploaded);

typedef struct moira_exec_config {
    const moira_model_config_t *model;    /* borrowed; outlives the executor */
    const moira_layer_weights_t *weights; /* borrowed: num_hidden_layers layers; outlive it */
    const moira_topology_t *topology;     /* borrowed; outlives the executor */
    const moira_plan_t *plan;             /* borrowed; outlives the executor */
    const moira_exec_binding_t *binding;  /* borrowed for the call */
    moira_device_t *const *home_devices;  /* borrowed: one per decoder layer */
    int64_t max_tokens;                   /* the largest batch forward will be given */
    moira_exec_progress_fn progress;      /* optional */
    void *progress_context;
    /* Latent caches for moira_executor_step: per layer, on its home device, for max_sequences
     * sequences of up to `context` tokens. 0 sequences: forward only, no caches. */
    int max_sequences;
    int64_t context;
    moira_dtype_t cache_dtype; /* F32 (0) or BF16, on homes that keep one (ops/op.h) */
    /* Across hosts: every rank owns tokens of its own and calls forward (or step) itself, the
     * same number of times as the others, instead of rank 0 driving (data-parallel attention;
     * moira run --data-parallel). Then every rank leads and release is called by all. */
    bool data_parallel;
} moira_exec_config_t;

typedef struct moira_executor moira_executor_t;

/* Uploads every layer: home weights to each layer's home device, each target's share of the
 * routed experts to its device (CPU memory bound to the target's NUMA node), and creates a queue,
 * a workspace and a worker thread per target. Caller destroys *out. */
moira_status_t moira_executor_create(const moira_exec_config_t *config, moira_executor_t **out);

void moira_executor_destroy(moira_executor_t *executor);

/* Runs x (f32 [T, D], T <= max_tokens) at `positions` (i32 [T]) through every layer (prefill)
 * into `out` (f32 [T, D], allocated by the caller). With `check_devices`, every target's expert
 * outputs of every MoE layer are also compared with the fp64 reference for the same inputs and
 * routing (moira_exec_stats_t.targets[].check_*). `layer_inputs`, when not NULL, is an array of
 * num_hidden_layers caller-allocated f32 [T, D] tensors that receive each layer's input, so a
 * caller can check every layer against the reference on the same input. Blocks. */
moira_status_t moira_executor_forward(moira_executor_t *executor, const moira_tensor_t *x,
                                      const moira_tensor_t *positions, moira_tensor_t *out,
                                      bool check_devices, moira_tensor_t *layer_inputs);

/* One sequence of a step: rows first_row .. first_row+rows-1 of the batch continue the sequence
 * held in cache slot `slot` (0 .. max_sequences-1), which holds `past` tokens already. */
typedef struct moira_exec_sequence {
    int slot;
    int64_t first_row, rows, past;
} moira_exec_sequence_t;

/* Like forward, for sequences that keep their latent caches between steps (generation): each
 * sequence's rows attend over its slot's cache (the absorbed form) and append to it. The caller
 * tracks what each slot holds. Needs max_sequences > 0. Blocks. */
moira_status_t moira_executor_step(moira_executor_t *executor, const moira_tensor_t *x,
                                   const moira_tensor_t *positions,
                                   const moira_exec_sequence_t *sequences, int n_sequences,
                                   moira_tensor_t *out);

/* What one target did, summed over the forwards since the last reset. */
typedef struct moira_exec_target_stats {
    int target;             /* topology index */
    moira_device_t *device; /* borrowed; NULL for another rank's target (after release) */
    char device_name[64];   /* the device's name ("cpu:0"), on whichever rank it is */
    double nmse_limit;      /* its compute precision's limit (DESIGN.md §4) */
    int64_t replicas;       /* expert replicas it holds over all layers */
    int64_t assignments;    /* (token, expert) assignments it served */
    int64_t tokens;         /* token rows it received (a token with two of its experts: one) */
    double busy_s;          /* upload + dispatch + grouped FFN + combine + download, wall */
    double bytes_to_device, bytes_from_device;
    double predicted_us; /* the cost model (placement/cost_model.h) for the same assignments */
    bool has_modelled;   /* the device has its own cost model (the npu) */
    double modelled_us;  /* its modelled device time */
    /* From the last forward with check_devices; the limit is the device's precision's. */
    bool checked;
    double check_nmse, check_limit;
} moira_exec_target_stats_t;

/* One decoder layer, summed over the forwards since the last reset. */
typedef struct moira_exec_layer_stats {
    int64_t layer;
    bool is_moe;
    moira_device_t *home;     /* borrowed */
    double wall_s;            /* the whole layer as the host saw it */
    double home_s;            /* the home device's share: attention, router, shared experts */
    double experts_s;         /* from handing tokens to the devices until the last one is done */
    double predicted_us;      /* cost model for the observed load: slowest target (MoE layers) */
    double plan_predicted_us; /* what the plan file predicted for its own load (0 if none) */
    /* Across hosts (a cluster; 0 otherwise): bytes this rank sent to others (dispatched rows and
     * partial sums), the time it spent exchanging them (waits included: on the rank that owns the
     * tokens that covers the other hosts' experts), and the cost model's network bytes for the
     * load this rank routed (placement/network_cost.h). After moira_executor_release the
     * leader's figures are the whole cluster's: bytes and predictions summed over the ranks. */
    double network_bytes;
    double exchange_s;
    double predicted_network_bytes;
    double predicted_network_us; /* those bytes over the topology's network, plus its latency */
} moira_exec_layer_stats_t;

typedef struct moira_exec_stats {
    int ranks; /* processes the run spans: 1, or the hosts of a cluster (mpirun) */
    int64_t forwards;
    int64_t tokens; /* tokens run through the model */
    double wall_s;
    double home_bytes; /* activations to and from the home devices */
    int n_targets;
    moira_exec_target_stats_t *targets; /* owned by the executor */
    int n_layers;
    moira_exec_layer_stats_t *layers; /* owned by the executor */
} moira_exec_stats_t;

/* Borrowed; valid until the next forward, reset or destroy. */
const moira_exec_stats_t *moira_executor_stats(const moira_executor_t *executor);

/* Across hosts (mpirun, one rank per host): the rank that owns the tokens, rank 0, drives; it
 * calls forward and step as in one process, and each call first tells the other ranks to join.
 * The other ranks call moira_executor_follow, which serves the rows sent to their experts,
 * layer by layer, until rank 0 calls moira_executor_release (or destroys its executor). Release
 * also brings every rank's target and network figures to rank 0's stats, so its report covers
 * the whole cluster. Both are no-ops without a cluster; release runs once. A follower waits for
 * rank 0's next step as long as rank 0 is alive (a server idles between requests). With
 * data_parallel every rank drives its own forwards and every rank calls release, together. */
moira_status_t moira_executor_follow(moira_executor_t *executor);
void moira_executor_release(moira_executor_t *executor);

/* Whether this executor runs the rank that drives (true in one process). */
bool moira_executor_leads(const moira_executor_t *executor);

/* Adds each target's measured speed to `profile` (moira_profile_add_speed): its busy time next
 * to the cost model's prediction per forward, named by its topology target, for every target that
 * did work; so `moira plan --profile` plans each device as fast as it ran (placement/speed.h). */
moira_status_t moira_exec_stats_add_speeds(const moira_exec_stats_t *stats,
                                           const moira_topology_t *topology,
                                           moira_profile_t *profile);

/* Zeroes the timings and counters (not the check results): after a warm-up forward. */
void moira_executor_reset_stats(moira_executor_t *executor);

/* The expert load of the last forward: tokens routed to each expert of each MoE layer, the
 * profile `moira plan --profile` reads. Caller frees *out. */
moira_status_t moira_executor_observed_profile(const moira_executor_t *executor,
                                               moira_profile_t *out);

/* Adds the last forward's expert load to `totals` [num_hidden_layers, n_routed_experts]
 * (row-major; dense layers untouched), allocating nothing: for a running count across steps. */
void moira_executor_add_expert_load(const moira_executor_t *executor, double *totals);

#endif
