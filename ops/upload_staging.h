/* Staging host weights into one device buffer: the layout and copy machinery shared by the
 * uploads of a whole decoder layer (device_layer_upload.c) and of a device's share of a layer's
 * experts (device_experts.c).
 *
 * A placement function lays tensors out in a staging image of the device buffer. It runs twice:
 * once with no staging memory to measure, once to fill, so layout and copy can never disagree. */
#ifndef MOIRA_OPS_UPLOAD_STAGING_H
#define MOIRA_OPS_UPLOAD_STAGING_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime/device.h"
#include "runtime/tensor.h"

typedef struct moira_staging {
    unsigned char *image; /* owned by moira_staging_upload; NULL while measuring */
    size_t used;
    int weight_dtype; /* MOIRA_WEIGHT_DTYPE_AS_STORED (-1) or a moira_dtype_t */
} moira_staging_t;

/* Places `count` host matrices of one shape as one [count, N, K] device tensor (or [N, K] when
 * `stack` is false and count is 1), converted to the staging's weight dtype; fp8 block scales
 * follow the matrices. `mats` is borrowed. */
moira_status_t moira_staging_place_matrices(moira_staging_t *staging,
                                            const moira_tensor_t *const *mats, int64_t count,
                                            bool stack, moira_dtensor_t *out);

/* One matrix, or a zeroed (absent) operand when `mat` is NULL. */
moira_status_t moira_staging_place_matrix(moira_staging_t *staging, const moira_tensor_t *mat,
                                          moira_dtensor_t *out);

/* A norm weight or bias, always f32 on the device; zeroed when `vec` is NULL. */
moira_status_t moira_staging_place_vector(moira_staging_t *staging, const moira_tensor_t *vec,
                                          moira_dtensor_t *out);

/* Lays out everything `place` places, measuring first, then fills a staging image, allocates
 * one device buffer of that size on `numa_node` (-1: anywhere) and copies the image in through
 * `queue`, waiting for the copy. `place` receives `context` (borrowed) and must place the same
 * tensors both times. Caller frees *out_buffer. */
typedef moira_status_t (*moira_staging_place_fn)(moira_staging_t *staging, void *context);
moira_status_t moira_staging_upload(moira_device_t *device, moira_queue_t *queue, int numa_node,
                                    int weight_dtype, moira_staging_place_fn place, void *context,
                                    moira_buffer_t **out_buffer);

#endif
