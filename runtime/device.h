/* The device abstraction layer: devices, buffers, queues and op launches.
 *
 * The split follows ggml-backend and IREE's HAL. A backend (backend.h) enumerates devices. A
 * device owns memory (buffers) and runs work submitted to its queues. Queues are asynchronous and
 * in order; events (event.h) order work across queues and devices. Ops (ops/) describe their work
 * as a moira_op_launch_t over device tensors; each backend implements the kernels and answers
 * whether it supports an op for a weight dtype.
 *
 * Every object here has the same shape: a struct that a backend embeds as its first member, whose
 * `vtable` points at the backend's functions. Callers only use the moira_* functions below. */
#ifndef MOIRA_RUNTIME_DEVICE_H
#define MOIRA_RUNTIME_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/dtype.h"
#include "runtime/event.h"
#include "runtime/status.h"

typedef enum moira_device_kind {
    MOIRA_DEVICE_KIND_CPU = 0,
    MOIRA_DEVICE_KIND_GPU,
    MOIRA_DEVICE_KIND_NPU,
} moira_device_kind_t;

const char *moira_device_kind_name(moira_device_kind_t kind);

#define MOIRA_DEVICE_MAX_DETAILS 24

/* A backend-specific fact shown by `moira devices` ("l0c_bytes" = "131072"). */
typedef struct moira_device_detail {
    char key[32];
    char value[96];
    bool is_number; /* printed bare in JSON */
} moira_device_detail_t;

/* What a device reports about itself (DESIGN.md §3). Zero means unknown. */
typedef struct moira_device_info {
    char name[32];    /* "cpu:0", "opencl:1", "npu:0" */
    char backend[16]; /* "cpu" */
    int index;        /* INDEX in BACKEND:INDEX */
    moira_device_kind_t kind;
    char model[128]; /* "Intel(R) Xeon(R) Platinum 8480+" */
    char vendor[64];
    char driver_version[64];
    uint64_t memory_bytes;
    int compute_units;
    double peak_tflops[MOIRA_DTYPE_COUNT]; /* by compute dtype; 0 = not supported or unknown */
    double bandwidth_gbs;
    char pci_bus_id[32]; /* "0000:3b:00.0", "" when unknown */
    int numa_node;       /* -1 when unknown */
    /* The narrowest type the device computes in (f32 for cpu; bf16 for an NPU's cube): decides
     * which of DESIGN.md §4's tolerances its results are held to. */
    moira_dtype_t compute_precision;
    /* What activations meet MXFP4 and INT8 weights in, when narrower than compute_precision:
     * INT8 where the device quantises them per token (W8A8, W4A8: the cpu's int8 tiles); F32
     * (the default) where it decodes the weights and computes as usual. */
    moira_dtype_t quantized_precision;
    /* A software model of a device (the npu emulator): its memory is host memory and its real
     * speed the host's; default plans leave it out (placement/topology.h). */
    bool emulated;
    int n_details;
    moira_device_detail_t details[MOIRA_DEVICE_MAX_DETAILS];
} moira_device_info_t;

typedef struct moira_device moira_device_t;
typedef struct moira_buffer moira_buffer_t;
typedef struct moira_queue moira_queue_t;

/* A tensor in device memory: a window of a buffer. Rows (the second-to-last dimension) may be
 * `row_stride` elements apart so kernels can read a column slice in place (MLA splits [c | k_pe]
 * that way); the last dimension is always contiguous. Weights with scales (fp8 blocks, MXFP4,
 * INT8: runtime/weight_format.h) keep them in the same buffer at `scale_offset`, one matrix's
 * after another; quantised weights are always contiguous. */
typedef struct moira_dtensor {
    moira_buffer_t *buffer; /* borrowed */
    size_t offset;          /* bytes from the buffer's start */
    moira_dtype_t dtype;
    int rank;
    int64_t shape[4];
    int64_t row_stride;  /* elements between rows; 0 = contiguous (the last dimension) */
    size_t scale_offset; /* scaled formats only: bytes from the buffer's start to the scales */
} moira_dtensor_t;

#define MOIRA_OP_MAX_OPERANDS 16
#define MOIRA_OP_MAX_PARAMS_BYTES 1024

/* One kernel launch: an op kind (ops/op.h), its parameters (copied at submission) and its
 * operands, inputs then outputs, in the order ops/op.h defines for that op. */
typedef struct moira_op_launch {
    int op;
    const void *params; /* borrowed until the launch is submitted */
    size_t params_size;
    int n_operands;
    moira_dtensor_t operands[MOIRA_OP_MAX_OPERANDS];
} moira_op_launch_t;

typedef struct moira_device_vtable {
    void (*destroy)(moira_device_t *device);
    moira_status_t (*buffer_alloc)(moira_device_t *device, size_t bytes, int numa_node,
                                   moira_buffer_t **out_buffer);
    void (*buffer_free)(moira_buffer_t *buffer);
    /* Host address of a buffer's memory when the host can touch it directly, else NULL. */
    void *(*buffer_host_ptr)(moira_buffer_t *buffer);
    moira_status_t (*queue_create)(moira_device_t *device, moira_queue_t **out_queue);
    void (*queue_destroy)(moira_queue_t *queue);
    moira_status_t (*enqueue_write)(moira_queue_t *queue, moira_buffer_t *dst, size_t dst_offset,
                                    const void *src, size_t bytes);
    moira_status_t (*enqueue_read)(moira_queue_t *queue, moira_buffer_t *src, size_t src_offset,
                                   void *dst, size_t bytes);
    moira_status_t (*enqueue_copy)(moira_queue_t *queue, moira_buffer_t *src, size_t src_offset,
                                   moira_buffer_t *dst, size_t dst_offset, size_t bytes);
    moira_status_t (*enqueue_op)(moira_queue_t *queue, const moira_op_launch_t *launch);
    moira_status_t (*enqueue_signal)(moira_queue_t *queue, moira_event_t *event);
    moira_status_t (*enqueue_wait)(moira_queue_t *queue, moira_event_t *event);
    moira_status_t (*queue_finish)(moira_queue_t *queue);
    bool (*supports_op)(const moira_device_t *device, int op, moira_dtype_t weight_dtype);
    /* Optional, NULL when the backend has no cost model (the npu has one): the modelled device
     * time, in microseconds, of every op the queue has run so far. */
    bool (*queue_modelled_us)(moira_queue_t *queue, double *out_us);
    /* Optional, NULL when the backend reads weights as uploaded: builds the device's own layout
     * of weights that `op` reads (the cpu packs expert matrices into GEMM panels), so the first
     * launch does not pay for it. */
    moira_status_t (*prepare_weights)(moira_device_t *device, int op,
                                      const moira_dtensor_t *weights, int n_weights);
} moira_device_vtable_t;

struct moira_device {
    const moira_device_vtable_t *vtable;
    moira_device_info_t info;
};

struct moira_buffer {
    moira_device_t *device; /* borrowed */
    size_t size;
};

struct moira_queue {
    moira_device_t *device; /* borrowed */
};

/* Allocates `bytes` of device memory, on NUMA node `numa_node` where the device has such a notion
 * (-1: wherever the device likes). Caller frees with moira_buffer_free. */
moira_status_t moira_buffer_alloc(moira_device_t *device, size_t bytes, int numa_node,
                                  moira_buffer_t **out_buffer);
void moira_buffer_free(moira_buffer_t *buffer);

/* How many times moira_buffer_alloc has been called in this process, on any device and thread,
 * whether or not the allocation succeeded: a test reads it before and after a decode step to
 * prove the step allocates no device memory (DESIGN.md §3). */
uint64_t moira_device_allocation_count(void);

/* The buffer's host address when the host can use it directly (cpu backend), else NULL. */
void *moira_buffer_host_ptr(moira_buffer_t *buffer);

/* Creates an in-order queue on the device. Caller destroys it with moira_queue_destroy, which
 * waits for the queue's work first. */
moira_status_t moira_queue_create(moira_device_t *device, moira_queue_t **out_queue);
void moira_queue_destroy(moira_queue_t *queue);

/* Host -> device. `src` is borrowed until the queue has passed this point (moira_queue_finish or
 * a signalled event). */
moira_status_t moira_queue_write(moira_queue_t *queue, moira_buffer_t *dst, size_t dst_offset,
                                 const void *src, size_t bytes);

/* Device -> host. `dst` must stay valid until the queue has passed this point. */
moira_status_t moira_queue_read(moira_queue_t *queue, moira_buffer_t *src, size_t src_offset,
                                void *dst, size_t bytes);

/* Device -> device on one device. Across devices use moira_copy_across. */
moira_status_t moira_queue_copy(moira_queue_t *queue, moira_buffer_t *src, size_t src_offset,
                                moira_buffer_t *dst, size_t dst_offset, size_t bytes);

/* Submits a kernel launch after checking it once for every backend: each operand lies inside a
 * buffer of the queue's device, and the launch meets its op's operand contract (the check
 * registered with moira_device_set_launch_check). The params are copied. */
moira_status_t moira_queue_launch(moira_queue_t *queue, const moira_op_launch_t *launch);

/* The op contract check moira_queue_launch applies (ops/op.c's moira_op_validate; the runtime
 * cannot name ops/ itself, so the built-in registry wires it in at moira_runtime_init). */
typedef moira_status_t (*moira_launch_check_fn)(const moira_op_launch_t *launch);
void moira_device_set_launch_check(moira_launch_check_fn check);

/* Signals `event` when the queue reaches this point. The queue holds a reference meanwhile. */
moira_status_t moira_queue_signal(moira_queue_t *queue, moira_event_t *event);

/* Makes the queue wait for `event`, which may come from any device's queue. */
moira_status_t moira_queue_wait(moira_queue_t *queue, moira_event_t *event);

/* Blocks until all submitted work is done; returns the first asynchronous error, if any. */
moira_status_t moira_queue_finish(moira_queue_t *queue);

/* Copies between buffers of possibly different devices: directly on one device, else through a
 * host staging buffer. Blocks until the copy is done. */
moira_status_t moira_copy_across(moira_queue_t *src_queue, moira_buffer_t *src, size_t src_offset,
                                 moira_queue_t *dst_queue, moira_buffer_t *dst, size_t dst_offset,
                                 size_t bytes);

/* The modelled device time (microseconds) of every op the queue has run, for backends with a
 * cost model; false otherwise. Call on an idle queue (after moira_queue_finish). */
bool moira_queue_modelled_us(moira_queue_t *queue, double *out_us);

/* Lets the device prepare weights that `op` (ops/op.h) will read, given in the op's operand order
 * (MOE_FFN: W1, W3, W2), once they are written and the queue that wrote them has finished. The
 * weights keep their plain layout for every other reader; a device may keep a copy in its own
 * layout beside them. A no-op for devices that do not need it. */
moira_status_t moira_device_prepare_weights(moira_device_t *device, int op,
                                            const moira_dtensor_t *weights, int n_weights);

/* Whether the device has a kernel for `op` (ops/op.h) with weights of `weight_dtype`; for
 * MLA_DECODE_ATTENTION, which has no weights, with a latent cache of that dtype (ops/op.h). */
bool moira_device_supports(const moira_device_t *device, int op, moira_dtype_t weight_dtype);

/* Borrowed; valid while the device exists. */
const moira_device_info_t *moira_device_info(const moira_device_t *device);

/* Adds a detail line to a device's info (used by backends while describing a device). */
void moira_device_info_add_detail(moira_device_info_t *info, const char *key, bool is_number,
                                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* DESIGN.md §4's NMSE limit for results computed in `precision` (f32 1e-6, f16 1e-4, bf16 2e-3,
 * INT8 (activations quantised per token) 5e-3, fp8 2e-2). */
double moira_precision_nmse_limit(moira_dtype_t precision);

/* Bytes spanned by a device tensor from its offset (rows times row stride, or rows times the
 * format's row bytes for quantised weights; scales are not counted). Used to validate that a tensor
 * lies inside its buffer. */
size_t moira_dtensor_span_bytes(const moira_dtensor_t *tensor);

/* Number of elements. */
int64_t moira_dtensor_numel(const moira_dtensor_t *tensor);

/* Elements between rows (row_stride, or the last dimension when contiguous). */
int64_t moira_dtensor_row_stride(const moira_dtensor_t *tensor);

#endif
