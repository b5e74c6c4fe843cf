/* The ACL-shaped host runtime over the emulated device (acl.h): HBM allocations kept in a list so
 * every copy can be checked against the allocation it touches, and streams as FIFO task queues
 * drained by one worker thread each. */
#include "backends/npu/acl.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/log.h"

#define HBM_ALIGN 512

/* ACL's own spelling, so a message can be looked up in CANN's error reference. */
const char *moira_acl_error_name(moira_acl_error_t error) {
    switch (error) {
    case MOIRA_ACL_SUCCESS:
        return "ACL_SUCCESS";
    case MOIRA_ACL_ERROR_INVALID_PARAM:
        return "ACL_ERROR_INVALID_PARAM";
    case MOIRA_ACL_ERROR_UNINITIALIZE:
        return "ACL_ERROR_UNINITIALIZE";
    case MOIRA_ACL_ERROR_RT_PARAM_INVALID:
        return "ACL_ERROR_RT_PARAM_INVALID";
    case MOIRA_ACL_ERROR_RT_INVALID_DEVICEID:
        return "ACL_ERROR_RT_INVALID_DEVICEID";
    case MOIRA_ACL_ERROR_RT_INVALID_MEMCPY_KIND:
        return "ACL_ERROR_RT_INVALID_MEMCPY_KIND";
    case MOIRA_ACL_ERROR_BAD_ALLOC:
        return "ACL_ERROR_BAD_ALLOC";
    case MOIRA_ACL_ERROR_API_NOT_SUPPORT:
        return "ACL_ERROR_API_NOT_SUPPORT";
    case MOIRA_ACL_ERROR_MEMORY_ADDRESS_UNALIGNED:
        return "ACL_ERROR_MEMORY_ADDRESS_UNALIGNED";
    case MOIRA_ACL_ERROR_RT_MEMORY_ALLOCATION:
        return "ACL_ERROR_RT_MEMORY_ALLOCATION";
    case MOIRA_ACL_ERROR_INTERNAL_ERROR:
        return "ACL_ERROR_INTERNAL_ERROR";
    case MOIRA_ACL_ERROR_RT_FAILURE:
        return "ACL_ERROR_RT_FAILURE";
    case MOIRA_ACL_ERROR_RT_AICORE_EXCEPTION:
        return "ACL_ERROR_RT_AICORE_EXCEPTION";
    }
    return "ACL_ERROR_UNKNOWN";
}

/* The class digit decides what Moira calls it, so callers can react by kind without parsing. */
static moira_code_t code_for(moira_acl_error_t error) {
    int error_class = (int)error / 100000;
    if (error_class == 1) return MOIRA_CODE_INVALID_ARGUMENT;
    if (error == MOIRA_ACL_ERROR_API_NOT_SUPPORT) return MOIRA_CODE_UNSUPPORTED;
    if (error_class == 2) return MOIRA_CODE_OUT_OF_MEMORY;
    return MOIRA_CODE_DEVICE;
}

/* Every ACL failure leaves the backend as a Moira status that still names its ACL code. */
moira_status_t moira_acl_status(moira_acl_error_t error, const char *fmt, ...) {
    char message[768];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof(message), fmt, args);
    va_end(args);
    return moira_status_make(code_for(error), "ACL error %d (%s): %s", (int)error,
                             moira_acl_error_name(error), message);
}

/* The 910B's published shape, the device users of DESIGN.md's topologies expect. */
moira_npu_spec_t moira_npu_default_spec(void) {
    return (moira_npu_spec_t){
        .ai_cores = 24,
        .cube_units_per_core = 1,
        .vector_units_per_core = 2,
        .clock_ghz = 1.8,
        .hbm_bytes = 64ull << 30,
        .hbm_gbs = 1600,
        .l1_bytes = 512 << 10,
        .l0a_bytes = 64 << 10,
        .l0b_bytes = 64 << 10,
        .l0c_bytes = 128 << 10,
        .ub_bytes = 192 << 10,
        .l1_align = 32,
        .l0a_align = 512,
        .l0b_align = 512,
        .l0c_align = 64,
        .ub_align = 32,
    };
}

/* Parses one positive number of the MOIRA_NPU_DEVICES list, or fails naming the whole value. */
static moira_status_t parse_field(const char *value, const char **cursor, double max, bool whole,
                                  double *out) {
    char *end = NULL;
    errno = 0;
    double number = strtod(*cursor, &end);
    bool dangling = *end == ':' && end[1] == '\0';
    if (end == *cursor || errno || !(number > 0) || number > max || (*end && *end != ':') ||
        dangling || (whole && number != (double)(long long)number))
        return moira_acl_status(MOIRA_ACL_ERROR_INVALID_PARAM,
                                "MOIRA_NPU_DEVICES=\"%s\": expected COUNT[:AI_CORES[:HBM_GIB"
                                "[:HBM_GBS]]]: whole COUNT <= 16 and AI_CORES <= 256, positive "
                                "sizes",
                                value);
    *out = number;
    *cursor = *end ? end + 1 : end;
    return MOIRA_OK_STATUS;
}

/* Tests and planners need other shapes than the default without a topology file. */
moira_status_t moira_acl_configure_from_env(int *out_count, moira_npu_spec_t *out_spec) {
    *out_spec = moira_npu_default_spec();
    *out_count = 1;
    const char *value = getenv("MOIRA_NPU_DEVICES");
    if (!value || !*value) return MOIRA_OK_STATUS;
    const char *cursor = value;
    double number = 0;
    MOIRA_RETURN_IF_ERROR(parse_field(value, &cursor, 16, true, &number));
    *out_count = (int)number;
    if (*cursor) {
        MOIRA_RETURN_IF_ERROR(parse_field(value, &cursor, 256, true, &number));
        out_spec->ai_cores = (int)number;
    }
    if (*cursor) {
        MOIRA_RETURN_IF_ERROR(parse_field(value, &cursor, 4096, false, &number));
        out_spec->hbm_bytes = (uint64_t)(number * (double)(1ull << 30));
    }
    if (*cursor) {
        MOIRA_RETURN_IF_ERROR(parse_field(value, &cursor, 1e6, false, &number));
        out_spec->hbm_gbs = number;
    }
    if (*cursor)
        return moira_acl_status(MOIRA_ACL_ERROR_INVALID_PARAM,
                                "MOIRA_NPU_DEVICES=\"%s\": at most four fields "
                                "(COUNT:AI_CORES:HBM_GIB:HBM_GBS)",
                                value);
    return MOIRA_OK_STATUS;
}

/* ---- Devices and memory ---- */

typedef struct allocation {
    struct allocation *next; /* owned by the list */
    unsigned char *base;     /* owned: the host memory standing in for this HBM range */
    size_t bytes;
} allocation_t;

struct moira_acl_device {
    int id;
    moira_npu_spec_t spec;
    pthread_mutex_t mutex;
    allocation_t *allocations; /* owned list */
    uint64_t used;
};

/* Opening a device gives it an empty HBM ledger; kernels' cores are built by the machine. */
moira_status_t moira_acl_set_device(int id, const moira_npu_spec_t *spec,
                                    moira_acl_device_t **out_device) {
    if (id < 0 || spec->ai_cores <= 0)
        return moira_acl_status(MOIRA_ACL_ERROR_RT_INVALID_DEVICEID, "device %d", id);
    moira_acl_device_t *device = calloc(1, sizeof(*device));
    if (!device) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "device %d", id);
    device->id = id;
    device->spec = *spec;
    pthread_mutex_init(&device->mutex, NULL);
    *out_device = device;
    return MOIRA_OK_STATUS;
}

/* Like aclrtResetDevice, releases whatever the process still holds on the device. */
void moira_acl_reset_device(moira_acl_device_t *device) {
    if (!device) return;
    for (allocation_t *a = device->allocations; a;) {
        allocation_t *next = a->next;
        free(a->base);
        free(a);
        a = next;
    }
    pthread_mutex_destroy(&device->mutex);
    free(device);
}

/* Kernels size their tiles from the shape of the device they run on. */
const moira_npu_spec_t *moira_acl_device_spec(const moira_acl_device_t *device) {
    return &device->spec;
}

/* The id names the device in messages. */
int moira_acl_device_id(const moira_acl_device_t *device) {
    return device->id;
}

/* HBM is accounted against the device's size before host memory backs it, so an
 * over-large model fails as it would on the card. */
moira_status_t moira_acl_malloc(moira_acl_device_t *device, size_t bytes, void **out_dev_ptr) {
    size_t rounded = (bytes + HBM_ALIGN - 1) / HBM_ALIGN * HBM_ALIGN;
    if (rounded == 0) rounded = HBM_ALIGN;
    pthread_mutex_lock(&device->mutex);
    bool fits = device->used + rounded <= device->spec.hbm_bytes;
    if (fits) device->used += rounded;
    pthread_mutex_unlock(&device->mutex);
    if (!fits)
        return moira_acl_status(MOIRA_ACL_ERROR_RT_MEMORY_ALLOCATION,
                                "npu:%d: %zu bytes requested, %llu of %llu HBM bytes in use",
                                device->id, bytes, (unsigned long long)device->used,
                                (unsigned long long)device->spec.hbm_bytes);
    allocation_t *a = calloc(1, sizeof(*a));
    unsigned char *base = aligned_alloc(HBM_ALIGN, rounded);
    if (!a || !base) {
        free(a);
        free(base);
        pthread_mutex_lock(&device->mutex);
        device->used -= rounded;
        pthread_mutex_unlock(&device->mutex);
        return moira_acl_status(MOIRA_ACL_ERROR_RT_MEMORY_ALLOCATION,
                                "npu:%d: the emulator's host memory cannot back %zu bytes",
                                device->id, bytes);
    }
    a->base = base;
    a->bytes = rounded;
    pthread_mutex_lock(&device->mutex);
    a->next = device->allocations;
    device->allocations = a;
    pthread_mutex_unlock(&device->mutex);
    *out_dev_ptr = base;
    return MOIRA_OK_STATUS;
}

/* Freeing an address that is not an allocation is ignored, as aclrtFree tolerates NULL. */
void moira_acl_free(moira_acl_device_t *device, void *dev_ptr) {
    if (!dev_ptr) return;
    pthread_mutex_lock(&device->mutex);
    for (allocation_t **link = &device->allocations; *link; link = &(*link)->next) {
        allocation_t *a = *link;
        if (a->base != dev_ptr) continue;
        *link = a->next;
        device->used -= a->bytes;
        free(a->base);
        free(a);
        break;
    }
    pthread_mutex_unlock(&device->mutex);
}

/* What the planner and tests compare against the device's HBM size. */
uint64_t moira_acl_memory_used(moira_acl_device_t *device) {
    pthread_mutex_lock(&device->mutex);
    uint64_t used = device->used;
    pthread_mutex_unlock(&device->mutex);
    return used;
}

/* Whether [ptr, ptr + bytes) lies inside one live allocation of the device. */
static bool is_device_range(moira_acl_device_t *device, const void *ptr, size_t bytes) {
    const unsigned char *p = ptr;
    bool inside = false;
    pthread_mutex_lock(&device->mutex);
    for (allocation_t *a = device->allocations; a && !inside; a = a->next)
        inside =
            p >= a->base && p <= a->base + a->bytes && bytes <= (size_t)(a->base + a->bytes - p);
    pthread_mutex_unlock(&device->mutex);
    return inside;
}

/* ---- Streams ---- */

typedef struct task_node {
    struct task_node *next; /* owned by the stream's FIFO */
    moira_acl_task_t task;  /* owned */
} task_node_t;

struct moira_acl_stream {
    moira_acl_device_t *device; /* borrowed */
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t has_work, idle;
    task_node_t *head, *tail;
    bool busy, stopping;
    moira_status_t failure; /* first failure, owned; handed out by synchronize */
};

/* A task frees its argument whether it ran or not. */
static void release_task(moira_acl_task_t *task) {
    if (task->release) task->release(task->arg);
}

/* The stream's worker: tasks run in submission order, each told of the first earlier failure. */
static void *stream_main(void *raw) {
    moira_acl_stream_t *stream = raw;
    pthread_mutex_lock(&stream->mutex);
    for (;;) {
        while (!stream->head && !stream->stopping)
            pthread_cond_wait(&stream->has_work, &stream->mutex);
        if (!stream->head) break;
        task_node_t *node = stream->head;
        stream->head = node->next;
        if (!stream->head) stream->tail = NULL;
        stream->busy = true;
        moira_status_t prior = stream->failure;
        pthread_mutex_unlock(&stream->mutex);
        moira_status_t status = node->task.run(node->task.arg, prior);
        release_task(&node->task);
        free(node);
        pthread_mutex_lock(&stream->mutex);
        if (status && !stream->failure)
            stream->failure = status;
        else
            moira_status_free(status);
        stream->busy = false;
        if (!stream->head) pthread_cond_broadcast(&stream->idle);
    }
    pthread_mutex_unlock(&stream->mutex);
    return NULL;
}

/* One worker thread per stream keeps submissions asynchronous and ordered. */
moira_status_t moira_acl_create_stream(moira_acl_device_t *device,
                                       moira_acl_stream_t **out_stream) {
    moira_acl_stream_t *stream = calloc(1, sizeof(*stream));
    if (!stream) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "cannot allocate a stream");
    stream->device = device;
    pthread_mutex_init(&stream->mutex, NULL);
    pthread_cond_init(&stream->has_work, NULL);
    pthread_cond_init(&stream->idle, NULL);
    int err = pthread_create(&stream->thread, NULL, stream_main, stream);
    if (err != 0) {
        pthread_mutex_destroy(&stream->mutex);
        pthread_cond_destroy(&stream->has_work);
        pthread_cond_destroy(&stream->idle);
        free(stream);
        /* EAGAIN: no memory for the thread's stack (a memory limit), which is an allocation
         * failure to the caller, not a broken device. */
        return moira_acl_status(err == EAGAIN ? MOIRA_ACL_ERROR_BAD_ALLOC
                                              : MOIRA_ACL_ERROR_RT_FAILURE,
                                "cannot start a stream thread: %s", strerror(err));
    }
    *out_stream = stream;
    return MOIRA_OK_STATUS;
}

/* Waits for the stream to drain and hands the caller its first failure. */
moira_status_t moira_acl_synchronize_stream(moira_acl_stream_t *stream) {
    pthread_mutex_lock(&stream->mutex);
    while (stream->head || stream->busy)
        pthread_cond_wait(&stream->idle, &stream->mutex);
    moira_status_t failure = stream->failure;
    stream->failure = MOIRA_OK_STATUS;
    pthread_mutex_unlock(&stream->mutex);
    return failure;
}

/* Work already submitted finishes before the thread goes away. */
void moira_acl_destroy_stream(moira_acl_stream_t *stream) {
    if (!stream) return;
    moira_status_t failure = moira_acl_synchronize_stream(stream);
    if (failure)
        MOIRA_LOG_W("npu stream destroyed with an unreported error: %s",
                    moira_status_message(failure));
    moira_status_free(failure);
    pthread_mutex_lock(&stream->mutex);
    stream->stopping = true;
    pthread_cond_signal(&stream->has_work);
    pthread_mutex_unlock(&stream->mutex);
    pthread_join(stream->thread, NULL);
    pthread_mutex_destroy(&stream->mutex);
    pthread_cond_destroy(&stream->has_work);
    pthread_cond_destroy(&stream->idle);
    free(stream);
}

/* Appends to the FIFO and wakes the worker. */
moira_status_t moira_acl_stream_submit(moira_acl_stream_t *stream, moira_acl_task_t task) {
    task_node_t *node = calloc(1, sizeof(*node));
    if (!node) {
        release_task(&task);
        return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "cannot queue a stream task");
    }
    node->task = task;
    pthread_mutex_lock(&stream->mutex);
    if (stream->tail)
        stream->tail->next = node;
    else
        stream->head = node;
    stream->tail = node;
    pthread_cond_signal(&stream->has_work);
    pthread_mutex_unlock(&stream->mutex);
    return MOIRA_OK_STATUS;
}

/* Streams belong to one device, as in ACL. */
moira_acl_device_t *moira_acl_stream_device(moira_acl_stream_t *stream) {
    return stream->device;
}

typedef struct copy_task {
    void *dst;       /* borrowed until the copy has run */
    const void *src; /* borrowed until the copy has run */
    size_t bytes;
} copy_task_t;

/* Copies are skipped after a failure: their inputs may be garbage. */
static moira_status_t run_copy(void *raw, moira_status_t prior_failure) {
    copy_task_t *copy = raw;
    if (!prior_failure && copy->bytes) memmove(copy->dst, copy->src, copy->bytes);
    return MOIRA_OK_STATUS;
}

/* The checks every copy makes: a known kind whose device side lies inside one allocation. */
static moira_status_t check_copy(moira_acl_device_t *device, void *dst, const void *src,
                                 size_t bytes, moira_acl_memcpy_kind_t kind) {
    bool dst_device = kind != MOIRA_ACL_MEMCPY_DEVICE_TO_HOST;
    bool src_device = kind != MOIRA_ACL_MEMCPY_HOST_TO_DEVICE;
    if (kind < MOIRA_ACL_MEMCPY_HOST_TO_DEVICE || kind > MOIRA_ACL_MEMCPY_DEVICE_TO_DEVICE)
        return moira_acl_status(MOIRA_ACL_ERROR_RT_INVALID_MEMCPY_KIND, "memcpy kind %d",
                                (int)kind);
    if ((dst_device && !is_device_range(device, dst, bytes)) ||
        (src_device && !is_device_range(device, src, bytes)))
        return moira_acl_status(MOIRA_ACL_ERROR_RT_INVALID_MEMCPY_KIND,
                                "npu:%d: memcpy of %zu bytes (kind %d) touches memory outside "
                                "the device's allocations",
                                device->id, bytes, (int)kind);
    return MOIRA_OK_STATUS;
}

/* Synchronous copies serve setup code that has no stream yet, as aclrtMemcpy does. */
moira_status_t moira_acl_memcpy(moira_acl_device_t *device, void *dst, const void *src,
                                size_t bytes, moira_acl_memcpy_kind_t kind) {
    MOIRA_RETURN_IF_ERROR(check_copy(device, dst, src, bytes, kind));
    if (bytes) memmove(dst, src, bytes);
    return MOIRA_OK_STATUS;
}

/* The kind is checked against the pointers, as aclrtMemcpy does, so a host pointer passed
 * as device memory is an error, not a stray write. */
moira_status_t moira_acl_memcpy_async(moira_acl_stream_t *stream, void *dst, const void *src,
                                      size_t bytes, moira_acl_memcpy_kind_t kind) {
    MOIRA_RETURN_IF_ERROR(check_copy(stream->device, dst, src, bytes, kind));
    copy_task_t *copy = malloc(sizeof(*copy));
    if (!copy) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "cannot queue a copy");
    *copy = (copy_task_t){dst, src, bytes};
    return moira_acl_stream_submit(
        stream, (moira_acl_task_t){.run = run_copy, .release = free, .arg = copy});
}

/* Drops the reference the stream took at submission. */
static void release_event(void *raw) {
    moira_event_release(raw);
}

/* A failed stream hands its failure on, so waiters on other devices stop too. */
static moira_status_t run_record(void *raw, moira_status_t prior_failure) {
    moira_status_t failure = MOIRA_OK_STATUS;
    if (prior_failure)
        failure = moira_status_make(moira_status_code(prior_failure), "%s",
                                    moira_status_message(prior_failure));
    moira_event_signal(raw, failure);
    return MOIRA_OK_STATUS;
}

/* Waits even after a failure, so the event's producer is never left behind. */
static moira_status_t run_wait(void *raw, moira_status_t prior_failure) {
    (void)prior_failure;
    return moira_event_wait(raw);
}

/* The stream holds the event until it reaches the record point. */
moira_status_t moira_acl_record_event(moira_acl_stream_t *stream, moira_event_t *event) {
    moira_event_retain(event);
    return moira_acl_stream_submit(
        stream, (moira_acl_task_t){.run = run_record, .release = release_event, .arg = event});
}

/* Events come from any backend's queue, so a stream can wait on a cpu queue's work. */
moira_status_t moira_acl_stream_wait_event(moira_acl_stream_t *stream, moira_event_t *event) {
    moira_event_retain(event);
    return moira_acl_stream_submit(
        stream, (moira_acl_task_t){.run = run_wait, .release = release_event, .arg = event});
}

/* Events are the runtime's, so ACL code and Moira queues share them without translation. */
moira_status_t moira_acl_create_event(moira_event_t **out_event) {
    moira_status_t status = moira_event_create(out_event);
    if (!status) return MOIRA_OK_STATUS;
    moira_status_free(status);
    return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "cannot create an event");
}

/* Drops the creator's reference; streams still holding the event keep it alive. */
void moira_acl_destroy_event(moira_event_t *event) {
    moira_event_release(event);
}

/* A host thread waiting for a point in a stream, with the stream's failure passed on. */
moira_status_t moira_acl_synchronize_event(moira_event_t *event) {
    return moira_event_wait(event);
}
