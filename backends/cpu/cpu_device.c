/* The cpu backend: host memory as device memory, a worker thread per queue, kernels on a thread
 * pool bound to the machine's cores.
 *
 * A queue is a FIFO of commands drained by its own thread, so submission returns at once and
 * work runs in order, exactly the contract the OpenCL and NPU queues have. A steady state
 * allocates nothing (DESIGN.md §3): command records are recycled through the queue's free list,
 * and kernel temporaries come from the queue's grow-only arena (scratch_arena.h). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/cpu/cpu_buffer.h"
#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/packed_weights.h"
#include "backends/cpu/quant_panels.h"
#include "backends/cpu/scratch_arena.h"
#include "runtime/backend.h"
#include "runtime/env.h"
#include "runtime/hwloc_topology.h"
#include "runtime/log.h"

typedef struct cpu_device {
    moira_device_t base;
    moira_threadpool_t *pool;
} cpu_device_t;

typedef enum command_kind {
    COMMAND_COPY, /* memcpy: writes, reads and copies are all host memory here */
    COMMAND_OP,
    COMMAND_SIGNAL,
    COMMAND_WAIT,
} command_kind_t;

typedef struct command {
    command_kind_t kind;
    struct command *next;
    void *dst;
    const void *src;
    size_t bytes;
    moira_cpu_buffer_t *dst_buffer; /* borrowed; NULL when dst is caller memory */
    size_t dst_offset;
    moira_op_launch_t launch;
    unsigned char params[MOIRA_OP_MAX_PARAMS_BYTES];
    moira_event_t *event; /* owned reference */
} command_t;

typedef struct cpu_queue {
    moira_queue_t base;
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t has_work;
    pthread_cond_t idle;
    command_t *head, *tail;
    /* Records that have run, for reuse (owned, linked by `next`): the queue allocates more only
     * when more commands are in flight than ever before. */
    command_t *spare;
    int records; /* allocated so far, spare or in flight */
    bool busy;
    bool stopping;
    moira_status_t failure;  /* first asynchronous error, owned; reported by finish */
    moira_cpu_arena_t arena; /* kernel temporaries; used only by the worker thread */
} cpu_queue_t;

static const moira_device_vtable_t cpu_vtable;

/* An op's outputs may overwrite weights that were packed (an unusual but legal aliasing): their
 * packed copies must go, like after a write. */
static void forget_outputs(const moira_op_launch_t *launch) {
    for (int i = 0; i < launch->n_operands; i++) {
        const moira_dtensor_t *t = &launch->operands[i];
        if (t->buffer && moira_op_operand_is_output(launch->op, i))
            moira_cpu_buffer_written((moira_cpu_buffer_t *)t->buffer, t->offset,
                                     moira_dtensor_span_bytes(t));
    }
}

/* Runs one command; an earlier failure turns later work into no-ops but still signals events. */
static void execute_command(cpu_queue_t *queue, command_t *command) {
    cpu_device_t *device = (cpu_device_t *)queue->base.device;
    bool failed = queue->failure != MOIRA_OK_STATUS;
    moira_status_t status = MOIRA_OK_STATUS;
    switch (command->kind) {
    case COMMAND_COPY:
        if (!failed) memmove(command->dst, command->src, command->bytes);
        if (!failed && command->dst_buffer)
            moira_cpu_buffer_written(command->dst_buffer, command->dst_offset, command->bytes);
        break;
    case COMMAND_OP:
        if (!failed) {
            command->launch.params = command->params;
            status = moira_cpu_run_op(&command->launch, device->pool);
            forget_outputs(&command->launch);
        }
        break;
    case COMMAND_SIGNAL: {
        moira_status_t failure = MOIRA_OK_STATUS;
        if (failed)
            failure = moira_status_make(moira_status_code(queue->failure), "%s",
                                        moira_status_message(queue->failure));
        moira_event_signal(command->event, failure);
        break;
    }
    case COMMAND_WAIT:
        status = moira_event_wait(command->event);
        break;
    }
    if (command->event) moira_event_release(command->event);
    if (status) {
        pthread_mutex_lock(&queue->mutex);
        if (!queue->failure)
            queue->failure = status;
        else
            moira_status_free(status);
        pthread_mutex_unlock(&queue->mutex);
    }
}

/* The queue's worker thread: commands run one at a time in submission order, which is what makes
 * a queue ordered; `idle` wakes finish() when the list drains. */
static void *queue_main(void *raw) {
    cpu_queue_t *queue = raw;
    moira_cpu_arena_bind(&queue->arena);
    pthread_mutex_lock(&queue->mutex);
    for (;;) {
        while (!queue->head && !queue->stopping)
            pthread_cond_wait(&queue->has_work, &queue->mutex);
        if (!queue->head && queue->stopping) break;
        command_t *command = queue->head;
        queue->head = command->next;
        if (!queue->head) queue->tail = NULL;
        queue->busy = true;
        pthread_mutex_unlock(&queue->mutex);
        execute_command(queue, command);
        pthread_mutex_lock(&queue->mutex);
        command->next = queue->spare;
        queue->spare = command;
        queue->busy = false;
        if (!queue->head) pthread_cond_broadcast(&queue->idle);
    }
    pthread_mutex_unlock(&queue->mutex);
    return NULL;
}

/* Appends under the lock and wakes the worker; enqueueing never blocks on the work itself. */
static moira_status_t submit(moira_queue_t *base, command_t *command) {
    cpu_queue_t *queue = (cpu_queue_t *)base;
    pthread_mutex_lock(&queue->mutex);
    if (queue->tail)
        queue->tail->next = command;
    else
        queue->head = command;
    queue->tail = command;
    pthread_cond_signal(&queue->has_work);
    pthread_mutex_unlock(&queue->mutex);
    return MOIRA_OK_STATUS;
}

/* Records a queue starts with: more than one layer's decode step has in flight. */
#define FIRST_RECORDS 64

/* With the mutex held and no spare left: as many new records as the queue has (FIRST_RECORDS the
 * first time). Doubling leaves headroom, so a step that has a few more commands in flight than
 * its warm-up had (how many are in flight depends on how far the worker lags) still finds
 * spares. Stops early when memory runs out. */
static void add_records(cpu_queue_t *queue) {
    int wanted = queue->records ? queue->records : FIRST_RECORDS;
    for (int i = 0; i < wanted; i++) {
        command_t *record = malloc(sizeof(*record));
        if (!record) return;
        record->next = queue->spare;
        queue->spare = record;
        queue->records++;
    }
}

/* A spare record. Fields are set one by one, not zeroed whole: the params area alone is larger
 * than everything else a command holds. */
static moira_status_t new_command(moira_queue_t *base, command_kind_t kind,
                                  command_t **out_command) {
    cpu_queue_t *queue = (cpu_queue_t *)base;
    pthread_mutex_lock(&queue->mutex);
    if (!queue->spare) add_records(queue);
    command_t *command = queue->spare;
    if (command) queue->spare = command->next;
    pthread_mutex_unlock(&queue->mutex);
    if (!command) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cpu queue: out of memory");
    command->kind = kind;
    command->next = NULL;
    command->dst = NULL;
    command->src = NULL;
    command->bytes = 0;
    command->dst_buffer = NULL;
    command->dst_offset = 0;
    command->event = NULL;
    *out_command = command;
    return MOIRA_OK_STATUS;
}

/* cpu buffers are host memory, so the runtime may read them in place. */
static void *host_ptr(moira_buffer_t *buffer) {
    return ((moira_cpu_buffer_t *)buffer)->memory.data;
}

/* `dst_buffer` (NULL for reads into caller memory) is told about the write once it is done. */
static moira_status_t enqueue_memcpy(moira_queue_t *queue, moira_buffer_t *dst_buffer,
                                     size_t dst_offset, void *dst, const void *src, size_t bytes) {
    command_t *command = NULL;
    MOIRA_RETURN_IF_ERROR(new_command(queue, COMMAND_COPY, &command));
    command->dst = dst;
    command->src = src;
    command->bytes = bytes;
    command->dst_buffer = (moira_cpu_buffer_t *)dst_buffer;
    command->dst_offset = dst_offset;
    return submit(queue, command);
}

/* A host-to-buffer copy; the buffer is told afterwards so stale packed copies are dropped. */
static moira_status_t cpu_enqueue_write(moira_queue_t *queue, moira_buffer_t *dst,
                                        size_t dst_offset, const void *src, size_t bytes) {
    return enqueue_memcpy(queue, dst, dst_offset, (char *)host_ptr(dst) + dst_offset, src, bytes);
}

/* A buffer-to-host copy; nothing in the buffer changes. */
static moira_status_t cpu_enqueue_read(moira_queue_t *queue, moira_buffer_t *src, size_t src_offset,
                                       void *dst, size_t bytes) {
    return enqueue_memcpy(queue, NULL, 0, dst, (char *)host_ptr(src) + src_offset, bytes);
}

/* Buffer to buffer on the same device: one memcpy in queue order. */
static moira_status_t cpu_enqueue_copy(moira_queue_t *queue, moira_buffer_t *src, size_t src_offset,
                                       moira_buffer_t *dst, size_t dst_offset, size_t bytes) {
    return enqueue_memcpy(queue, dst, dst_offset, (char *)host_ptr(dst) + dst_offset,
                          (char *)host_ptr(src) + src_offset, bytes);
}

/* The device layer has checked the launch against the op's contract (moira_queue_launch). */
static moira_status_t cpu_enqueue_op(moira_queue_t *queue, const moira_op_launch_t *launch) {
    command_t *command = NULL;
    MOIRA_RETURN_IF_ERROR(new_command(queue, COMMAND_OP, &command));
    command->launch = *launch;
    if (launch->params_size) memcpy(command->params, launch->params, launch->params_size);
    return submit(queue, command);
}

/* Signals and waits share one command kind each, with the event referenced until it runs. */
static moira_status_t enqueue_event(moira_queue_t *queue, command_kind_t kind,
                                    moira_event_t *event) {
    command_t *command = NULL;
    MOIRA_RETURN_IF_ERROR(new_command(queue, kind, &command));
    moira_event_retain(event);
    command->event = event;
    return submit(queue, command);
}

/* Marks the event when everything enqueued before it has run. */
static moira_status_t cpu_enqueue_signal(moira_queue_t *queue, moira_event_t *event) {
    return enqueue_event(queue, COMMAND_SIGNAL, event);
}

/* Holds the queue until another queue (possibly another device) signals the event. */
static moira_status_t cpu_enqueue_wait(moira_queue_t *queue, moira_event_t *event) {
    return enqueue_event(queue, COMMAND_WAIT, event);
}

/* Blocks until the queue is empty and idle, and hands back the first failure since the last
 * finish. */
static moira_status_t cpu_queue_finish(moira_queue_t *base) {
    cpu_queue_t *queue = (cpu_queue_t *)base;
    pthread_mutex_lock(&queue->mutex);
    while (queue->head || queue->busy)
        pthread_cond_wait(&queue->idle, &queue->mutex);
    moira_status_t failure = queue->failure;
    queue->failure = MOIRA_OK_STATUS;
    pthread_mutex_unlock(&queue->mutex);
    return failure;
}

/* One worker thread per queue; kernels themselves run on the device's shared pool. */
static moira_status_t cpu_queue_create(moira_device_t *device, moira_queue_t **out_queue) {
    cpu_queue_t *queue = calloc(1, sizeof(*queue));
    if (!queue) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate a queue");
    queue->base.device = device;
    moira_cpu_arena_init(&queue->arena);
    pthread_mutex_init(&queue->mutex, NULL);
    pthread_cond_init(&queue->has_work, NULL);
    pthread_cond_init(&queue->idle, NULL);
    int err = pthread_create(&queue->thread, NULL, queue_main, queue);
    if (err != 0) {
        free(queue);
        return moira_thread_start_error(err, "a queue thread");
    }
    *out_queue = &queue->base;
    return MOIRA_OK_STATUS;
}

/* Drains the queue before stopping its worker, so no enqueued command is lost; the spare
 * records and the arena go once the worker has stopped. */
static void cpu_queue_destroy(moira_queue_t *base) {
    cpu_queue_t *queue = (cpu_queue_t *)base;
    moira_status_t failure = cpu_queue_finish(base);
    if (failure)
        MOIRA_LOG_W("queue destroyed with an unreported error: %s", moira_status_message(failure));
    moira_status_free(failure);
    pthread_mutex_lock(&queue->mutex);
    queue->stopping = true;
    pthread_cond_signal(&queue->has_work);
    pthread_mutex_unlock(&queue->mutex);
    pthread_join(queue->thread, NULL);
    while (queue->spare) {
        command_t *next = queue->spare->next;
        free(queue->spare);
        queue->spare = next;
    }
    moira_cpu_arena_release(&queue->arena);
    pthread_mutex_destroy(&queue->mutex);
    pthread_cond_destroy(&queue->has_work);
    pthread_cond_destroy(&queue->idle);
    free(queue);
}

/* Memory bound to the NUMA node the plan names, so experts sit next to the cores reading them;
 * their packed copies go to the same node. */
static moira_status_t cpu_buffer_alloc(moira_device_t *device, size_t bytes, int numa_node,
                                       moira_buffer_t **out_buffer) {
    moira_cpu_buffer_t *buffer = calloc(1, sizeof(*buffer));
    if (!buffer || !moira_cpu_host_alloc(bytes, numa_node, &buffer->memory)) {
        free(buffer);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes",
                                 device->info.name, bytes);
    }
    buffer->numa_node = numa_node;
    pthread_mutex_init(&buffer->packed_mutex, NULL);
    atomic_init(&buffer->packed, NULL);
    buffer->base.device = device;
    buffer->base.size = bytes;
    *out_buffer = &buffer->base;
    return MOIRA_OK_STATUS;
}

/* Packed copies go with the buffer they were made from. */
static void cpu_buffer_free(moira_buffer_t *base) {
    moira_cpu_buffer_t *buffer = (moira_cpu_buffer_t *)base;
    moira_cpu_buffer_drop_packed(buffer);
    pthread_mutex_destroy(&buffer->packed_mutex);
    moira_cpu_host_free(&buffer->memory);
    free(buffer);
}

/* Packs expert weights when a layer is uploaded, so the first token does not pay for it. */
static moira_status_t cpu_prepare_weights(moira_device_t *base, int op,
                                          const moira_dtensor_t *weights, int n_weights) {
    cpu_device_t *device = (cpu_device_t *)base;
    return moira_cpu_prepare_weights(device->pool, op, weights, n_weights);
}

/* The cpu runs every op in every weight dtype (narrow dtypes are widened in the kernels). */
static bool cpu_supports_op(const moira_device_t *device, int op, moira_dtype_t weight_dtype) {
    (void)device;
    return moira_cpu_supports_op(op, weight_dtype);
}

/* Stops the pool the kernels run on, then frees the device. */
static void cpu_device_destroy(moira_device_t *base) {
    cpu_device_t *device = (cpu_device_t *)base;
    moira_threadpool_destroy(device->pool);
    free(device);
}

/* Fills what hwloc knows: the processor's name, cores, NUMA nodes and memory. Peak figures are
 * estimates (cores x clock x SIMD width) until a benchmark measures them. */
static void describe_host(moira_device_info_t *info, int n_threads) {
    info->kind = MOIRA_DEVICE_KIND_CPU;
    /* bf16 math (gemm.h) makes bf16-weight GEMMs the least precise path, so it sets the limit. */
    info->compute_precision = moira_cpu_bf16_math_rounded() ? MOIRA_DTYPE_BF16 : MOIRA_DTYPE_F32;
    /* The int8 tiles quantise activations per token (quant_panels.h); without them quantised
     * weights are widened to f32 rows. */
    info->quantized_precision =
        moira_cpu_qtile_kernel(MOIRA_DTYPE_INT8) ? MOIRA_DTYPE_INT8 : MOIRA_DTYPE_F32;
    info->numa_node = -1;
    snprintf(info->model, sizeof(info->model), "host CPU");
    hwloc_topology_t topology;
    moira_status_t status = moira_hwloc_topology(&topology);
    if (status) {
        moira_status_free(status);
        return;
    }
    hwloc_obj_t root = hwloc_get_root_obj(topology);
    hwloc_obj_t package = hwloc_get_obj_by_type(topology, HWLOC_OBJ_PACKAGE, 0);
    const char *model = package ? hwloc_obj_get_info_by_name(package, "CPUModel") : NULL;
    if (!model) model = hwloc_obj_get_info_by_name(root, "CPUModel");
    if (model) snprintf(info->model, sizeof(info->model), "%s", model);
    const char *vendor = package ? hwloc_obj_get_info_by_name(package, "CPUVendor") : NULL;
    if (vendor) snprintf(info->vendor, sizeof(info->vendor), "%s", vendor);
    info->compute_units = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE);
    int n_numa = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_NUMANODE);
    uint64_t memory = 0;
    for (int i = 0; i < n_numa; i++)
        memory += hwloc_get_obj_by_type(topology, HWLOC_OBJ_NUMANODE, (unsigned)i)
                      ->attr->numanode.local_memory;
    info->memory_bytes = memory;
    if (n_numa == 1) info->numa_node = 0;
    /* 2 FMA ports x 16 f32 lanes x 2 flops at an assumed 2.5 GHz: an estimate, labelled so. */
    double per_core_gflops = 2.0 * 16 * 2 * 2.5;
    info->peak_tflops[MOIRA_DTYPE_F32] = info->compute_units * per_core_gflops / 1000.0;
    info->peak_tflops[MOIRA_DTYPE_BF16] = info->peak_tflops[MOIRA_DTYPE_F32];
    moira_device_info_add_detail(info, "numa_nodes", true, "%d", n_numa);
    moira_device_info_add_detail(info, "threads", true, "%d", n_threads);
    moira_device_info_add_detail(info, "hw_threads", true, "%d",
                                 hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_PU));
    moira_device_info_add_detail(info, "peak_is_estimate", true, "true");
    moira_device_info_add_detail(info, "isa", false, "%s",
                                 moira_cpu_isa_name(moira_cpu_isa_best()));
    moira_device_info_add_detail(info, "bf16_math", false, "%s",
                                 moira_cpu_bf16_math_rounded() ? "bf16" : "f32");
}

/* MOIRA_CPU_THREADS overrides the thread count (default: one per physical core). */
static int threads_from_env(void) {
    return (int)moira_env_int("MOIRA_CPU_THREADS", 1, 1024, 0);
}

/* One cpu device for the whole host, its pool bound to the cores (MOIRA_CPU_THREADS overrides
 * the count). */
static moira_status_t cpu_enumerate(moira_device_t **out_devices, int capacity, int *out_count) {
    *out_count = 0;
    if (capacity < 1) return MOIRA_OK_STATUS;
    cpu_device_t *device = calloc(1, sizeof(*device));
    if (!device) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate cpu device");
    moira_status_t status = moira_threadpool_create(threads_from_env(), -1, &device->pool);
    if (status) {
        free(device);
        return status;
    }
    device->base.vtable = &cpu_vtable;
    describe_host(&device->base.info, moira_threadpool_size(device->pool));
    out_devices[0] = &device->base;
    *out_count = 1;
    return MOIRA_OK_STATUS;
}

static const moira_device_vtable_t cpu_vtable = {
    .destroy = cpu_device_destroy,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .buffer_host_ptr = host_ptr,
    .queue_create = cpu_queue_create,
    .queue_destroy = cpu_queue_destroy,
    .enqueue_write = cpu_enqueue_write,
    .enqueue_read = cpu_enqueue_read,
    .enqueue_copy = cpu_enqueue_copy,
    .enqueue_op = cpu_enqueue_op,
    .enqueue_signal = cpu_enqueue_signal,
    .enqueue_wait = cpu_enqueue_wait,
    .queue_finish = cpu_queue_finish,
    .supports_op = cpu_supports_op,
    .prepare_weights = cpu_prepare_weights,
};

static const moira_backend_t cpu_backend = {.name = "cpu", .enumerate = cpu_enumerate};

/* Called from the generated registry (backends/registry_builtin.c.in). */
moira_status_t moira_backend_cpu_register(void) {
    return moira_backend_register(&cpu_backend);
}
