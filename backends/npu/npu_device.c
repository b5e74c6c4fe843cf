/* The npu backend's device interface, written on the ACL-shaped host API (acl.h) only: buffers
 * are HBM allocations, queues are streams, writes/reads/copies are memcpy kinds H2D/D2H/D2D, ops
 * are kernel launches on the device's AI cores. Each op launch logs its modelled device time at
 * info level (`moira op --verbose`), and the queue keeps the totals. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/npu/npu_device.h"
#include "backends/npu/npu_kernels.h"
#include "runtime/backend.h"
#include "runtime/log.h"

typedef struct npu_device {
    moira_device_t base;
    moira_acl_device_t *acl;      /* owned (reset at destroy) */
    moira_npu_machine_t *machine; /* owned */
} npu_device_t;

typedef struct npu_queue {
    moira_queue_t base;
    moira_acl_stream_t *stream; /* owned */
    /* Written only by the stream's thread; read by the owner after a finish. */
    moira_npu_launch_report_t total, last;
    int launches;
} npu_queue_t;

static const moira_device_vtable_t npu_vtable;

/* A buffer is one aclrtMalloc; NUMA placement means nothing to device memory. */
static moira_status_t npu_buffer_alloc(moira_device_t *base, size_t bytes, int numa_node,
                                       moira_buffer_t **out_buffer) {
    npu_device_t *device = (npu_device_t *)base;
    (void)numa_node;
    moira_npu_buffer_t *buffer = calloc(1, sizeof(*buffer));
    if (!buffer) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "buffer descriptor");
    void *hbm = NULL;
    moira_status_t status = moira_acl_malloc(device->acl, bytes, &hbm);
    if (status) {
        free(buffer);
        return moira_status_annotate(status, "%s", base->info.name);
    }
    buffer->hbm = hbm;
    buffer->base.device = base;
    buffer->base.size = bytes;
    *out_buffer = &buffer->base;
    return MOIRA_OK_STATUS;
}

/* Returns the HBM to the device's ledger. */
static void npu_buffer_free(moira_buffer_t *base) {
    moira_npu_buffer_t *buffer = (moira_npu_buffer_t *)base;
    moira_acl_free(((npu_device_t *)base->device)->acl, buffer->hbm);
    free(buffer);
}

/* Device memory is not host memory: callers go through queue reads and writes. */
static void *npu_buffer_host_ptr(moira_buffer_t *buffer) {
    (void)buffer;
    return NULL;
}

/* A queue is an ACL stream plus the cost totals of what it ran. */
static moira_status_t npu_queue_create(moira_device_t *base, moira_queue_t **out_queue) {
    npu_device_t *device = (npu_device_t *)base;
    npu_queue_t *queue = calloc(1, sizeof(*queue));
    if (!queue) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "queue");
    moira_status_t status = moira_acl_create_stream(device->acl, &queue->stream);
    if (status) {
        free(queue);
        return status;
    }
    queue->base.device = base;
    *out_queue = &queue->base;
    return MOIRA_OK_STATUS;
}

/* Drains the stream, then reports the queue's modelled device time at info level. */
static void npu_queue_destroy(moira_queue_t *base) {
    npu_queue_t *queue = (npu_queue_t *)base;
    moira_acl_destroy_stream(queue->stream);
    if (queue->launches)
        MOIRA_LOG_I("%s: queue ran %d ops, modelled device time %.2f us in all",
                    base->device->info.name, queue->launches, queue->total.time_us);
    free(queue);
}

/* Device address of a byte of a buffer. */
static unsigned char *hbm_at(moira_buffer_t *buffer, size_t offset) {
    return ((moira_npu_buffer_t *)buffer)->hbm + offset;
}

/* Host -> device is a H2D memcpy on the stream. */
static moira_status_t npu_enqueue_write(moira_queue_t *queue, moira_buffer_t *dst,
                                        size_t dst_offset, const void *src, size_t bytes) {
    return moira_acl_memcpy_async(((npu_queue_t *)queue)->stream, hbm_at(dst, dst_offset), src,
                                  bytes, MOIRA_ACL_MEMCPY_HOST_TO_DEVICE);
}

/* Device -> host is a D2H memcpy on the stream. */
static moira_status_t npu_enqueue_read(moira_queue_t *queue, moira_buffer_t *src, size_t src_offset,
                                       void *dst, size_t bytes) {
    return moira_acl_memcpy_async(((npu_queue_t *)queue)->stream, dst, hbm_at(src, src_offset),
                                  bytes, MOIRA_ACL_MEMCPY_DEVICE_TO_HOST);
}

/* Within one device, a D2D memcpy. */
static moira_status_t npu_enqueue_copy(moira_queue_t *queue, moira_buffer_t *src, size_t src_offset,
                                       moira_buffer_t *dst, size_t dst_offset, size_t bytes) {
    return moira_acl_memcpy_async(((npu_queue_t *)queue)->stream, hbm_at(dst, dst_offset),
                                  hbm_at(src, src_offset), bytes,
                                  MOIRA_ACL_MEMCPY_DEVICE_TO_DEVICE);
}

/* A kernel launch waiting on a stream; owned by its task. */
typedef struct op_task {
    npu_queue_t *queue;
    moira_op_launch_t launch;
    unsigned char params[MOIRA_OP_MAX_PARAMS_BYTES];
} op_task_t;

/* Runs on the stream's thread: the kernel, then its figures into the log and the totals. */
static moira_status_t run_op_task(void *raw, moira_status_t prior_failure) {
    op_task_t *task = raw;
    if (prior_failure) return MOIRA_OK_STATUS;
    npu_queue_t *queue = task->queue;
    npu_device_t *device = (npu_device_t *)queue->base.device;
    task->launch.params = task->params;
    moira_npu_launch_report_t report;
    moira_status_t status = moira_npu_run_op(device->machine, &task->launch, &report);
    if (status)
        return moira_status_annotate(status, "%s: %s", device->base.info.name,
                                     moira_op_name(task->launch.op));
    const moira_npu_cost_t *c = &report.total;
    MOIRA_LOG_I("%s: %s: modelled %.3f us (%s-bound, %d cores): %llu cube fractals, %llu vector "
                "repeats, %llu scalar ops, MTE2 %llu B, MTE1 %llu B, MTE3 %llu B",
                device->base.info.name, moira_op_name(task->launch.op), report.time_us,
                report.bound, report.cores_used, (unsigned long long)c->cube_fractals,
                (unsigned long long)c->vector_repeats, (unsigned long long)c->scalar_ops,
                (unsigned long long)c->mte2_bytes, (unsigned long long)c->mte1_bytes,
                (unsigned long long)c->mte3_bytes);
    queue->last = report;
    moira_npu_report_add(&queue->total, &report);
    queue->launches++;
    return MOIRA_OK_STATUS;
}

/* The device layer has checked the launch against the op's contract (moira_queue_launch). */
static moira_status_t npu_enqueue_op(moira_queue_t *base, const moira_op_launch_t *launch) {
    if (launch->params_size > MOIRA_OP_MAX_PARAMS_BYTES)
        return moira_acl_status(MOIRA_ACL_ERROR_INVALID_PARAM, "op parameters of %zu bytes",
                                launch->params_size);
    op_task_t *task = calloc(1, sizeof(*task));
    if (!task) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "kernel launch");
    task->queue = (npu_queue_t *)base;
    task->launch = *launch;
    if (launch->params_size) memcpy(task->params, launch->params, launch->params_size);
    return moira_acl_stream_submit(
        ((npu_queue_t *)base)->stream,
        (moira_acl_task_t){.run = run_op_task, .release = free, .arg = task});
}

/* Signals map to recorded events. */
static moira_status_t npu_enqueue_signal(moira_queue_t *queue, moira_event_t *event) {
    return moira_acl_record_event(((npu_queue_t *)queue)->stream, event);
}

/* Waits map to stream-waits-event. */
static moira_status_t npu_enqueue_wait(moira_queue_t *queue, moira_event_t *event) {
    return moira_acl_stream_wait_event(((npu_queue_t *)queue)->stream, event);
}

/* Finish is stream synchronisation, which hands back the first failure. */
static moira_status_t npu_queue_finish(moira_queue_t *queue) {
    return moira_acl_synchronize_stream(((npu_queue_t *)queue)->stream);
}

/* Tests read the counters of the last op and the totals. */
void moira_npu_queue_reports(moira_queue_t *base, moira_npu_launch_report_t *out_total,
                             moira_npu_launch_report_t *out_last) {
    npu_queue_t *queue = (npu_queue_t *)base;
    if (out_total) *out_total = queue->total;
    if (out_last) *out_last = queue->last;
}

/* The generic report hook: what `moira run` sums per batch. */
static bool npu_queue_modelled_us(moira_queue_t *queue, double *out_us) {
    *out_us = ((npu_queue_t *)queue)->total.time_us;
    return true;
}

/* Support depends on the op and weight type, not on the device's shape. */
static bool npu_supports_op(const moira_device_t *device, int op, moira_dtype_t weight_dtype) {
    (void)device;
    return moira_npu_supports_op(op, weight_dtype);
}

/* The cores go first, then the device's memory (aclrtResetDevice). */
static void npu_device_destroy(moira_device_t *base) {
    npu_device_t *device = (npu_device_t *)base;
    moira_npu_machine_destroy(device->machine);
    moira_acl_reset_device(device->acl);
    free(device);
}

/* What `moira devices` shows: the DaVinci shape and the peaks the cost model implies. */
static void describe(moira_device_info_t *info, int index, const moira_npu_spec_t *spec) {
    snprintf(info->name, sizeof(info->name), "npu:%d", index);
    snprintf(info->backend, sizeof(info->backend), "npu");
    info->index = index;
    info->kind = MOIRA_DEVICE_KIND_NPU;
    snprintf(info->model, sizeof(info->model), "Ascend 910B-like DaVinci (emulated)");
    snprintf(info->vendor, sizeof(info->vendor), "Moira emulator");
    snprintf(info->driver_version, sizeof(info->driver_version), "moira-acl-emulator 1");
    /* The emulator keeps device memory in host memory: it holds no more than the host has. */
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t host = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
    info->memory_bytes = host > 0 && host < spec->hbm_bytes ? host : spec->hbm_bytes;
    info->emulated = true;
    info->compute_units = spec->ai_cores;
    double cube = moira_npu_peak_cube_tflops(spec), vector = moira_npu_peak_vector_tflops(spec);
    info->peak_tflops[MOIRA_DTYPE_BF16] = cube;
    info->peak_tflops[MOIRA_DTYPE_F16] = cube;
    info->peak_tflops[MOIRA_DTYPE_F32] = vector;
    info->bandwidth_gbs = spec->hbm_gbs;
    info->numa_node = -1;
    info->compute_precision = MOIRA_DTYPE_BF16;
    /* INT8 weights meet activations quantised per token in the Cube's int8 mode (W8A8). */
    info->quantized_precision = MOIRA_DTYPE_INT8;
    moira_device_info_add_detail(info, "emulated", true, "true");
    moira_device_info_add_detail(info, "ai_cores", true, "%d", spec->ai_cores);
    moira_device_info_add_detail(info, "cube_units_per_core", true, "%d",
                                 spec->cube_units_per_core);
    moira_device_info_add_detail(info, "vector_units_per_core", true, "%d",
                                 spec->vector_units_per_core);
    moira_device_info_add_detail(info, "clock_ghz", true, "%g", spec->clock_ghz);
    moira_device_info_add_detail(info, "l1_bytes", true, "%u", spec->l1_bytes);
    moira_device_info_add_detail(info, "l0a_bytes", true, "%u", spec->l0a_bytes);
    moira_device_info_add_detail(info, "l0b_bytes", true, "%u", spec->l0b_bytes);
    moira_device_info_add_detail(info, "l0c_bytes", true, "%u", spec->l0c_bytes);
    moira_device_info_add_detail(info, "ub_bytes", true, "%u", spec->ub_bytes);
    moira_device_info_add_detail(info, "l1_align", true, "%u", spec->l1_align);
    moira_device_info_add_detail(info, "l0ab_align", true, "%u", spec->l0a_align);
    moira_device_info_add_detail(info, "l0c_align", true, "%u", spec->l0c_align);
    moira_device_info_add_detail(info, "ub_align", true, "%u", spec->ub_align);
    moira_device_info_add_detail(info, "peak_cube_tflops", true, "%.1f", cube);
    moira_device_info_add_detail(info, "peak_vector_f32_tflops", true, "%.2f", vector);
    moira_device_info_add_detail(info, "cube_fractal_flops", true, "%d", 2 * 16 * 16 * 16);
    moira_device_info_add_detail(info, "vector_repeat_bytes", true, "%d", 256);
    moira_device_info_add_detail(info, "mte_bytes_per_cycle", true, "%d",
                                 MOIRA_NPU_MTE_BYTES_PER_CYCLE);
    moira_device_info_add_detail(info, "cost_model", false,
                                 "busiest engine per core, slowest core, HBM floor");
}

/* Devices as MOIRA_NPU_DEVICES asks (one by default), each with its own cores. */
static moira_status_t npu_enumerate(moira_device_t **out_devices, int capacity, int *out_count) {
    *out_count = 0;
    int count = 0;
    moira_npu_spec_t spec;
    MOIRA_RETURN_IF_ERROR(moira_acl_configure_from_env(&count, &spec));
    for (int i = 0; i < count && i < capacity; i++) {
        npu_device_t *device = calloc(1, sizeof(*device));
        if (!device) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "npu device");
        moira_status_t status = moira_acl_set_device(i, &spec, &device->acl);
        if (!status) status = moira_npu_machine_create(device->acl, &device->machine);
        if (status) {
            moira_acl_reset_device(device->acl);
            free(device);
            return status;
        }
        device->base.vtable = &npu_vtable;
        describe(&device->base.info, i, &spec);
        out_devices[(*out_count)++] = &device->base;
    }
    return MOIRA_OK_STATUS;
}

static const moira_device_vtable_t npu_vtable = {
    .destroy = npu_device_destroy,
    .buffer_alloc = npu_buffer_alloc,
    .buffer_free = npu_buffer_free,
    .buffer_host_ptr = npu_buffer_host_ptr,
    .queue_create = npu_queue_create,
    .queue_destroy = npu_queue_destroy,
    .enqueue_write = npu_enqueue_write,
    .enqueue_read = npu_enqueue_read,
    .enqueue_copy = npu_enqueue_copy,
    .enqueue_op = npu_enqueue_op,
    .enqueue_signal = npu_enqueue_signal,
    .enqueue_wait = npu_enqueue_wait,
    .queue_finish = npu_queue_finish,
    .supports_op = npu_supports_op,
    .queue_modelled_us = npu_queue_modelled_us,
};

static const moira_backend_t npu_backend = {.name = "npu", .enumerate = npu_enumerate};

/* Called by the generated registry (CMake's MOIRA_BACKENDS). */
moira_status_t moira_backend_npu_register(void) {
    return moira_backend_register(&npu_backend);
}
