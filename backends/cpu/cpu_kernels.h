/* The cpu backend's op kernels (one file per op family) and their dispatch table. Kernels run on
 * the device's thread pool, called from the queue's worker thread, with operands already checked
 * by moira_op_validate. */
#ifndef MOIRA_BACKENDS_CPU_KERNELS_H
#define MOIRA_BACKENDS_CPU_KERNELS_H

#include <stdbool.h>

#include "ops/op.h"
#include "runtime/device.h"
#include "runtime/threadpool.h"

/* Runs one launch to completion. `launch->params` points at the queue's private copy. */
moira_status_t moira_cpu_run_op(const moira_op_launch_t *launch, moira_threadpool_t *pool);

/* Whether a kernel exists for `op` with weights of `weight_dtype`. */
bool moira_cpu_supports_op(int op, moira_dtype_t weight_dtype);

/* Host address of a device tensor's first element (cpu buffers are host memory). */
static inline void *moira_cpu_tensor_ptr(const moira_dtensor_t *tensor) {
    return tensor->buffer ? (char *)moira_buffer_host_ptr(tensor->buffer) + tensor->offset : NULL;
}

#endif
