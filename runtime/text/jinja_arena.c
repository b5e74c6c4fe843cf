/* The arena every Jinja object lives in, the string builder on top of it, and the error exit
 * (a longjmp back to the public entry point, which drops the arena). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/text/jinja_internal.h"

struct jj_chunk {
    jj_chunk *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
};

#define JJ_CHUNK_SIZE ((size_t)64 << 10)
#define JJ_ALIGN 16

/* Rounds up to the arena's alignment, enough for any value type. */
static size_t align_up(size_t n) {
    return (n + JJ_ALIGN - 1) & ~(size_t)(JJ_ALIGN - 1);
}

/* Takes a new chunk from the system, counting it against the memory limit: a template that
 * builds ever larger strings stops with an error instead of exhausting the host. */
static jj_chunk *new_chunk(jj_ctx *ctx, size_t min_size) {
    size_t size = min_size > JJ_CHUNK_SIZE ? min_size : JJ_CHUNK_SIZE;
    if (size > JJ_MEMORY_LIMIT || ctx->arena.total > JJ_MEMORY_LIMIT - size)
        jj_fail_at(ctx, SIZE_MAX, "template needs more than %zu MiB of memory",
                   JJ_MEMORY_LIMIT >> 20);
    jj_chunk *c = malloc(sizeof(jj_chunk) + size);
    if (!c) jj_fail_code(ctx, MOIRA_CODE_OUT_OF_MEMORY, "out of memory rendering a template");
    c->size = size;
    c->used = 0;
    c->next = ctx->arena.head;
    ctx->arena.head = c;
    ctx->arena.total += size;
    return c;
}

/* Zeroed memory that lives until the arena is dropped; never NULL (fails instead). */
void *jj_alloc(jj_ctx *ctx, size_t size) {
    size = align_up(size ? size : 1);
    jj_chunk *c = ctx->arena.head;
    if (!c || c->size - c->used < size) {
        if (size > JJ_CHUNK_SIZE / 4) {
            /* A big block gets a chunk of its own behind the current one, so the space left in
             * the current chunk stays usable. */
            jj_chunk *big = new_chunk(ctx, size);
            if (c) {
                ctx->arena.head = c;
                big->next = c->next;
                c->next = big;
            }
            big->used = size;
            memset(big->data, 0, size);
            return big->data;
        }
        c = new_chunk(ctx, size);
    }
    void *p = c->data + c->used;
    c->used += size;
    memset(p, 0, size);
    return p;
}

/* Resizes an arena block. The block most recently allocated grows in place when its chunk has
 * room, so a string builder that keeps appending does not leave a trail of copies. */
void *jj_grow(jj_ctx *ctx, void *old, size_t old_size, size_t new_size) {
    if (!old) return jj_alloc(ctx, new_size);
    jj_chunk *c = ctx->arena.head;
    size_t old_aligned = align_up(old_size ? old_size : 1);
    if (c && (unsigned char *)old + old_aligned == c->data + c->used &&
        (unsigned char *)old >= c->data) {
        size_t start = (size_t)((unsigned char *)old - c->data);
        size_t need = align_up(new_size);
        if (start + need <= c->size) {
            if (need > old_aligned) memset(c->data + c->used, 0, need - old_aligned);
            c->used = start + need;
            return old;
        }
    }
    void *p = jj_alloc(ctx, new_size);
    memcpy(p, old, old_size < new_size ? old_size : new_size);
    return p;
}

/* A NUL-terminated arena copy of n bytes (names and texts that C calls need terminated). */
char *jj_strndup(jj_ctx *ctx, const char *s, size_t n) {
    char *p = jj_alloc(ctx, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* Gives every chunk back to the system; the arena can be reused afterwards. */
void jj_arena_free(jj_arena *arena) {
    jj_chunk *c = arena->head;
    while (c) {
        jj_chunk *next = c->next;
        free(c);
        c = next;
    }
    arena->head = NULL;
    arena->total = 0;
}

/* Line and column of an offset: columns count characters, not bytes, so they match what an
 * editor shows for non-ASCII text. */
void jj_line_col(const jj_ctx *ctx, size_t pos, int *line, int *col) {
    int l = 1, c = 1;
    if (pos > ctx->src_len) pos = ctx->src_len;
    for (size_t i = 0; i < pos; i++) {
        unsigned char ch = (unsigned char)ctx->src[i];
        if (ch == '\n') {
            l++;
            c = 1;
        } else if ((ch & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

/* Formats the failure into ctx->error (located when the offset is known) and jumps back to the
 * parse or render entry point. */
static _Noreturn void fail_v(jj_ctx *ctx, moira_code_t code, size_t pos, const char *fmt,
                             va_list args) {
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, args);
    if (pos != SIZE_MAX && ctx->src) {
        int line, col;
        jj_line_col(ctx, pos, &line, &col);
        ctx->error = moira_status_at(code, ctx->origin, line, col, "%s", msg);
    } else {
        ctx->error = moira_status_at(code, ctx->origin, 0, 0, "%s", msg);
    }
    longjmp(*ctx->on_error, 1);
}

/* jj_fail_at with a va_list, for the render's jj_error. */
_Noreturn void jj_vfail_at(jj_ctx *ctx, size_t pos, const char *fmt, va_list args) {
    fail_v(ctx, MOIRA_CODE_INVALID_INPUT, pos, fmt, args);
}

/* Formats an INVALID_INPUT status at a source offset and unwinds to the entry point. */
_Noreturn void jj_fail_at(jj_ctx *ctx, size_t pos, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fail_v(ctx, MOIRA_CODE_INVALID_INPUT, pos, fmt, args);
}

/* Fails with another code (out of memory) and no location. */
_Noreturn void jj_fail_code(jj_ctx *ctx, moira_code_t code, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fail_v(ctx, code, SIZE_MAX, fmt, args);
}

/* Starts an empty output buffer on the heap and registers it for cleanup on error. */
void jj_output_open(jj_ctx *ctx, jj_buf *b) {
    memset(b, 0, sizeof(*b));
    b->heap = true;
    b->next_open = ctx->open_outputs;
    ctx->open_outputs = b;
}

/* Takes a buffer off the open list and stops counting its memory. */
static void unlink_output(jj_ctx *ctx, jj_buf *b) {
    for (jj_buf **link = &ctx->open_outputs; *link; link = &(*link)->next_open)
        if (*link == b) {
            *link = b->next_open;
            break;
        }
    ctx->arena.total -= b->cap;
}

/* Ends an output buffer: its malloc'd text for the caller, or (to_arena) an arena copy. */
char *jj_output_close(jj_ctx *ctx, jj_buf *b, bool to_arena) {
    unlink_output(ctx, b);
    char *text = b->p;
    b->p = NULL;
    if (!to_arena) return text;
    char *copy = jj_strndup(ctx, text ? text : "", b->n);
    free(text);
    return copy;
}

/* The error path's cleanup of output buffers an unwinding render left open. */
void jj_output_free_all(jj_ctx *ctx) {
    while (ctx->open_outputs) {
        jj_buf *b = ctx->open_outputs;
        unlink_output(ctx, b);
        free(b->p);
        b->p = NULL;
    }
}

/* Output grows by realloc up to the output limit, its capacity counted as memory in use. */
static void grow_output(jj_ctx *ctx, jj_buf *b, size_t need) {
    if (need > JJ_OUTPUT_LIMIT + 1)
        jj_fail_at(ctx, ctx->output_pos, "rendered text exceeds %zu MiB", JJ_OUTPUT_LIMIT >> 20);
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    if (cap > JJ_OUTPUT_LIMIT + 1) cap = JJ_OUTPUT_LIMIT + 1;
    if (ctx->arena.total - b->cap > JJ_MEMORY_LIMIT - cap)
        jj_fail_at(ctx, SIZE_MAX, "template needs more than %zu MiB of memory",
                   JJ_MEMORY_LIMIT >> 20);
    char *p = realloc(b->p, cap);
    if (!p) jj_fail_code(ctx, MOIRA_CODE_OUT_OF_MEMORY, "out of memory rendering a template");
    ctx->arena.total += cap - b->cap;
    b->p = p;
    b->cap = cap;
}

/* Appends n bytes. Arena buffers double in place when they can; output buffers grow on the
 * heap and fail past the output limit. */
void jj_buf_put(jj_ctx *ctx, jj_buf *b, const char *s, size_t n) {
    if (b->heap) {
        if (b->cap - b->n < n + 1) grow_output(ctx, b, b->n + n + 1);
        if (n) memcpy(b->p + b->n, s, n);
        b->n += n;
        b->p[b->n] = 0;
        return;
    }
    if (n == 0 && b->p) return; /* an empty put still allocates, so the text is never NULL */
    if (b->cap - b->n < n + 1) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->n < n + 1) {
            if (cap > JJ_MEMORY_LIMIT)
                jj_fail_at(ctx, SIZE_MAX, "template needs more than %zu MiB of memory",
                           JJ_MEMORY_LIMIT >> 20);
            cap *= 2;
        }
        b->p = jj_grow(ctx, b->p, b->cap, cap);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* Appends a NUL-terminated string. */
void jj_buf_puts(jj_ctx *ctx, jj_buf *b, const char *s) {
    jj_buf_put(ctx, b, s, strlen(s));
}

/* Appends one byte. */
void jj_buf_putc(jj_ctx *ctx, jj_buf *b, char c) {
    jj_buf_put(ctx, b, &c, 1);
}

/* Appends printf output (short: numbers and fixed words, never user text). */
void jj_buf_printf(jj_ctx *ctx, jj_buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, args);
    va_end(args);
    if (n < 0) return;
    jj_buf_put(ctx, b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}
