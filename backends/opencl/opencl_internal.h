/* What the OpenCL backend's files share: its device, buffer and queue objects, the compiled
 * kernels, CL error names and the op launchers. Private to backends/opencl/. */
#ifndef MOIRA_BACKENDS_OPENCL_INTERNAL_H
#define MOIRA_BACKENDS_OPENCL_INTERNAL_H

/* OpenCL 1.2 is what every driver of interest implements; pkg-config may ask for a newer API. */
#undef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <pthread.h>
#include <stdbool.h>

#include "ops/op.h"
#include "runtime/device.h"

/* Every kernel of the embedded program, by the name it has in kernels/ (.cl files). */
#define MOIRA_OPENCL_KERNELS(X)                                                                    \
    X(moira_rmsnorm)                                                                               \
    X(moira_copy_rows)                                                                             \
    X(moira_rope)                                                                                  \
    X(moira_linear)                                                                                \
    X(moira_linear_narrow)                                                                         \
    X(moira_linear_rows)                                                                           \
    X(moira_swiglu_up)                                                                             \
    X(moira_silu_mul)                                                                              \
    X(moira_gate_route)                                                                            \
    X(moira_gate_capacity)                                                                         \
    X(moira_moe_dispatch)                                                                          \
    X(moira_moe_tiles)                                                                             \
    X(moira_moe_up)                                                                                \
    X(moira_moe_down)                                                                              \
    X(moira_moe_up_mxfp4)                                                                          \
    X(moira_moe_down_mxfp4)                                                                        \
    X(moira_moe_up_int8)                                                                           \
    X(moira_moe_down_int8)                                                                         \
    X(moira_moe_combine)                                                                           \
    X(moira_mla_attend)

#define MOIRA_OPENCL_KERNEL_ENUM(name) KERNEL_##name,
typedef enum opencl_kernel_id {
    MOIRA_OPENCL_KERNELS(MOIRA_OPENCL_KERNEL_ENUM) KERNEL_COUNT
} opencl_kernel_id_t;

#define MOIRA_OPENCL_MAX_GEMM_CHOICES 64

typedef struct opencl_device {
    moira_device_t base;
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    char platform_name[128];
    char device_version[128];
    /* The program is built on first use (compile_once); `build_status` is its outcome, kept
     * so that every later launch reports the same error. Guarded by `build_mutex`. */
    pthread_mutex_t build_mutex;
    bool build_attempted;
    moira_status_t build_status; /* owned */
    cl_program program;
    /* Kernel objects are not thread safe to set arguments on: `launch_mutex` serialises
     * argument setting and enqueueing across this device's queues. */
    pthread_mutex_t launch_mutex;
    cl_kernel kernels[KERNEL_COUNT];
    /* LINEAR shapes measured so far and whether CLBlast won (guarded by launch_mutex). */
    struct {
        int64_t tokens, out_features, in_features;
        bool use_clblast;
    } gemm_choices[MOIRA_OPENCL_MAX_GEMM_CHOICES];
    int n_gemm_choices;
} opencl_device_t;

/* The device's read bandwidth (GB/s) and f32 peak (TFLOP/s): from the cache beside the program
 * cache, else (when `may_measure`) timed on the device with two small kernels and cached. Zeros
 * when neither. Errors: DEVICE when the driver fails the measurement. */
moira_status_t moira_opencl_speed(opencl_device_t *device, bool may_measure, double *out_gbs,
                                  double *out_tflops);

typedef struct opencl_buffer {
    moira_buffer_t base;
    cl_mem mem;
} opencl_buffer_t;

typedef struct opencl_queue {
    moira_queue_t base;
    cl_command_queue queue;
    pthread_mutex_t failure_mutex;
    moira_status_t failure; /* first asynchronous error (a failed wait), owned */
} opencl_queue_t;

/* "CL_OUT_OF_RESOURCES" for -5; "CL error N" for codes it does not know. */
const char *moira_opencl_error_name(cl_int code);

/* A DEVICE status "WHAT: CL_NAME (code)" for a failed CL call. */
moira_status_t moira_opencl_error(cl_int code, const char *what);

/* $XDG_CACHE_HOME/moira, else ~/.cache/moira, created if missing; false when neither can be. */
bool moira_opencl_cache_dir(char *out, size_t size);

/* Builds (or loads from the disk cache) the device's program and creates its kernels, once. */
moira_status_t moira_opencl_ensure_program(opencl_device_t *device);

/* The buffer's cl_mem. */
static inline cl_mem moira_opencl_mem(const moira_buffer_t *buffer) {
    return ((const opencl_buffer_t *)buffer)->mem;
}

/* Enqueues one validated launch on `queue` (the caller holds device->launch_mutex). */
moira_status_t moira_opencl_run_op(opencl_device_t *device, opencl_queue_t *queue,
                                   const moira_op_launch_t *launch);

/* Whether a kernel exists for `op` with weights of `weight_dtype`. */
bool moira_opencl_supports_op(int op, moira_dtype_t weight_dtype);

/* The embedded kernel sources (generated at build time from kernels/ (.cl files)). */
extern const char moira_opencl_kernel_source[];
extern const size_t moira_opencl_kernel_source_length;

#endif
