/* The device layer's contract on every device: buffers, in-order asynchronous queues, events
 * across queues, range checks, asynchronous errors surfacing at finish, and the thread pool. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/threadpool.h"
#include "tests/unit/testing.h"

static void check_round_trip_and_order(moira_device_t *device) {
    moira_queue_t *queue = NULL;
    moira_buffer_t *buffer = NULL;
    CHECK_OK(moira_queue_create(device, &queue));
    CHECK_OK(moira_buffer_alloc(device, 4096, -1, &buffer));
    if (!queue || !buffer) return;
    static unsigned char first[4096], second[4096], back[4096];
    memset(first, 0xAB, sizeof(first));
    memset(second, 0x5C, 1024);
    /* Write all, overwrite a window, copy it within the buffer, read: order must hold. */
    CHECK_OK(moira_queue_write(queue, buffer, 0, first, sizeof(first)));
    CHECK_OK(moira_queue_write(queue, buffer, 1024, second, 1024));
    CHECK_OK(moira_queue_copy(queue, buffer, 1024, buffer, 3072, 1024));
    CHECK_OK(moira_queue_read(queue, buffer, 0, back, sizeof(back)));
    CHECK_OK(moira_queue_finish(queue));
    CHECK(back[0] == 0xAB && back[1023] == 0xAB && back[1024] == 0x5C && back[2047] == 0x5C);
    CHECK(back[2048] == 0xAB && back[3072] == 0x5C && back[4095] == 0x5C);
    /* Out-of-range and cross-device misuse is refused before anything runs. */
    CHECK_CODE(moira_queue_write(queue, buffer, 4000, first, 200), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK_CODE(moira_queue_read(queue, buffer, (size_t)-8, back, 16), MOIRA_CODE_INVALID_ARGUMENT);
    moira_buffer_free(buffer);
    moira_queue_destroy(queue);
}

/* Queue B waits on an event queue A signals after its write; B's read must see the write. */
static void check_events_across_queues(moira_device_t *device) {
    moira_queue_t *a = NULL, *b = NULL;
    moira_buffer_t *buffer = NULL;
    moira_event_t *event = NULL;
    CHECK_OK(moira_queue_create(device, &a));
    CHECK_OK(moira_queue_create(device, &b));
    CHECK_OK(moira_buffer_alloc(device, 1 << 20, -1, &buffer));
    CHECK_OK(moira_event_create(&event));
    if (!a || !b || !buffer || !event) return;
    unsigned char *src = malloc(1 << 20), *dst = calloc(1, 1 << 20);
    memset(src, 7, 1 << 20);
    CHECK(!moira_event_is_signalled(event));
    CHECK_OK(moira_queue_wait(b, event));
    CHECK_OK(moira_queue_read(b, buffer, 0, dst, 1 << 20));
    CHECK_OK(moira_queue_write(a, buffer, 0, src, 1 << 20));
    CHECK_OK(moira_queue_signal(a, event));
    CHECK_OK(moira_queue_finish(b));
    CHECK(moira_event_is_signalled(event));
    CHECK(dst[0] == 7 && dst[(1 << 20) - 1] == 7);
    CHECK_OK(moira_event_wait(event));
    moira_event_release(event);
    free(src);
    free(dst);
    moira_buffer_free(buffer);
    moira_queue_destroy(a);
    moira_queue_destroy(b);
}

/* An invalid launch is refused at submission with a message naming the op. */
static void check_launch_validation(moira_device_t *device) {
    moira_queue_t *queue = NULL;
    moira_buffer_t *buffer = NULL;
    CHECK_OK(moira_queue_create(device, &queue));
    CHECK_OK(moira_buffer_alloc(device, 1024, -1, &buffer));
    if (!queue || !buffer) return;
    moira_rmsnorm_params_t p = {.eps = 1e-6f};
    moira_op_launch_t launch = {
        .op = MOIRA_OP_RMSNORM, .params = &p, .params_size = sizeof(p), .n_operands = 3};
    for (int i = 0; i < 3; i++) {
        launch.operands[i].buffer = buffer;
        launch.operands[i].offset = (size_t)i * 128; /* disjoint x, w, y */
        launch.operands[i].dtype = MOIRA_DTYPE_F32;
        launch.operands[i].rank = 2;
        launch.operands[i].shape[0] = 2;
        launch.operands[i].shape[1] = 8;
    }
    launch.operands[1].rank = 1; /* w [N] */
    launch.operands[1].shape[0] = 8;
    CHECK_OK(moira_queue_launch(queue, &launch));
    launch.operands[1].shape[0] = 7; /* w no longer matches x */
    CHECK_CODE(moira_queue_launch(queue, &launch), MOIRA_CODE_INVALID_ARGUMENT);
    launch.operands[1].shape[0] = 8;
    launch.operands[2].offset = 1000; /* y runs past the buffer's end */
    CHECK_CODE(moira_queue_launch(queue, &launch), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK_OK(moira_queue_finish(queue));
    moira_buffer_free(buffer);
    moira_queue_destroy(queue);
}

typedef struct sum_ctx {
    atomic_llong total;
    atomic_int calls;
} sum_ctx_t;

static void add_range(void *raw, int64_t begin, int64_t end, int thread) {
    sum_ctx_t *ctx = raw;
    (void)thread;
    long long local = 0;
    for (int64_t i = begin; i < end; i++)
        local += i;
    atomic_fetch_add(&ctx->total, local);
    atomic_fetch_add(&ctx->calls, 1);
}

static void check_threadpool(void) {
    moira_threadpool_t *pool = NULL;
    CHECK_OK(moira_threadpool_create(3, -1, &pool));
    if (!pool) return;
    CHECK(moira_threadpool_size(pool) == 3);
    for (int64_t n = 0; n < 2000; n += 397) {
        sum_ctx_t ctx;
        atomic_init(&ctx.total, 0);
        atomic_init(&ctx.calls, 0);
        moira_threadpool_parallel_for(pool, n, 7, add_range, &ctx);
        CHECK(atomic_load(&ctx.total) == n * (n - 1) / 2);
    }
    moira_threadpool_destroy(pool);
}

int main(void) {
    CHECK_OK(moira_runtime_init());
    CHECK(moira_device_count() >= 1);
    moira_device_t *cpu = NULL;
    CHECK_OK(moira_device_find("cpu:0", &cpu));
    CHECK_CODE(moira_device_find("cpu:9", &cpu), MOIRA_CODE_NOT_FOUND);
    for (int i = 0; i < moira_device_count(); i++) {
        moira_device_t *device = moira_device_at(i);
        CHECK(moira_device_info(device)->memory_bytes > 0);
        check_round_trip_and_order(device);
        check_events_across_queues(device);
        check_launch_validation(device);
    }
    check_threadpool();
    moira_runtime_shutdown();
    return moira_test_finish("test_device");
}
