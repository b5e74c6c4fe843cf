/* The host side of the npu backend, shaped like Ascend's ACL runtime (aclrtSetDevice,
 * aclrtCreateStream, aclrtMalloc, aclrtMemcpy with its kinds, events), implemented over the
 * emulated DaVinci device. npu_device.c builds Moira's device interface on these calls only, so a
 * real CANN driver can replace this file without touching the rest of the backend.
 *
 * Errors use ACL's numbering classes: 1xxxxx the caller's mistake, 2xxxxx a resource ran out or is
 * missing, 5xxxxx an internal or device failure (an AI core exception is one). They reach the
 * user inside a Moira status whose message starts "ACL error NNNNNN (NAME)". */
#ifndef MOIRA_BACKENDS_NPU_ACL_H
#define MOIRA_BACKENDS_NPU_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/event.h"
#include "runtime/status.h"

typedef enum moira_acl_error {
    MOIRA_ACL_SUCCESS = 0,
    MOIRA_ACL_ERROR_INVALID_PARAM = 100000,
    MOIRA_ACL_ERROR_UNINITIALIZE = 100001,
    MOIRA_ACL_ERROR_RT_PARAM_INVALID = 107000,
    MOIRA_ACL_ERROR_RT_INVALID_DEVICEID = 107001,
    MOIRA_ACL_ERROR_RT_INVALID_MEMCPY_KIND = 107009,
    MOIRA_ACL_ERROR_BAD_ALLOC = 200000,
    MOIRA_ACL_ERROR_API_NOT_SUPPORT = 200001,
    MOIRA_ACL_ERROR_MEMORY_ADDRESS_UNALIGNED = 200003,
    MOIRA_ACL_ERROR_RT_MEMORY_ALLOCATION = 207001,
    MOIRA_ACL_ERROR_INTERNAL_ERROR = 500000,
    MOIRA_ACL_ERROR_RT_FAILURE = 500003,
    MOIRA_ACL_ERROR_RT_AICORE_EXCEPTION = 507015,
} moira_acl_error_t;

/* ACL's name for a code ("ACL_ERROR_RT_MEMORY_ALLOCATION"). Static storage. */
const char *moira_acl_error_name(moira_acl_error_t error);

/* A Moira status for an ACL error: the class picks the Moira code (1xxxxx INVALID_ARGUMENT,
 * 2xxxxx OUT_OF_MEMORY or UNSUPPORTED, 5xxxxx DEVICE). Caller owns the result. */
moira_status_t moira_acl_status(moira_acl_error_t error, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The shape of one emulated device (a 910B-like default; MOIRA_NPU_DEVICES changes it). */
typedef struct moira_npu_spec {
    int ai_cores;
    int cube_units_per_core;
    int vector_units_per_core;
    double clock_ghz;
    uint64_t hbm_bytes;
    double hbm_gbs;
    uint32_t l1_bytes, l0a_bytes, l0b_bytes, l0c_bytes, ub_bytes;
    uint32_t l1_align, l0a_align, l0b_align, l0c_align, ub_align;
} moira_npu_spec_t;

/* The default shape: 24 AI cores of one Cube and two Vector units at 1.8 GHz, 64 GiB of HBM at
 * 1600 GB/s, and the DaVinci buffer sizes and alignments. */
moira_npu_spec_t moira_npu_default_spec(void);

/* Reads MOIRA_NPU_DEVICES = COUNT[:AI_CORES[:HBM_GIB[:HBM_GBS]]] (for example "2:8:16:800");
 * unset means one default device. A malformed value is an INVALID_ARGUMENT naming it. */
moira_status_t moira_acl_configure_from_env(int *out_count, moira_npu_spec_t *out_spec);

/* ---- Devices (aclrtSetDevice / aclrtResetDevice) ---- */

typedef struct moira_acl_device moira_acl_device_t;

/* Opens device `id` with `spec`; the caller resets it with moira_acl_reset_device. */
moira_status_t moira_acl_set_device(int id, const moira_npu_spec_t *spec,
                                    moira_acl_device_t **out_device);
void moira_acl_reset_device(moira_acl_device_t *device);

/* The device's shape (borrowed, valid while the device is open). */
const moira_npu_spec_t *moira_acl_device_spec(const moira_acl_device_t *device);
int moira_acl_device_id(const moira_acl_device_t *device);

/* ---- Device memory (aclrtMalloc / aclrtFree) ---- */

/* Allocates `bytes` of HBM, 512-byte aligned like aclrtMalloc; fails with
 * ACL_ERROR_RT_MEMORY_ALLOCATION past the device's HBM size. The pointer is a device address:
 * only kernels and moira_acl_memcpy may touch it. Free with moira_acl_free. */
moira_status_t moira_acl_malloc(moira_acl_device_t *device, size_t bytes, void **out_dev_ptr);
void moira_acl_free(moira_acl_device_t *device, void *dev_ptr);

/* HBM bytes in use (sum of live allocations). */
uint64_t moira_acl_memory_used(moira_acl_device_t *device);

typedef enum moira_acl_memcpy_kind {
    MOIRA_ACL_MEMCPY_HOST_TO_DEVICE = 1,
    MOIRA_ACL_MEMCPY_DEVICE_TO_HOST = 2,
    MOIRA_ACL_MEMCPY_DEVICE_TO_DEVICE = 3,
} moira_acl_memcpy_kind_t;

/* ---- Streams (aclrtCreateStream): in-order task queues run by a worker thread ---- */

typedef struct moira_acl_stream moira_acl_stream_t;

/* One task on a stream. `run` is called on the stream's thread with the first earlier failure of
 * the stream (OK when none); a task that should not run after a failure returns at once. `release`
 * frees `arg` afterwards (may be NULL). */
typedef struct moira_acl_task {
    moira_status_t (*run)(void *arg, moira_status_t prior_failure);
    void (*release)(void *arg);
    void *arg; /* owned by the task */
} moira_acl_task_t;

moira_status_t moira_acl_create_stream(moira_acl_device_t *device, moira_acl_stream_t **out_stream);
/* Waits for the stream's work, then destroys it. An unreported failure is logged. */
void moira_acl_destroy_stream(moira_acl_stream_t *stream);

/* Appends a task; the stream owns it from here (released even when the submission fails). */
moira_status_t moira_acl_stream_submit(moira_acl_stream_t *stream, moira_acl_task_t task);

/* Blocks until the stream is idle; returns (and clears) its first failure. */
moira_status_t moira_acl_synchronize_stream(moira_acl_stream_t *stream);

moira_acl_device_t *moira_acl_stream_device(moira_acl_stream_t *stream);

/* Asynchronous copy of `bytes` (aclrtMemcpyAsync). The kind must match the pointers: a device
 * pointer is one moira_acl_malloc returned (or inside it), checked against its allocation.
 * `host` buffers are borrowed until the stream passes the copy. */
moira_status_t moira_acl_memcpy_async(moira_acl_stream_t *stream, void *dst, const void *src,
                                      size_t bytes, moira_acl_memcpy_kind_t kind);

/* Synchronous copy (aclrtMemcpy): the same checks as the asynchronous one, done when it returns. */
moira_status_t moira_acl_memcpy(moira_acl_device_t *device, void *dst, const void *src,
                                size_t bytes, moira_acl_memcpy_kind_t kind);

/* ---- Events (aclrtCreateEvent / aclrtSynchronizeEvent / aclrtDestroyEvent). ACL events are
 * Moira's events, so any backend's queue can record or wait for them. ---- */

/* Caller destroys the event with moira_acl_destroy_event. */
moira_status_t moira_acl_create_event(moira_event_t **out_event);
void moira_acl_destroy_event(moira_event_t *event);

/* Blocks until the event is recorded; returns the recording stream's failure, if any. */
moira_status_t moira_acl_synchronize_event(moira_event_t *event);

/* Records `event` when the stream reaches this point (aclrtRecordEvent); a failed stream passes
 * its failure to the event's waiters. The stream holds a reference meanwhile. */
moira_status_t moira_acl_record_event(moira_acl_stream_t *stream, moira_event_t *event);

/* Makes the stream wait for `event` (aclrtStreamWaitEvent), from any device. */
moira_status_t moira_acl_stream_wait_event(moira_acl_stream_t *stream, moira_event_t *event);

#endif
