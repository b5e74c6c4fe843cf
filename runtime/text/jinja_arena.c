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

char *jj_strndup(jj_ctx *ctx, const char *s, size_t n) {
    char *p = jj_alloc(ctx, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

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

_Noreturn void jj_vfail_at(jj_ctx *ctx, size_t pos, const char *fmt, va_list args) {
    fail_v(ctx, MOIRA_CODE_INVALID_INPUT, pos, fmt, args);
}

_Noreturn void jj_fail_at(jj_ctx *ctx, size_t pos, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fail_v(ctx, MOIRA_CODE_INVALID_INPUT, pos, fmt, args);
}

_Noreturn void jj_fail_code(jj_ctx *ctx, moira_code_t code, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fail_v(ctx, code, SIZE_MAX, fmt, args);
}

void jj_output_open(jj_ctx *ctx, jj_buf *b) {
    memset(b, 0, sizeof(*b));
    b->heap = true;
    b->next_open = ctx->open_outputs;
    ctx->open_outputs = b;
}

static void unlink_output(jj_ctx *ctx, jj_buf *b) {
    for (jj_buf **link = &ctx->open_outputs; *link; link = &(*link)->next_open)
        if (*link == b) {
            *link = b->next_open;
            break;
        }
    ctx->arena.total -= b->cap;
}

char *jj_output_close(jj_ctx *ctx, jj_buf *b, bool to_arena) {
    unlink_output(ctx, b);
    char *text = b->p;
    b->p = NULL;
    if (!to_arena) return text;
    char *copy = jj_strndup(ctx, text ? text : "", b->n);
    free(text);
    return copy;
}

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

void jj_buf_put(jj_ctx *ctx, jj_buf *b, const char *s, size_t n) {
    if (b->heap) {
        if (b->cap - b->n < n + 1) grow_output(ctx, b, b->n + n + 1);
        if (n) memcpy(b->p + b->n, s, n);
        b->n += n;
        b->p[b->n] = 0;
        return;
    }
    if (n == 0) return;
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
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void jj_buf_puts(jj_ctx *ctx, jj_buf *b, const char *s) {
    jj_buf_put(ctx, b, s, strlen(s));
}

void jj_buf_putc(jj_ctx *ctx, jj_buf *b, char c) {
    jj_buf_put(ctx, b, &c, 1);
}

void jj_buf_printf(jj_ctx *ctx, jj_buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, args);
    va_end(args);
    if (n < 0) return;
    jj_buf_put(ctx, b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}
