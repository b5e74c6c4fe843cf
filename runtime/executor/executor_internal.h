/* The executor's insides, shared by its files: creation (executor_create.c), routing (route.c),
 * the device stage (stage.c), the forward pass (forward.c), the reference check (check.c) and
 * the measurements (measure.c). Not for use outside runtime/executor/. */
#ifndef MOIRA_RUNTIME_EXECUTOR_EXECUTOR_INTERNAL_H
#define MOIRA_RUNTIME_EXECUTOR_EXECUTOR_INTERNAL_H

#include "ops/device_experts.h"
#include "ops/device_layer.h"
#include "ops/layer_program.h"
#include "placement/cost_model.h"
#include "runtime/clock.h"
#include "runtime/cluster/cluster.h"
#include "runtime/executor/executor.h"
#include "runtime/executor/worker.h"

/* One target the plan puts experts on, with what it needs to serve them. */
typedef struct exec_target {
    int target;                 /* topology index */
    const moira_target_t *info; /* borrowed from the topology */
    moira_device_t *device;     /* borrowed */
    int numa_node;              /* where its expert memory is bound; -1: the device decides */
    int64_t top_k, hidden;      /* k and D of the model */
    moira_queue_t *queue;       /* owned */
    moira_buffer_t *workspace;  /* owned: x, topk_idx, topk_weight, y, then the moe workspace */
    size_t off_idx, off_weight, off_y, off_moe;
    /* Host staging of one layer, sized for max_tokens rows (owned). */
    float *x;       /* [rows, D] the tokens it serves */
    int32_t *idx;   /* [rows, k] local expert numbers, -1 where another target serves */
    float *weight;  /* [rows, k] routing weights */
    float *y;       /* [rows, D] its partial sums */
    int32_t *token; /* [rows] which token each row is */
    /* The layer in flight. */
    int64_t rows, assignments;
    const moira_device_experts_t *experts; /* borrowed from the layer */
    moira_status_t status;                 /* owned: the stage's result */
    double stage_s;
    moira_exec_worker_t worker;
    double modelled_base_us; /* the queue's modelled time at the last reset */
    double check_num, check_den;
} exec_target_t;

/* A device that runs layers' home work, with its activations for one batch. */
typedef struct exec_home {
    moira_device_t *device;    /* borrowed */
    moira_queue_t *queue;      /* owned */
    moira_buffer_t *buffer;    /* owned: x [max_tokens, D], then positions [max_tokens] */
    size_t off_positions;      /* in buffer */
    moira_buffer_t *workspace; /* owned: shared by the programs of every layer it is home to */
    int64_t positions_written; /* the forward whose positions the buffer holds */
} exec_home_t;

/* One decoder layer. */
typedef struct exec_layer {
    int64_t index;
    bool is_moe;
    exec_home_t *home;               /* borrowed from the executor */
    moira_device_layer_t weights;    /* owned: the home device's part of the layer */
    moira_layer_program_t *program;  /* owned: the layer recorded on its home device */
    moira_mla_cache_t cache;         /* owned, on the home: slot s holds rows s*context.. */
    const moira_plan_layer_t *plan;  /* borrowed; NULL for a dense layer */
    moira_device_experts_t *experts; /* owned: one per exec target (empty where it holds none) */
    int32_t *replica_exec;           /* owned: per plan replica, its exec target */
    int32_t *replica_slot;           /* owned: per plan replica, its local expert number */
    int32_t *expert_first;           /* owned [E+1]: expert e's replicas are */
    int32_t *expert_replicas;        /* owned:  expert_replicas[expert_first[e] .. first[e+1]) */
    double *replica_rows;            /* owned: assignments each replica served here, last forward */
    double *sent_rows;     /* owned: assignments this rank sent to each replica on another host */
    double *received_rows; /* owned: assignments rows from other hosts brought to each replica */
    double *routed_load;   /* owned: scratch of measure.c, one per replica */
    double *expert_load;   /* owned [E]: assignments per expert, last forward */
} exec_layer_t;

/* The exchange of MoE layers with the ranks of other hosts (exchange.c). Every buffer holds one
 * block of `capacity` rows per rank, allocated once. A dispatched row is a token's normalised
 * activations [D] f32, then the k plan replicas it goes to on that host (-1: none there) and
 * their routing weights; a returned row is the host's partial sum [D] for that token. */
typedef struct exec_exchange {
    moira_cluster_t *cluster;     /* borrowed; NULL: one process, nothing to exchange */
    int host, n_hosts;            /* this rank's host (= rank) and the ranks */
    int64_t capacity;             /* rows per rank: max_tokens */
    int64_t row_bytes;            /* of a dispatched row */
    char *send, *recv;            /* owned: dispatched rows out, in */
    float *back_send, *back_recv; /* owned: partial sums out (of rows received), in */
    int32_t *send_token; /* owned [n_hosts * capacity]: the own token each row out carries */
    int64_t *send_rows, *recv_rows,
        *recv_first;                         /* owned [n_hosts]; recv_first: first foreign row */
    int64_t *bytes_out, *bytes_in, *offsets; /* dispatch: rank r's block at offsets[r] both ways */
    int64_t *back_bytes_out, *back_bytes_in, *back_send_offsets, *back_recv_offsets;
    int64_t foreign; /* rows received in the layer in flight */
    moira_cluster_exchange_t pending;
    const char **host_names; /* owned array of the topology's host names, for messages */
} exec_exchange_t;

struct moira_executor {
    const moira_model_config_t *model;    /* borrowed */
    const moira_layer_weights_t *weights; /* borrowed */
    const moira_topology_t *topology;     /* borrowed */
    const moira_plan_t *plan;             /* borrowed */
    moira_cost_model_t cost;
    double *cost_scratch;    /* owned */
    double *network_scratch; /* owned: moira_network_crossings' */
    double *target_rows;     /* owned [n_targets]: routing's running assignments */
    int *target_active;      /* owned [n_targets]: routing's running replicas with any */
    int64_t max_tokens;
    int64_t rows_capacity; /* rows a host serves in a layer: its own and every other rank's */
    exec_exchange_t exchange;
    int max_sequences; /* cache slots per layer; 0: no caches */
    int64_t context;
    moira_dtype_t cache_dtype;       /* F32 or BF16 */
    moira_program_sequence_t *batch; /* owned [max(max_sequences, 1)]: the step's sequences */
    int n_batch;
    int n_targets;
    exec_target_t *targets; /* owned */
    int n_homes;
    exec_home_t *homes; /* owned */
    int64_t n_layers;
    exec_layer_t *layers; /* owned */
    /* Host staging of the home side (owned): activations [max_tokens, D], routing [.., k];
     * normed has rows_capacity rows: the own tokens, then the rows other ranks sent. */
    float *act, *normed, *weight;
    int32_t *idx;
    int64_t forwards;         /* ever run, for positions_written */
    bool released;            /* moira_executor_release has run */
    bool stats_reset_pending; /* rank 0 reset its figures; the next forward tells the others */
    bool data_parallel;       /* every rank drives its own forwards (moira_exec_config_t) */
    moira_exec_stats_t stats;
};

/* Routes the layer's assignments (executor->idx / weight, T tokens) to replicas and fills every
 * target's rows, local expert numbers, weights and tokens, and the rows for other hosts
 * (route.c). Fill_rows then copies each target's rows' activations from executor->normed. */
void moira_exec_route(moira_executor_t *executor, exec_layer_t *layer, int64_t tokens);
void moira_exec_fill_rows(moira_executor_t *executor);

/* Gives assignment j of row-token `token` (an own token, or a row from another host numbered
 * after them) to replica r, which one of this host's targets holds. */
void moira_exec_assign(moira_executor_t *executor, exec_layer_t *layer, int32_t token, int64_t j,
                       int32_t replica, float weight);

/* The exchange (exchange.c). Open allocates its buffers (nothing without a cluster). Route_remote
 * adds assignment j of own token t to the row for replica r's host. Dispatch sends every rank
 * its rows and receives theirs; receive waits for them and routes them to this host's targets as
 * rows t, t+1, ... ; give_back returns the partial sums of those rows and adds what comes back to
 * e->act. */
moira_status_t moira_exec_exchange_open(moira_executor_t *executor);
void moira_exec_exchange_close(moira_executor_t *executor);
void moira_exec_route_remote(moira_executor_t *executor, int host, int32_t token, int64_t j,
                             int32_t replica, float weight);
void moira_exec_dispatch(moira_executor_t *executor, moira_exec_layer_stats_t *stats);
void moira_exec_receive(moira_executor_t *executor, exec_layer_t *layer, int64_t tokens,
                        moira_exec_layer_stats_t *stats);
void moira_exec_give_back(moira_executor_t *executor, moira_exec_layer_stats_t *stats);

/* The layers over the batch in executor->act (t rows; 0 on a rank that only serves other ranks'
 * rows), the sequences' caches bound per layer (forward.c). The residual stream stays on the
 * host between layers, so layers may change home. */
moira_status_t moira_exec_run_layers(moira_executor_t *executor, int64_t t,
                                     const moira_tensor_t *positions,
                                     const moira_exec_sequence_t *sequences, bool check_devices,
                                     moira_tensor_t *layer_inputs);

/* On the rank that drives a cluster, tells the others a forward starts (follow.c); a no-op in
 * one process. */
void moira_exec_announce(moira_executor_t *executor, bool check_devices);

/* A forward's result; in a cluster a failure part way ends the job (the other ranks would wait
 * for layers that never come), so only OK returns there. */
moira_status_t moira_exec_settle(moira_executor_t *executor, moira_status_t status);

/* Runs one target's stage on its worker: upload, dispatch, grouped FFN, combine, download
 * (stage.c). `context` is the exec_target_t. Sets its status and stage_s. */
void moira_exec_stage(void *context);

/* Adds the fp64 reference's verdict on the target's partial sums of this layer to its check
 * accumulators (check.c). */
moira_status_t moira_exec_check_target(const moira_executor_t *executor, const exec_layer_t *layer,
                                       exec_target_t *target);

/* Adds one MoE layer's observed load, the cost model's prediction for it, and the targets'
 * counters to the stats (measure.c). */
void moira_exec_measure_layer(moira_executor_t *executor, const exec_layer_t *layer,
                              moira_exec_layer_stats_t *stats);

#endif
