#include "runtime/device.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/fault.h"
#include "runtime/weight_format.h"

const char *moira_device_kind_name(moira_device_kind_t kind) {
    switch (kind) {
    case MOIRA_DEVICE_KIND_CPU:
        return "cpu";
    case MOIRA_DEVICE_KIND_GPU:
        return "gpu";
    case MOIRA_DEVICE_KIND_NPU:
        return "npu";
    }
    return "unknown";
}

/* Checks a byte range against a buffer before any backend sees it, so no backend has to. */
static moira_status_t check_range(const moira_buffer_t *buffer, size_t offset, size_t bytes,
                                  const char *what) {
    if (!buffer) return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: null buffer", what);
    if (offset > buffer->size || bytes > buffer->size - offset)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s: range [%zu, %zu) outside a buffer of %zu bytes", what, offset,
                                 offset + bytes, buffer->size);
    return MOIRA_OK_STATUS;
}

/* Calls of moira_buffer_alloc (moira_device_allocation_count). */
static atomic_uint_fast64_t allocation_count;

/* Counted before anything can fail, so a step that even tries to allocate is caught. */
moira_status_t moira_buffer_alloc(moira_device_t *device, size_t bytes, int numa_node,
                                  moira_buffer_t **out_buffer) {
    *out_buffer = NULL;
    atomic_fetch_add_explicit(&allocation_count, 1, memory_order_relaxed);
    MOIRA_RETURN_IF_ERROR(moira_fault_device_lost(device, "allocating memory"));
    MOIRA_RETURN_IF_ERROR(moira_fault_alloc(device, bytes));
    return device->vtable->buffer_alloc(device, bytes ? bytes : 1, numa_node, out_buffer);
}

uint64_t moira_device_allocation_count(void) {
    return atomic_load_explicit(&allocation_count, memory_order_relaxed);
}

void moira_buffer_free(moira_buffer_t *buffer) {
    if (buffer) buffer->device->vtable->buffer_free(buffer);
}

void *moira_buffer_host_ptr(moira_buffer_t *buffer) {
    return buffer->device->vtable->buffer_host_ptr(buffer);
}

moira_status_t moira_queue_create(moira_device_t *device, moira_queue_t **out_queue) {
    *out_queue = NULL;
    MOIRA_RETURN_IF_ERROR(moira_fault_device_lost(device, "creating a queue"));
    return device->vtable->queue_create(device, out_queue);
}

void moira_queue_destroy(moira_queue_t *queue) {
    if (queue) queue->device->vtable->queue_destroy(queue);
}

moira_status_t moira_queue_write(moira_queue_t *queue, moira_buffer_t *dst, size_t dst_offset,
                                 const void *src, size_t bytes) {
    MOIRA_RETURN_IF_ERROR(check_range(dst, dst_offset, bytes, "write"));
    if (dst->device != queue->device)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "write: buffer of %s on a %s queue",
                                 dst->device->info.name, queue->device->info.name);
    if (!bytes) return MOIRA_OK_STATUS;
    return queue->device->vtable->enqueue_write(queue, dst, dst_offset, src, bytes);
}

moira_status_t moira_queue_read(moira_queue_t *queue, moira_buffer_t *src, size_t src_offset,
                                void *dst, size_t bytes) {
    MOIRA_RETURN_IF_ERROR(check_range(src, src_offset, bytes, "read"));
    if (src->device != queue->device)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "read: buffer of %s on a %s queue",
                                 src->device->info.name, queue->device->info.name);
    if (!bytes) return MOIRA_OK_STATUS;
    return queue->device->vtable->enqueue_read(queue, src, src_offset, dst, bytes);
}

moira_status_t moira_queue_copy(moira_queue_t *queue, moira_buffer_t *src, size_t src_offset,
                                moira_buffer_t *dst, size_t dst_offset, size_t bytes) {
    MOIRA_RETURN_IF_ERROR(check_range(src, src_offset, bytes, "copy source"));
    MOIRA_RETURN_IF_ERROR(check_range(dst, dst_offset, bytes, "copy destination"));
    if (src->device != queue->device || dst->device != queue->device)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "copy: both buffers must live on the queue's device %s",
                                 queue->device->info.name);
    if (!bytes) return MOIRA_OK_STATUS;
    return queue->device->vtable->enqueue_copy(queue, src, src_offset, dst, dst_offset, bytes);
}

/* The op contract, checked here once so that no backend has to. */
static moira_launch_check_fn launch_check;

void moira_device_set_launch_check(moira_launch_check_fn check) {
    launch_check = check;
}

moira_status_t moira_queue_launch(moira_queue_t *queue, const moira_op_launch_t *launch) {
    if (launch->params_size > MOIRA_OP_MAX_PARAMS_BYTES ||
        launch->n_operands > MOIRA_OP_MAX_OPERANDS || launch->n_operands < 0)
        return moira_status_make(MOIRA_CODE_INTERNAL, "op %d: launch too large", launch->op);
    if (!launch_check)
        return moira_status_make(MOIRA_CODE_INTERNAL,
                                 "op %d launched before moira_runtime_init registered the op "
                                 "contract",
                                 launch->op);
    MOIRA_RETURN_IF_ERROR(launch_check(launch));
    for (int i = 0; i < launch->n_operands; i++) {
        const moira_dtensor_t *t = &launch->operands[i];
        if (!t->buffer) continue; /* optional operand left empty */
        if (t->buffer->device != queue->device)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "op %d operand %d lives on %s, not on %s", launch->op, i,
                                     t->buffer->device->info.name, queue->device->info.name);
        MOIRA_RETURN_IF_ERROR(
            check_range(t->buffer, t->offset, moira_dtensor_span_bytes(t), "op operand"));
        /* A quantised weight reaches only kernels that decode it: a device answers per op. */
        if (moira_dtype_is_quantized(t->dtype) &&
            !queue->device->vtable->supports_op(queue->device, launch->op, t->dtype))
            return moira_status_make(
                MOIRA_CODE_UNSUPPORTED, "op %d operand %d: %s does not compute with %s weights",
                launch->op, i, queue->device->info.name, moira_dtype_name(t->dtype));
    }
    MOIRA_RETURN_IF_ERROR(moira_fault_device_lost(queue->device, "launching a kernel"));
    moira_fault_slow_launch(queue->device);
    return queue->device->vtable->enqueue_op(queue, launch);
}

moira_status_t moira_queue_signal(moira_queue_t *queue, moira_event_t *event) {
    return queue->device->vtable->enqueue_signal(queue, event);
}

moira_status_t moira_queue_wait(moira_queue_t *queue, moira_event_t *event) {
    return queue->device->vtable->enqueue_wait(queue, event);
}

moira_status_t moira_queue_finish(moira_queue_t *queue) {
    return queue->device->vtable->queue_finish(queue);
}

moira_status_t moira_copy_across(moira_queue_t *src_queue, moira_buffer_t *src, size_t src_offset,
                                 moira_queue_t *dst_queue, moira_buffer_t *dst, size_t dst_offset,
                                 size_t bytes) {
    if (src->device == dst->device) {
        MOIRA_RETURN_IF_ERROR(moira_queue_copy(dst_queue, src, src_offset, dst, dst_offset, bytes));
        return moira_queue_finish(dst_queue);
    }
    /* No peer-to-peer path between backends: stage through host memory. */
    void *staging = malloc(bytes ? bytes : 1);
    if (!staging)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot stage %zu bytes", bytes);
    moira_status_t status = moira_queue_read(src_queue, src, src_offset, staging, bytes);
    if (!status) status = moira_queue_finish(src_queue);
    if (!status) status = moira_queue_write(dst_queue, dst, dst_offset, staging, bytes);
    if (!status) status = moira_queue_finish(dst_queue);
    free(staging);
    return status;
}

bool moira_queue_modelled_us(moira_queue_t *queue, double *out_us) {
    const moira_device_vtable_t *vtable = queue->device->vtable;
    return vtable->queue_modelled_us && vtable->queue_modelled_us(queue, out_us);
}

moira_status_t moira_device_prepare_weights(moira_device_t *device, int op,
                                            const moira_dtensor_t *weights, int n_weights) {
    if (!device->vtable->prepare_weights) return MOIRA_OK_STATUS;
    return device->vtable->prepare_weights(device, op, weights, n_weights);
}

bool moira_device_supports(const moira_device_t *device, int op, moira_dtype_t weight_dtype) {
    return device->vtable->supports_op(device, op, weight_dtype);
}

const moira_device_info_t *moira_device_info(const moira_device_t *device) {
    return &device->info;
}

void moira_device_info_add_detail(moira_device_info_t *info, const char *key, bool is_number,
                                  const char *fmt, ...) {
    if (info->n_details >= MOIRA_DEVICE_MAX_DETAILS) return;
    moira_device_detail_t *d = &info->details[info->n_details++];
    snprintf(d->key, sizeof(d->key), "%s", key);
    d->is_number = is_number;
    va_list args;
    va_start(args, fmt);
    vsnprintf(d->value, sizeof(d->value), fmt, args);
    va_end(args);
}

double moira_precision_nmse_limit(moira_dtype_t precision) {
    switch (precision) {
    case MOIRA_DTYPE_F16:
        return 1e-4;
    case MOIRA_DTYPE_BF16:
        return 2e-3;
    case MOIRA_DTYPE_F8_E4M3:
        return 2e-2;
    case MOIRA_DTYPE_INT8: /* int8 activations (W8A8, W4A8) */
        return 5e-3;
    default:
        return 1e-6;
    }
}

int64_t moira_dtensor_numel(const moira_dtensor_t *tensor) {
    int64_t n = 1;
    for (int i = 0; i < tensor->rank; i++)
        n *= tensor->shape[i];
    return n;
}

int64_t moira_dtensor_row_stride(const moira_dtensor_t *tensor) {
    if (tensor->row_stride) return tensor->row_stride;
    return tensor->rank ? tensor->shape[tensor->rank - 1] : 1;
}

size_t moira_dtensor_span_bytes(const moira_dtensor_t *tensor) {
    if (tensor->rank == 0) return moira_dtype_size(tensor->dtype);
    int64_t cols = tensor->shape[tensor->rank - 1];
    int64_t rows = cols ? moira_dtensor_numel(tensor) / cols : 0;
    if (rows == 0 || cols == 0) return 0;
    if (moira_dtype_is_quantized(tensor->dtype)) /* contiguous only: no row_stride */
        return (size_t)rows * moira_weight_row_bytes(tensor->dtype, cols);
    int64_t elems = (rows - 1) * moira_dtensor_row_stride(tensor) + cols;
    return (size_t)elems * moira_dtype_size(tensor->dtype);
}
