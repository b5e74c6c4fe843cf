/* The npu backend's device objects, shared by its device (npu_device.c) and kernels: a buffer is
 * one HBM allocation of the emulated device. Also what tests may ask an npu queue: the modelled
 * figures of the work it ran. */
#ifndef MOIRA_BACKENDS_NPU_DEVICE_H
#define MOIRA_BACKENDS_NPU_DEVICE_H

#include "backends/npu/cost_model.h"
#include "runtime/device.h"

typedef struct moira_npu_buffer {
    moira_buffer_t base;
    unsigned char *hbm; /* owned: a moira_acl_malloc allocation of base.size bytes */
} moira_npu_buffer_t;

/* The cost-model totals of every op the queue has run, and of the last one (NULL to skip). The
 * queue must be an npu queue and idle (after moira_queue_finish). */
void moira_npu_queue_reports(moira_queue_t *queue, moira_npu_launch_report_t *out_total,
                             moira_npu_launch_report_t *out_last);

#endif
