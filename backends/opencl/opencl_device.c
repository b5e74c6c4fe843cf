/* The OpenCL backend: every device of every platform the ICD loader knows, with buffers as
 * cl_mem, each moira queue an in-order cl_command_queue, and moira events (backend-neutral
 * one-shot flags) bridged to CL events in both directions.
 *
 * Kernel sources are embedded in the binary (embed_kernels.cmake). The program is built for a
 * device on its first op launch, with a progress line on stderr, and its binary cached on disk
 * ($XDG_CACHE_HOME/moira or ~/.cache/moira) under a key of device, driver, source and options,
 * so later runs load it instead of compiling. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backends/opencl/opencl_internal.h"

#include "runtime/backend.h"
#include "runtime/fault.h"
#include "runtime/hash.h"
#include "runtime/log.h"
#include "runtime/program_cache.h"
#include <CL/cl_ext.h>

/* Kept stable: changing them changes the cache key, which is what should happen. */
static const char base_program_options[] = "-cl-std=CL1.2";

/* The build options: the base ones plus MOIRA_OPENCL_BUILD_OPTIONS (extra defines or driver
 * flags; part of the cache key like everything else that changes the binary) and the define an
 * injected build fault (MOIRA_FAULT=kernel-build, runtime/fault.h) switches on. */
static void program_options(char *out, size_t size) {
    const char *extra = getenv("MOIRA_OPENCL_BUILD_OPTIONS");
    const char *fault = moira_fault_kernel_build_options();
    snprintf(out, size, "%s%s%s%s%s", base_program_options, extra ? " " : "", extra ? extra : "",
             *fault ? " " : "", fault);
}

static const moira_device_vtable_t opencl_vtable;

/* ---- Errors ---- */

typedef struct cl_error_name {
    cl_int code;
    const char *name;
} cl_error_name_t;

#define CL_ERROR(c)                                                                                \
    { c, #c }
static const cl_error_name_t cl_error_names[] = {
    CL_ERROR(CL_SUCCESS),
    CL_ERROR(CL_DEVICE_NOT_FOUND),
    CL_ERROR(CL_DEVICE_NOT_AVAILABLE),
    CL_ERROR(CL_COMPILER_NOT_AVAILABLE),
    CL_ERROR(CL_MEM_OBJECT_ALLOCATION_FAILURE),
    CL_ERROR(CL_OUT_OF_RESOURCES),
    CL_ERROR(CL_OUT_OF_HOST_MEMORY),
    CL_ERROR(CL_PROFILING_INFO_NOT_AVAILABLE),
    CL_ERROR(CL_MEM_COPY_OVERLAP),
    CL_ERROR(CL_IMAGE_FORMAT_MISMATCH),
    CL_ERROR(CL_IMAGE_FORMAT_NOT_SUPPORTED),
    CL_ERROR(CL_BUILD_PROGRAM_FAILURE),
    CL_ERROR(CL_MAP_FAILURE),
    CL_ERROR(CL_MISALIGNED_SUB_BUFFER_OFFSET),
    CL_ERROR(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST),
    CL_ERROR(CL_COMPILE_PROGRAM_FAILURE),
    CL_ERROR(CL_LINKER_NOT_AVAILABLE),
    CL_ERROR(CL_LINK_PROGRAM_FAILURE),
    CL_ERROR(CL_DEVICE_PARTITION_FAILED),
    CL_ERROR(CL_KERNEL_ARG_INFO_NOT_AVAILABLE),
    CL_ERROR(CL_INVALID_VALUE),
    CL_ERROR(CL_INVALID_DEVICE_TYPE),
    CL_ERROR(CL_INVALID_PLATFORM),
    CL_ERROR(CL_INVALID_DEVICE),
    CL_ERROR(CL_INVALID_CONTEXT),
    CL_ERROR(CL_INVALID_QUEUE_PROPERTIES),
    CL_ERROR(CL_INVALID_COMMAND_QUEUE),
    CL_ERROR(CL_INVALID_HOST_PTR),
    CL_ERROR(CL_INVALID_MEM_OBJECT),
    CL_ERROR(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR),
    CL_ERROR(CL_INVALID_IMAGE_SIZE),
    CL_ERROR(CL_INVALID_SAMPLER),
    CL_ERROR(CL_INVALID_BINARY),
    CL_ERROR(CL_INVALID_BUILD_OPTIONS),
    CL_ERROR(CL_INVALID_PROGRAM),
    CL_ERROR(CL_INVALID_PROGRAM_EXECUTABLE),
    CL_ERROR(CL_INVALID_KERNEL_NAME),
    CL_ERROR(CL_INVALID_KERNEL_DEFINITION),
    CL_ERROR(CL_INVALID_KERNEL),
    CL_ERROR(CL_INVALID_ARG_INDEX),
    CL_ERROR(CL_INVALID_ARG_VALUE),
    CL_ERROR(CL_INVALID_ARG_SIZE),
    CL_ERROR(CL_INVALID_KERNEL_ARGS),
    CL_ERROR(CL_INVALID_WORK_DIMENSION),
    CL_ERROR(CL_INVALID_WORK_GROUP_SIZE),
    CL_ERROR(CL_INVALID_WORK_ITEM_SIZE),
    CL_ERROR(CL_INVALID_GLOBAL_OFFSET),
    CL_ERROR(CL_INVALID_EVENT_WAIT_LIST),
    CL_ERROR(CL_INVALID_EVENT),
    CL_ERROR(CL_INVALID_OPERATION),
    CL_ERROR(CL_INVALID_GL_OBJECT),
    CL_ERROR(CL_INVALID_BUFFER_SIZE),
    CL_ERROR(CL_INVALID_MIP_LEVEL),
    CL_ERROR(CL_INVALID_GLOBAL_WORK_SIZE),
    CL_ERROR(CL_INVALID_PROPERTY),
    CL_ERROR(CL_INVALID_IMAGE_DESCRIPTOR),
    CL_ERROR(CL_INVALID_COMPILER_OPTIONS),
    CL_ERROR(CL_INVALID_LINKER_OPTIONS),
    CL_ERROR(CL_INVALID_DEVICE_PARTITION_COUNT),
    CL_ERROR(CL_PLATFORM_NOT_FOUND_KHR),
};
#undef CL_ERROR

/* Names as the CL headers spell them, so a user can search for the error. */
const char *moira_opencl_error_name(cl_int code) {
    for (size_t i = 0; i < sizeof(cl_error_names) / sizeof(cl_error_names[0]); i++)
        if (cl_error_names[i].code == code) return cl_error_names[i].name;
    return "CL error (unknown code)";
}

/* Allocation failures map to OUT_OF_MEMORY so callers can tell "too big" from "broken". */
moira_status_t moira_opencl_error(cl_int code, const char *what) {
    moira_code_t kind = code == CL_OUT_OF_RESOURCES || code == CL_OUT_OF_HOST_MEMORY ||
                                code == CL_MEM_OBJECT_ALLOCATION_FAILURE
                            ? MOIRA_CODE_OUT_OF_MEMORY
                            : MOIRA_CODE_DEVICE;
    return moira_status_make(kind, "opencl: %s: %s (%d)", what, moira_opencl_error_name(code),
                             (int)code);
}

#define CL_CHECK(call, what)                                                                       \
    do {                                                                                           \
        cl_int cl_check_code_ = (call);                                                            \
        if (cl_check_code_ != CL_SUCCESS) return moira_opencl_error(cl_check_code_, what);         \
    } while (0)

/* ---- Program: embedded source, disk cache, build ---- */

/* Hashes the terminator too, so ("ab", "c") and ("a", "bc") give different keys. */
static uint64_t hash_string(uint64_t hash, const char *text) {
    return moira_fnv1a64(hash, text, strlen(text) + 1);
}

/* $XDG_CACHE_HOME/moira, else ~/.cache/moira; created if missing. False when neither can be. */
bool moira_opencl_cache_dir(char *out, size_t size) {
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    char parent[4096];
    if (xdg && xdg[0])
        snprintf(parent, sizeof(parent), "%s", xdg);
    else if (home && home[0])
        snprintf(parent, sizeof(parent), "%s/.cache", home);
    else
        return false;
    mkdir(parent, 0755);
    if ((size_t)snprintf(out, size, "%s/moira", parent) >= size) return false;
    return mkdir(out, 0755) == 0 || errno == EEXIST;
}

/* The cache file and its key (stored in the file's header, runtime/program_cache.h) for this
 * device, driver, source and options. */
static bool cache_path(const opencl_device_t *device, char *out, size_t size, uint64_t *out_key) {
    char dir[4096];
    if (!moira_opencl_cache_dir(dir, sizeof(dir))) return false;
    uint64_t key = MOIRA_FNV1A64_BASIS;
    key = hash_string(key, device->platform_name);
    key = hash_string(key, device->base.info.model);
    key = hash_string(key, device->base.info.driver_version);
    key = hash_string(key, device->device_version);
    char options[1024];
    program_options(options, sizeof(options));
    key = hash_string(key, options);
    key = moira_fnv1a64(key, moira_opencl_kernel_source, moira_opencl_kernel_source_length);
    *out_key = key;
    return (size_t)snprintf(out, size, "%s/opencl-%016llx.bin", dir, (unsigned long long)key) <
           size;
}

/* A program from the cache file, or NULL when there is none, Moira's header check refuses it
 * (truncated, corrupt, not a regular file, another key) or the driver rejects it (a driver
 * update): then the caller compiles from source and overwrites it. The driver only ever sees
 * bytes whose length and checksum Moira verified, since it trusts them blindly. */
static cl_program load_cached_program(opencl_device_t *device, const char *path, uint64_t key) {
    unsigned char *file = NULL;
    const unsigned char *binary = NULL;
    size_t size = 0;
    moira_status_t status = moira_program_cache_read(path, key, &file, &binary, &size);
    if (status) {
        if (moira_status_code(status) != MOIRA_CODE_NOT_FOUND)
            MOIRA_LOG_W("%s: ignoring the cached OpenCL program: %s; rebuilding it",
                        device->base.info.name, moira_status_message(status));
        moira_status_free(status);
        return NULL;
    }
    cl_int binary_status = CL_SUCCESS, code = CL_SUCCESS;
    const unsigned char *binaries[1] = {binary};
    cl_program program = clCreateProgramWithBinary(device->context, 1, &device->device, &size,
                                                   binaries, &binary_status, &code);
    free(file);
    if (code == CL_SUCCESS && binary_status == CL_SUCCESS) {
        char options[1024];
        program_options(options, sizeof(options));
        code = clBuildProgram(program, 1, &device->device, options, NULL, NULL);
        if (code == CL_SUCCESS) return program;
    } else if (code == CL_SUCCESS) {
        code = binary_status;
    }
    if (program) clReleaseProgram(program);
    MOIRA_LOG_W("%s: the driver refused the cached OpenCL program %s: %s (%d); rebuilding it",
                device->base.info.name, path, moira_opencl_error_name(code), (int)code);
    return NULL;
}

/* Stores the program binary under a checked header (runtime/program_cache.h), written beside
 * the final name, synced and renamed into place, so a concurrent run never reads half a file and
 * whatever was there before (a corrupt file, a FIFO, a symlink) is replaced. Failure only costs a
 * rebuild next time. */
static void save_program(opencl_device_t *device, cl_program program, const char *path,
                         uint64_t key) {
    size_t size = 0;
    if (clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, sizeof(size), &size, NULL) !=
            CL_SUCCESS ||
        size == 0)
        return;
    unsigned char *binary = malloc(size);
    if (!binary) return;
    unsigned char *binaries[1] = {binary};
    if (clGetProgramInfo(program, CL_PROGRAM_BINARIES, sizeof(binaries), binaries, NULL) ==
        CL_SUCCESS) {
        moira_status_t status = moira_program_cache_write(path, key, binary, size);
        if (status) {
            MOIRA_LOG_W("%s: could not cache the OpenCL program: %s", device->base.info.name,
                        moira_status_message(status));
            moira_status_free(status);
        }
    }
    free(binary);
}

/* The build log, for a failed build's error message. */
static moira_status_t build_failure(opencl_device_t *device, cl_program program, cl_int code) {
    size_t size = 0;
    clGetProgramBuildInfo(program, device->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &size);
    char *log = malloc(size + 1);
    if (log) {
        log[0] = '\0';
        clGetProgramBuildInfo(program, device->device, CL_PROGRAM_BUILD_LOG, size, log, NULL);
        log[size] = '\0';
    }
    moira_status_t status = moira_status_make(
        MOIRA_CODE_DEVICE, "opencl: building kernels for %s (%s) failed: %s (%d); build log:\n%s",
        device->base.info.name, device->base.info.model, moira_opencl_error_name(code), (int)code,
        log ? log : "(unavailable)");
    free(log);
    return status;
}

/* A monotonic clock for the progress line's timing. */
static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + now.tv_nsec * 1e-9;
}

/* Compiles the embedded source; the progress line tells a user why the first run pauses. */
static moira_status_t compile_program(opencl_device_t *device, const char *cache_file, uint64_t key,
                                      cl_program *out_program) {
    const char *sources[1] = {moira_opencl_kernel_source};
    size_t lengths[1] = {moira_opencl_kernel_source_length};
    cl_int code = CL_SUCCESS;
    cl_program program = clCreateProgramWithSource(device->context, 1, sources, lengths, &code);
    CL_CHECK(code, "clCreateProgramWithSource");
    fprintf(stderr, "moira: compiling OpenCL kernels for %s (%s), once per driver...",
            device->base.info.name, device->base.info.model);
    fflush(stderr);
    double start = seconds_now();
    char options[1024];
    program_options(options, sizeof(options));
    code = clBuildProgram(program, 1, &device->device, options, NULL, NULL);
    fprintf(stderr, " %s in %.1f s\n", code == CL_SUCCESS ? "done" : "FAILED",
            seconds_now() - start);
    if (code != CL_SUCCESS) {
        moira_status_t status = build_failure(device, program, code);
        clReleaseProgram(program);
        return status;
    }
    if (cache_file) save_program(device, program, cache_file, key);
    *out_program = program;
    return MOIRA_OK_STATUS;
}

/* Every kernel of `program` into device->kernels. On failure the kernels made so far are
 * released, so the caller can try another program. */
static moira_status_t create_kernels(opencl_device_t *device, cl_program program) {
    static const char *const names[KERNEL_COUNT] = {
#define MOIRA_OPENCL_KERNEL_NAME(name) #name,
        MOIRA_OPENCL_KERNELS(MOIRA_OPENCL_KERNEL_NAME)
#undef MOIRA_OPENCL_KERNEL_NAME
    };
    for (int k = 0; k < KERNEL_COUNT; k++) {
        cl_int code = CL_SUCCESS;
        device->kernels[k] = clCreateKernel(program, names[k], &code);
        if (code != CL_SUCCESS) {
            device->kernels[k] = NULL;
            for (int j = 0; j < k; j++) {
                clReleaseKernel(device->kernels[j]);
                device->kernels[j] = NULL;
            }
            return moira_status_annotate(moira_opencl_error(code, "clCreateKernel"), "kernel %s",
                                         names[k]);
        }
    }
    return MOIRA_OK_STATUS;
}

/* The cached binary when the driver accepts it and it holds every kernel, else a compile from
 * source that overwrites the cache file; then every kernel. A binary the driver loads but that
 * lacks a kernel (CL_INVALID_KERNEL_NAME) would otherwise fail every later run the same way. */
static moira_status_t build_once(opencl_device_t *device) {
    char path[4200];
    uint64_t key = 0;
    bool cacheable = cache_path(device, path, sizeof(path), &key);
    cl_program program = cacheable ? load_cached_program(device, path, key) : NULL;
    if (program) {
        moira_status_t status = create_kernels(device, program);
        if (!status) {
            MOIRA_LOG_I("%s: OpenCL program loaded from %s", device->base.info.name, path);
            device->program = program;
            return MOIRA_OK_STATUS;
        }
        MOIRA_LOG_W("%s: the cached OpenCL program %s is unusable: %s; rebuilding it",
                    device->base.info.name, path, moira_status_message(status));
        moira_status_free(status);
        clReleaseProgram(program);
    }
    MOIRA_RETURN_IF_ERROR(compile_program(device, cacheable ? path : NULL, key, &program));
    device->program = program;
    return create_kernels(device, program);
}

/* The first caller builds; the rest wait and share the outcome (a copy of the error). */
moira_status_t moira_opencl_ensure_program(opencl_device_t *device) {
    pthread_mutex_lock(&device->build_mutex);
    if (!device->build_attempted) {
        device->build_attempted = true;
        device->build_status = build_once(device);
    }
    moira_status_t status = device->build_status
                                ? moira_status_make(moira_status_code(device->build_status), "%s",
                                                    moira_status_message(device->build_status))
                                : MOIRA_OK_STATUS;
    pthread_mutex_unlock(&device->build_mutex);
    return status;
}

/* ---- Buffers ---- */

/* One cl_mem per buffer; the NUMA hint means nothing to a discrete or driver-managed device. */
static moira_status_t opencl_buffer_alloc(moira_device_t *base, size_t bytes, int numa_node,
                                          moira_buffer_t **out_buffer) {
    opencl_device_t *device = (opencl_device_t *)base;
    (void)numa_node;
    opencl_buffer_t *buffer = calloc(1, sizeof(*buffer));
    if (!buffer) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate a buffer");
    cl_int code = CL_SUCCESS;
    buffer->mem =
        clCreateBuffer(device->context, CL_MEM_READ_WRITE, bytes ? bytes : 1, NULL, &code);
    if (code != CL_SUCCESS) {
        free(buffer);
        return moira_status_annotate(moira_opencl_error(code, "clCreateBuffer"), "%s: %zu bytes",
                                     base->info.name, bytes);
    }
    buffer->base.device = base;
    buffer->base.size = bytes;
    *out_buffer = &buffer->base;
    return MOIRA_OK_STATUS;
}

/* CL keeps the memory alive until queued work using it is done, so freeing never races. */
static void opencl_buffer_free(moira_buffer_t *base) {
    opencl_buffer_t *buffer = (opencl_buffer_t *)base;
    clReleaseMemObject(buffer->mem);
    free(buffer);
}

/* Device memory is not host addressable through this interface; copies go through queues. */
static void *opencl_buffer_host_ptr(moira_buffer_t *buffer) {
    (void)buffer;
    return NULL;
}

/* ---- Queues ---- */

/* An in-order command queue: the moira queue contract is exactly CL's default ordering. */
static moira_status_t opencl_queue_create(moira_device_t *base, moira_queue_t **out_queue) {
    opencl_device_t *device = (opencl_device_t *)base;
    opencl_queue_t *queue = calloc(1, sizeof(*queue));
    if (!queue) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate a queue");
    cl_int code = CL_SUCCESS;
    queue->queue = clCreateCommandQueue(device->context, device->device, 0, &code);
    if (code != CL_SUCCESS) {
        free(queue);
        return moira_opencl_error(code, "clCreateCommandQueue");
    }
    pthread_mutex_init(&queue->failure_mutex, NULL);
    queue->base.device = base;
    *out_queue = &queue->base;
    return MOIRA_OK_STATUS;
}

/* Records the first asynchronous error; later ones are dropped (finish reports one). */
static void record_failure(opencl_queue_t *queue, moira_status_t failure) {
    pthread_mutex_lock(&queue->failure_mutex);
    if (!queue->failure)
        queue->failure = failure;
    else
        moira_status_free(failure);
    pthread_mutex_unlock(&queue->failure_mutex);
}

/* clFinish, then the first recorded asynchronous error (a failed foreign event) wins. */
static moira_status_t opencl_queue_finish(moira_queue_t *base) {
    opencl_queue_t *queue = (opencl_queue_t *)base;
    cl_int code = clFinish(queue->queue);
    pthread_mutex_lock(&queue->failure_mutex);
    moira_status_t failure = queue->failure;
    queue->failure = MOIRA_OK_STATUS;
    pthread_mutex_unlock(&queue->failure_mutex);
    if (failure) return failure;
    if (code != CL_SUCCESS) return moira_opencl_error(code, "clFinish");
    return MOIRA_OK_STATUS;
}

/* Waits for the queue's work first, as moira_queue_destroy promises. */
static void opencl_queue_destroy(moira_queue_t *base) {
    opencl_queue_t *queue = (opencl_queue_t *)base;
    moira_status_t failure = opencl_queue_finish(base);
    if (failure)
        MOIRA_LOG_W("queue destroyed with an unreported error: %s", moira_status_message(failure));
    moira_status_free(failure);
    clReleaseCommandQueue(queue->queue);
    pthread_mutex_destroy(&queue->failure_mutex);
    free(queue);
}

/* Non-blocking: the contract keeps `src` valid until the queue passes this point. */
static moira_status_t opencl_enqueue_write(moira_queue_t *base, moira_buffer_t *dst,
                                           size_t dst_offset, const void *src, size_t bytes) {
    opencl_queue_t *queue = (opencl_queue_t *)base;
    CL_CHECK(clEnqueueWriteBuffer(queue->queue, moira_opencl_mem(dst), CL_FALSE, dst_offset, bytes,
                                  src, 0, NULL, NULL),
             "clEnqueueWriteBuffer");
    return MOIRA_OK_STATUS;
}

/* Non-blocking: the contract keeps `dst` valid until the queue passes this point. */
static moira_status_t opencl_enqueue_read(moira_queue_t *base, moira_buffer_t *src,
                                          size_t src_offset, void *dst, size_t bytes) {
    opencl_queue_t *queue = (opencl_queue_t *)base;
    CL_CHECK(clEnqueueReadBuffer(queue->queue, moira_opencl_mem(src), CL_FALSE, src_offset, bytes,
                                 dst, 0, NULL, NULL),
             "clEnqueueReadBuffer");
    return MOIRA_OK_STATUS;
}

/* CL refuses overlapping copies within one buffer (memmove semantics are wanted), so those go
 * through a temporary buffer. */
static moira_status_t opencl_enqueue_copy(moira_queue_t *base, moira_buffer_t *src,
                                          size_t src_offset, moira_buffer_t *dst, size_t dst_offset,
                                          size_t bytes) {
    opencl_queue_t *queue = (opencl_queue_t *)base;
    cl_mem src_mem = moira_opencl_mem(src), dst_mem = moira_opencl_mem(dst);
    bool overlap =
        src_mem == dst_mem && src_offset < dst_offset + bytes && dst_offset < src_offset + bytes;
    if (!overlap) {
        CL_CHECK(clEnqueueCopyBuffer(queue->queue, src_mem, dst_mem, src_offset, dst_offset, bytes,
                                     0, NULL, NULL),
                 "clEnqueueCopyBuffer");
        return MOIRA_OK_STATUS;
    }
    opencl_device_t *device = (opencl_device_t *)base->device;
    cl_int code = CL_SUCCESS;
    cl_mem temp = clCreateBuffer(device->context, CL_MEM_READ_WRITE, bytes, NULL, &code);
    CL_CHECK(code, "clCreateBuffer");
    code = clEnqueueCopyBuffer(queue->queue, src_mem, temp, src_offset, 0, bytes, 0, NULL, NULL);
    if (code == CL_SUCCESS)
        code =
            clEnqueueCopyBuffer(queue->queue, temp, dst_mem, 0, dst_offset, bytes, 0, NULL, NULL);
    clReleaseMemObject(temp); /* freed by CL once the copies using it are done */
    CL_CHECK(code, "clEnqueueCopyBuffer");
    return MOIRA_OK_STATUS;
}

/* The device layer has checked the launch against the op's contract (moira_queue_launch). */
static moira_status_t opencl_enqueue_op(moira_queue_t *base, const moira_op_launch_t *launch) {
    opencl_device_t *device = (opencl_device_t *)base->device;
    MOIRA_RETURN_IF_ERROR(moira_opencl_ensure_program(device));
    pthread_mutex_lock(&device->launch_mutex);
    moira_status_t status = moira_opencl_run_op(device, (opencl_queue_t *)base, launch);
    pthread_mutex_unlock(&device->launch_mutex);
    return status;
}

/* ---- Events ---- */

/* Runs on the driver's thread when the marker completes (or fails). */
static void CL_CALLBACK marker_done(cl_event marker, cl_int exec_status, void *user_data) {
    moira_event_t *event = user_data;
    moira_status_t failure = MOIRA_OK_STATUS;
    if (exec_status < 0)
        failure = moira_opencl_error(exec_status, "work before a signalled event failed");
    moira_event_signal(event, failure);
    moira_event_release(event);
    clReleaseEvent(marker);
}

/* A marker whose completion callback signals the moira event; flushed so that it makes progress
 * even if nobody ever waits on this queue. */
static moira_status_t opencl_enqueue_signal(moira_queue_t *base, moira_event_t *event) {
    opencl_queue_t *queue = (opencl_queue_t *)base;
    cl_event marker = NULL;
    CL_CHECK(clEnqueueMarkerWithWaitList(queue->queue, 0, NULL, &marker),
             "clEnqueueMarkerWithWaitList");
    moira_event_retain(event);
    cl_int code = clSetEventCallback(marker, CL_COMPLETE, marker_done, event);
    if (code != CL_SUCCESS) {
        moira_event_release(event);
        clReleaseEvent(marker);
        return moira_opencl_error(code, "clSetEventCallback");
    }
    CL_CHECK(clFlush(queue->queue), "clFlush");
    return MOIRA_OK_STATUS;
}

typedef struct wait_bridge {
    moira_event_t *event;  /* owned reference */
    cl_event user_event;   /* owned reference */
    opencl_queue_t *queue; /* borrowed: the queue cannot finish before user_event completes */
} wait_bridge_t;

/* Waits for a foreign event off the submitting thread, then releases the CL user event the
 * queue's barrier waits on. A failed event fails the barrier and is recorded for finish. */
static void *wait_bridge_main(void *raw) {
    wait_bridge_t *bridge = raw;
    moira_status_t failure = moira_event_wait(bridge->event);
    if (failure) record_failure(bridge->queue, failure);
    clSetUserEventStatus(bridge->user_event, failure ? -1 : CL_COMPLETE);
    clReleaseEvent(bridge->user_event);
    moira_event_release(bridge->event);
    free(bridge);
    return NULL;
}

/* The event may be signalled by any backend's queue, possibly one this thread fills later, so
 * blocking here could deadlock: a user event gates a barrier instead, completed by a helper
 * thread when the moira event fires. */
static moira_status_t opencl_enqueue_wait(moira_queue_t *base, moira_event_t *event) {
    opencl_queue_t *queue = (opencl_queue_t *)base;
    opencl_device_t *device = (opencl_device_t *)base->device;
    if (moira_event_is_signalled(event)) {
        moira_status_t failure = moira_event_wait(event);
        if (failure) record_failure(queue, failure);
        return MOIRA_OK_STATUS;
    }
    cl_int code = CL_SUCCESS;
    cl_event user_event = clCreateUserEvent(device->context, &code);
    CL_CHECK(code, "clCreateUserEvent");
    code = clEnqueueBarrierWithWaitList(queue->queue, 1, &user_event, NULL);
    if (code != CL_SUCCESS) {
        clSetUserEventStatus(user_event, -1);
        clReleaseEvent(user_event);
        return moira_opencl_error(code, "clEnqueueBarrierWithWaitList");
    }
    wait_bridge_t *bridge = malloc(sizeof(*bridge));
    pthread_t thread;
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    bool started = false;
    int err = ENOMEM;
    if (bridge) {
        moira_event_retain(event);
        *bridge = (wait_bridge_t){.event = event, .user_event = user_event, .queue = queue};
        err = pthread_create(&thread, &attributes, wait_bridge_main, bridge);
        started = err == 0;
        if (!started) {
            moira_event_release(event);
            free(bridge);
        }
    }
    pthread_attr_destroy(&attributes);
    if (!started) {
        clSetUserEventStatus(user_event, -1);
        clReleaseEvent(user_event);
        return err == ENOMEM ? moira_status_make(MOIRA_CODE_OUT_OF_MEMORY,
                                                 "opencl: cannot allocate an event-wait thread")
                             : moira_thread_start_error(err, "an opencl event-wait thread");
    }
    return MOIRA_OK_STATUS;
}

/* ---- Devices ---- */

/* The same answer for every OpenCL device: every kernel works in f32 on every dtype. */
static bool opencl_supports_op(const moira_device_t *device, int op, moira_dtype_t weight_dtype) {
    (void)device;
    return moira_opencl_supports_op(op, weight_dtype);
}

/* Kernels and program before the context that owns them. */
static void opencl_device_destroy(moira_device_t *base) {
    opencl_device_t *device = (opencl_device_t *)base;
    for (int k = 0; k < KERNEL_COUNT; k++)
        if (device->kernels[k]) clReleaseKernel(device->kernels[k]);
    if (device->program) clReleaseProgram(device->program);
    moira_status_free(device->build_status);
    clReleaseContext(device->context);
    pthread_mutex_destroy(&device->build_mutex);
    pthread_mutex_destroy(&device->launch_mutex);
    free(device);
}

/* A string query, empty when the driver does not answer (some omit optional fields). */
static void device_string(cl_device_id id, cl_device_info what, char *out, size_t size) {
    out[0] = '\0';
    if (clGetDeviceInfo(id, what, size, out, NULL) != CL_SUCCESS) out[0] = '\0';
    out[size - 1] = '\0';
}

/* What `moira devices` shows: vendor, memory, compute units, fp16/fp64 support, driver version,
 * the PCI bus id when the driver reports it (cl_khr_pci_bus_info), and local memory. */
static void describe_device(opencl_device_t *device, int index) {
    moira_device_info_t *info = &device->base.info;
    snprintf(info->name, sizeof(info->name), "opencl:%d", index);
    snprintf(info->backend, sizeof(info->backend), "opencl");
    info->index = index;
    info->numa_node = -1;
    info->compute_precision = MOIRA_DTYPE_F32;
    cl_device_id id = device->device;
    device_string(id, CL_DEVICE_NAME, info->model, sizeof(info->model));
    device_string(id, CL_DEVICE_VENDOR, info->vendor, sizeof(info->vendor));
    device_string(id, CL_DRIVER_VERSION, info->driver_version, sizeof(info->driver_version));
    device_string(id, CL_DEVICE_VERSION, device->device_version, sizeof(device->device_version));
    cl_device_type type = 0;
    clGetDeviceInfo(id, CL_DEVICE_TYPE, sizeof(type), &type, NULL);
    info->kind = type & CL_DEVICE_TYPE_CPU ? MOIRA_DEVICE_KIND_CPU : MOIRA_DEVICE_KIND_GPU;
    cl_ulong memory = 0, local_memory = 0;
    clGetDeviceInfo(id, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof(memory), &memory, NULL);
    clGetDeviceInfo(id, CL_DEVICE_LOCAL_MEM_SIZE, sizeof(local_memory), &local_memory, NULL);
    info->memory_bytes = memory;
    cl_uint units = 0, clock_mhz = 0;
    clGetDeviceInfo(id, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(units), &units, NULL);
    clGetDeviceInfo(id, CL_DEVICE_MAX_CLOCK_FREQUENCY, sizeof(clock_mhz), &clock_mhz, NULL);
    info->compute_units = (int)units;
    size_t extensions_size = 0;
    clGetDeviceInfo(id, CL_DEVICE_EXTENSIONS, 0, NULL, &extensions_size);
    char *extensions = calloc(1, extensions_size + 1);
    if (extensions) clGetDeviceInfo(id, CL_DEVICE_EXTENSIONS, extensions_size, extensions, NULL);
    bool fp16 = extensions && strstr(extensions, "cl_khr_fp16");
    bool fp64 = extensions && strstr(extensions, "cl_khr_fp64");
    if (extensions && strstr(extensions, "cl_khr_pci_bus_info")) {
        cl_device_pci_bus_info_khr bus = {0};
        if (clGetDeviceInfo(id, CL_DEVICE_PCI_BUS_INFO_KHR, sizeof(bus), &bus, NULL) == CL_SUCCESS)
            snprintf(info->pci_bus_id, sizeof(info->pci_bus_id), "%04x:%02x:%02x.%x",
                     bus.pci_domain, bus.pci_bus, bus.pci_device, bus.pci_function);
    }
    free(extensions);
    moira_device_info_add_detail(info, "vendor", false, "%s", info->vendor);
    moira_device_info_add_detail(info, "driver_version", false, "%s", info->driver_version);
    if (info->pci_bus_id[0])
        moira_device_info_add_detail(info, "pci_bus_id", false, "%s", info->pci_bus_id);
    moira_device_info_add_detail(info, "platform", false, "%s", device->platform_name);
    moira_device_info_add_detail(info, "opencl_version", false, "%s", device->device_version);
    moira_device_info_add_detail(info, "fp16", true, "%s", fp16 ? "true" : "false");
    moira_device_info_add_detail(info, "fp64", true, "%s", fp64 ? "true" : "false");
    moira_device_info_add_detail(info, "local_memory_bytes", true, "%llu",
                                 (unsigned long long)local_memory);
    moira_device_info_add_detail(info, "max_clock_mhz", true, "%u", clock_mhz);
}

/* Bandwidth and peak as measured on the device (cached, opencl_speed.c); every kernel computes
 * in f32, so that peak stands for every dtype. A device that cannot be measured reports none. */
static void report_speed(opencl_device_t *device) {
    moira_device_info_t *info = &device->base.info;
    double gbs = 0, tflops = 0;
    moira_status_t status = moira_opencl_speed(device, true, &gbs, &tflops);
    if (status) {
        MOIRA_LOG_W("%s: cannot measure its bandwidth and peak: %s", info->name,
                    moira_status_message(status));
        moira_status_free(status);
        return;
    }
    if (!(gbs > 0 && tflops > 0)) return;
    info->bandwidth_gbs = gbs;
    info->peak_tflops[MOIRA_DTYPE_F32] = info->peak_tflops[MOIRA_DTYPE_F16] =
        info->peak_tflops[MOIRA_DTYPE_BF16] = tflops;
    moira_device_info_add_detail(info, "speed", false, "measured");
}

/* One context per device, so a failing device cannot take the others down. */
static moira_status_t new_device(cl_platform_id platform, cl_device_id id, int index,
                                 moira_device_t **out_device) {
    opencl_device_t *device = calloc(1, sizeof(*device));
    if (!device) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate a device");
    cl_int code = CL_SUCCESS;
    cl_context_properties properties[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)platform, 0};
    device->context = clCreateContext(properties, 1, &id, NULL, NULL, &code);
    if (code != CL_SUCCESS) {
        free(device);
        return moira_opencl_error(code, "clCreateContext");
    }
    device->platform = platform;
    device->device = id;
    if (clGetPlatformInfo(platform, CL_PLATFORM_NAME, sizeof(device->platform_name),
                          device->platform_name, NULL) != CL_SUCCESS)
        device->platform_name[0] = '\0';
    device->platform_name[sizeof(device->platform_name) - 1] = '\0';
    pthread_mutex_init(&device->build_mutex, NULL);
    pthread_mutex_init(&device->launch_mutex, NULL);
    device->base.vtable = &opencl_vtable;
    describe_device(device, index);
    report_speed(device);
    *out_device = &device->base;
    return MOIRA_OK_STATUS;
}

/* Every device of every platform, in the ICD loader's order. No platform (no ICD, or a loader
 * without drivers) is an error the registry reports as the backend being unavailable; a device
 * whose context cannot be made is skipped with a warning. */
static moira_status_t opencl_enumerate(moira_device_t **out_devices, int capacity, int *out_count) {
    *out_count = 0;
    cl_uint n_platforms = 0;
    cl_int code = clGetPlatformIDs(0, NULL, &n_platforms);
    if (code != CL_SUCCESS || n_platforms == 0)
        return moira_status_make(
            MOIRA_CODE_UNSUPPORTED, "no OpenCL platform found (ICD loader: %s)",
            code == CL_SUCCESS ? "no drivers installed" : moira_opencl_error_name(code));
    cl_platform_id platforms[16];
    if (n_platforms > 16) n_platforms = 16;
    CL_CHECK(clGetPlatformIDs(n_platforms, platforms, NULL), "clGetPlatformIDs");
    int count = 0;
    for (cl_uint p = 0; p < n_platforms && count < capacity; p++) {
        cl_uint n_devices = 0;
        if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, 0, NULL, &n_devices) != CL_SUCCESS)
            continue;
        cl_device_id ids[64];
        if (n_devices > 64) n_devices = 64;
        if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, n_devices, ids, NULL) != CL_SUCCESS)
            continue;
        for (cl_uint d = 0; d < n_devices && count < capacity; d++) {
            moira_status_t status = new_device(platforms[p], ids[d], count, &out_devices[count]);
            if (status) {
                MOIRA_LOG_W("opencl: skipping a device: %s", moira_status_message(status));
                moira_status_free(status);
                continue;
            }
            count++;
        }
    }
    *out_count = count;
    if (count == 0)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                 "%u OpenCL platform(s) but no usable device", n_platforms);
    return MOIRA_OK_STATUS;
}

static const moira_device_vtable_t opencl_vtable = {
    .destroy = opencl_device_destroy,
    .buffer_alloc = opencl_buffer_alloc,
    .buffer_free = opencl_buffer_free,
    .buffer_host_ptr = opencl_buffer_host_ptr,
    .queue_create = opencl_queue_create,
    .queue_destroy = opencl_queue_destroy,
    .enqueue_write = opencl_enqueue_write,
    .enqueue_read = opencl_enqueue_read,
    .enqueue_copy = opencl_enqueue_copy,
    .enqueue_op = opencl_enqueue_op,
    .enqueue_signal = opencl_enqueue_signal,
    .enqueue_wait = opencl_enqueue_wait,
    .queue_finish = opencl_queue_finish,
    .supports_op = opencl_supports_op,
};

static const moira_backend_t opencl_backend = {.name = "opencl", .enumerate = opencl_enumerate};

/* Called by the generated registry (backends/registry_builtin.c.in). */
moira_status_t moira_backend_opencl_register(void) {
    return moira_backend_register(&opencl_backend);
}
