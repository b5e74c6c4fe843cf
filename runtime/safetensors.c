/* safetensors reader and writer.
 *
 * Why a hand-written JSON parser and not libyaml (the one parsing library Moira links): JSON is
 * YAML flow syntax only in the common case. Tried against libyaml 0.2: it rejects the surrogate
 * pairs ("\ud83d\ude00") that Python's json.dumps writes for any non-BMP character in a tensor
 * name, it rejects keys longer than 1024 characters (YAML's implicit-key limit), and it accepts
 * things no JSON header may hold (anchors and aliases, comments, unquoted strings), so it would be
 * both too strict and too lax. The header has a small fixed shape, and a strict recursive-descent
 * parser for it is a few hundred lines that check every byte. It also knows the byte offset of
 * every error, which the messages report as "FILE:1:COL" (COL = byte offset within the JSON
 * header + 1; the header is one line in every writer we know of).
 *
 * Safety model: everything about a file is validated in moira_safetensors_open (JSON syntax,
 * dtypes, shapes, byte ranges, sizes, duplicate names, fp8 scale shapes), so the views it hands
 * out can be read without further checks. Two tensors whose byte ranges overlap are refused, as
 * the format and Hugging Face's library refuse them (allowing them let a small file alias one
 * misaligned range thousands of times, each alias costing an aligned copy). One hazard remains that
 * no user-space check can exclude: another process truncating a file while it is mapped makes later
 * reads fault (SIGBUS), as with every mmap-based loader. */
#include "runtime/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/atomic_file.h"
#include "runtime/hash.h"
#include "runtime/utf8.h"

#define INDEX_FILE_NAME "model.safetensors.index.json"
#define JSON_MAX_DEPTH 64
#define NO_ENTRY SIZE_MAX
#define SHOWN_NAME_MAX 160

typedef struct shard {
    char *path; /* owned */
    void *map;  /* owned mapping of the whole file, or a heap copy when `heap` */
    size_t map_size;
    bool heap; /* `map` came from malloc (moira_safetensors_open_memory), not mmap */
} shard_t;

typedef struct entry {
    char *name;               /* owned */
    size_t shard;             /* index into shards */
    uint64_t begin, end;      /* byte range in the shard's data section */
    moira_tensor_t view;      /* what find hands out; data borrowed from the mapping or `copy` */
    void *copy;               /* owned aligned copy when the mapped data is misaligned */
    moira_tensor_t scale_f32; /* owned F32 copy of this tensor when it is a BF16 block scale */
} entry_t;

/* A tensor of a dtype Moira does not compute with (F64, BOOL, U8, ...): checked like any other,
 * then left out, so that a checkpoint carrying one unused still loads; asking for it says why. */
typedef struct skipped {
    char *name;                     /* owned */
    char *dtype;                    /* owned */
    moira_safetensors_other_t view; /* what moira_safetensors_other hands out */
    size_t shard;                   /* index into shards */
} skipped_t;

/* A quantised weight made from a skipped U8/I8 `X.weight` and its scales (DESIGN.md §4): MXFP4
 * with `X.scale` (U8/F8_E8M0 [out, in/32]), INT8 with `X.weight_scale` (F32 [out]). The raw
 * tensors stay in the skipped list, so tools that read bytes still see them as stored. */
typedef struct quantized {
    const char *name;     /* borrowed from the skipped weight */
    moira_tensor_t view;  /* MXFP4 or INT8 [out, in]; scale points at `scale` or an entry */
    moira_tensor_t scale; /* MXFP4's E8M0 view; unused for INT8 */
} quantized_t;

struct moira_safetensors {
    char *path;
    skipped_t *skipped;
    size_t skipped_count;
    shard_t *shards;
    size_t shard_count, shard_cap;
    entry_t *entries;
    size_t count, entry_cap;
    size_t *table; /* open addressing over entries, NO_ENTRY when empty; cap is a power of two */
    size_t table_cap;
    quantized_t *quantized; /* owned array, sorted by name */
    size_t quantized_count;
};

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */

/* Error messages quote names from untrusted files; control bytes and runaway lengths would make
 * them unreadable, so they are escaped and cut (at a UTF-8 character boundary). */
static const char *show_name(const char *name, char *buf, size_t buf_size) {
    size_t o = 0;
    for (size_t i = 0; name[i] && o + 8 < buf_size; i++) {
        unsigned char c = (unsigned char)name[i];
        if (o + 12 >= buf_size && (c & 0xC0) != 0x80) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (c < 0x20 || c == 0x7f)
            o += (size_t)snprintf(buf + o, buf_size - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    buf[o] = '\0';
    return buf;
}

static const char *shape_str(int rank, const int64_t *shape, char *buf, size_t buf_size) {
    moira_tensor_t t = {.rank = rank};
    for (int i = 0; i < rank && i < MOIRA_MAX_RANK; i++)
        t.shape[i] = shape[i];
    return moira_tensor_shape_str(&t, buf, buf_size);
}

/* The message every semantic problem with one tensor gets: "PATH: tensor NAME: ...". */
static moira_status_t tensor_error(moira_code_t code, const char *path, const char *name,
                                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static moira_status_t tensor_error(moira_code_t code, const char *path, const char *name,
                                   const char *fmt, ...) {
    char what[512], shown[SHOWN_NAME_MAX];
    va_list args;
    va_start(args, fmt);
    vsnprintf(what, sizeof(what), fmt, args);
    va_end(args);
    return moira_status_at(code, path, 0, 0, "tensor %s: %s", show_name(name, shown, sizeof(shown)),
                           what);
}

/* The GNU strerror_r (this project builds with _GNU_SOURCE) returns the text; unlike strerror
 * it is safe while other threads report errors too. */
static moira_status_t errno_error_code(moira_code_t code, const char *path, const char *doing,
                                       int err) {
    char text[128];
    return moira_status_at(code, path, 0, 0, "%s: %s", doing, strerror_r(err, text, sizeof(text)));
}

/* A missing file is NOT_FOUND (the user named something that is not there); the rest is IO. */
static moira_status_t errno_error(const char *path, const char *doing, int err) {
    moira_code_t code = (err == ENOENT || err == ENOTDIR) ? MOIRA_CODE_NOT_FOUND : MOIRA_CODE_IO;
    return errno_error_code(code, path, doing, err);
}

static moira_status_t out_of_memory(const char *path) {
    return moira_status_at(MOIRA_CODE_OUT_OF_MEMORY, path, 0, 0, "out of host memory");
}

static char *join_path(const char *dir, const char *name) {
    char *out = NULL;
    size_t len = strlen(dir);
    bool slash = len > 0 && dir[len - 1] == '/';
    if (asprintf(&out, "%s%s%s", dir, slash ? "" : "/", name) < 0) return NULL;
    return out;
}

static uint64_t hash_name(const char *name) {
    return moira_fnv1a64(MOIRA_FNV1A64_BASIS, name, strlen(name));
}

/* The kernel's limit on memory mappings per process (Linux vm.max_map_count), or its default. */
static size_t max_mappings(void) {
    size_t limit = 65530;
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    if (f) {
        unsigned long long value;
        if (fscanf(f, "%llu", &value) == 1 && value > 0) limit = (size_t)value;
        fclose(f);
    }
    return limit;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* ------------------------------------------------------------------------------------------ */
/* A strict JSON parser (RFC 8259) over a byte range, with located errors                     */

typedef struct json {
    const char *text;
    size_t len;
    size_t pos;
    const char *path; /* file named in messages */
    bool one_line;    /* safetensors header: line 1, col = byte offset + 1 */
} json_t;

static moira_status_t json_error_at(const json_t *j, size_t offset, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static moira_status_t json_error_at(const json_t *j, size_t offset, const char *fmt, ...) {
    char what[256];
    va_list args;
    va_start(args, fmt);
    vsnprintf(what, sizeof(what), fmt, args);
    va_end(args);
    size_t line = 1, col = offset + 1;
    if (!j->one_line) {
        col = 1;
        for (size_t i = 0; i < offset && i < j->len; i++) {
            if (j->text[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
    }
    if (line > INT_MAX) line = INT_MAX;
    if (col > INT_MAX) col = INT_MAX;
    return moira_status_at(MOIRA_CODE_INVALID_INPUT, j->path, (int)line, (int)col, "%s%s",
                           j->one_line ? "header: " : "", what);
}

static bool is_digit(int c) {
    return c >= '0' && c <= '9';
}

/* Whether `c` can start a JSON value: lets callers tell "valid JSON of the wrong kind" (a
 * semantic error about the tensor) from a syntax error. */
static bool is_value_start(int c) {
    return c == '{' || c == '[' || c == '"' || c == '-' || is_digit(c) || c == 't' || c == 'f' ||
           c == 'n';
}

static int json_peek(json_t *j) {
    while (j->pos < j->len) {
        char c = j->text[j->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        j->pos++;
    }
    return j->pos < j->len ? (unsigned char)j->text[j->pos] : -1;
}

static moira_status_t json_unexpected(json_t *j, const char *expected) {
    int c = json_peek(j);
    const char *what = j->one_line ? "header" : "file";
    if (c < 0)
        return json_error_at(j, j->pos, "expected %s, found the end of the %s", expected, what);
    if (c >= 0x20 && c < 0x7f)
        return json_error_at(j, j->pos, "expected %s, found '%c'", expected, c);
    return json_error_at(j, j->pos, "expected %s, found byte 0x%02x", expected, c);
}

static moira_status_t json_expect(json_t *j, char c, const char *expected) {
    if (json_peek(j) != c) return json_unexpected(j, expected);
    j->pos++;
    return MOIRA_OK_STATUS;
}

static bool json_hex4(const json_t *j, size_t p, size_t end, uint32_t *out) {
    if (end - p < 4) return false;
    uint32_t v = 0;
    for (size_t i = p; i < p + 4; i++) {
        char c = j->text[i];
        int d = is_digit(c)              ? c - '0'
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                         : -1;
        if (d < 0) return false;
        v = v * 16 + (uint32_t)d;
    }
    *out = v;
    return true;
}

/* Reads the string whose opening quote is at the cursor. With `out`, stores a new NUL-terminated
 * UTF-8 copy (caller frees) and refuses "\u0000", which no C string can hold; without, it only
 * validates. Decoding never grows the text, so the copy fits in the escaped length. */
static moira_status_t json_string(json_t *j, char **out) {
    const unsigned char *s = (const unsigned char *)j->text;
    size_t start = j->pos, end = start + 1;
    while (end < j->len && s[end] != '"')
        end += s[end] == '\\' ? 2 : 1;
    if (end >= j->len) return json_error_at(j, start, "unterminated string");
    char *buf = NULL;
    if (out) {
        *out = NULL;
        buf = malloc(end - start);
        if (!buf) return out_of_memory(j->path);
    }
    size_t o = 0, p = start + 1;
    moira_status_t status = MOIRA_OK_STATUS;
    while (p < end) {
        unsigned char c = s[p];
        if (c < 0x20) {
            status = json_error_at(j, p, "control byte 0x%02x inside a string", c);
            goto fail;
        }
        if (c == '\\') {
            unsigned char e = s[p + 1]; /* the scan above guarantees p + 1 < end */
            char plain = 0;
            switch (e) {
            case '"':
                plain = '"';
                break;
            case '\\':
                plain = '\\';
                break;
            case '/':
                plain = '/';
                break;
            case 'b':
                plain = '\b';
                break;
            case 'f':
                plain = '\f';
                break;
            case 'n':
                plain = '\n';
                break;
            case 'r':
                plain = '\r';
                break;
            case 't':
                plain = '\t';
                break;
            case 'u':
                break;
            default:
                if (e >= 0x20 && e < 0x7f)
                    status = json_error_at(j, p, "invalid escape '\\%c'", e);
                else
                    status = json_error_at(j, p, "invalid escape before byte 0x%02x", e);
                goto fail;
            }
            if (e != 'u') {
                if (buf) buf[o++] = plain;
                p += 2;
                continue;
            }
            uint32_t cp, low;
            if (!json_hex4(j, p + 2, end, &cp)) {
                status = json_error_at(j, p, "'\\u' must be followed by four hex digits");
                goto fail;
            }
            size_t escape_at = p;
            p += 6;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (end - p >= 6 && s[p] == '\\' && s[p + 1] == 'u' &&
                    json_hex4(j, p + 2, end, &low) && low >= 0xDC00 && low <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    p += 6;
                } else {
                    status = json_error_at(j, escape_at, "unpaired UTF-16 surrogate \\u%04X", cp);
                    goto fail;
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                status = json_error_at(j, escape_at, "unpaired UTF-16 surrogate \\u%04X", cp);
                goto fail;
            }
            if (cp == 0 && out) {
                status = json_error_at(j, escape_at, "\\u0000 (NUL) is not allowed in a name");
                goto fail;
            }
            if (buf) o += moira_utf8_put(buf + o, cp);
            continue;
        }
        if (c < 0x80) {
            if (buf) buf[o++] = (char)c;
            p++;
            continue;
        }
        size_t n = moira_utf8_sequence_length((const unsigned char *)s + p, end - p);
        if (!n) {
            status = json_error_at(j, p, "invalid UTF-8 byte 0x%02x inside a string", c);
            goto fail;
        }
        if (buf) memcpy(buf + o, s + p, n);
        o += n;
        p += n;
    }
    j->pos = end + 1;
    if (buf) {
        buf[o] = '\0';
        *out = buf;
    }
    return MOIRA_OK_STATUS;
fail:
    free(buf);
    return status;
}

/* Reads a number at the cursor (JSON grammar: no leading zeros, no '+', digits after '.'), and
 * its value when it is an integer that fits in int64. */
static moira_status_t json_number(json_t *j, bool *is_integer, bool *overflow, int64_t *value) {
    const char *s = j->text;
    size_t p = j->pos, n = j->len;
    bool negative = false;
    int64_t v = 0;
    *is_integer = true;
    *overflow = false;
    if (p < n && s[p] == '-') {
        negative = true;
        p++;
    }
    if (p >= n || !is_digit(s[p])) return json_error_at(j, p, "expected a digit");
    if (s[p] == '0') {
        p++;
        if (p < n && is_digit(s[p]))
            return json_error_at(j, p, "numbers may not have leading zeros");
    } else {
        while (p < n && is_digit(s[p])) {
            if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, s[p] - '0', &v))
                *overflow = true;
            p++;
        }
    }
    if (p < n && s[p] == '.') {
        *is_integer = false;
        p++;
        if (p >= n || !is_digit(s[p])) return json_error_at(j, p, "expected a digit after '.'");
        while (p < n && is_digit(s[p]))
            p++;
    }
    if (p < n && (s[p] == 'e' || s[p] == 'E')) {
        *is_integer = false;
        p++;
        if (p < n && (s[p] == '+' || s[p] == '-')) p++;
        if (p >= n || !is_digit(s[p]))
            return json_error_at(j, p, "expected a digit in the exponent");
        while (p < n && is_digit(s[p]))
            p++;
    }
    j->pos = p;
    *value = negative ? -v : v;
    return MOIRA_OK_STATUS;
}

/* Object iteration. Call with *first true right after the '{' was consumed; each call stores the
 * next key (caller frees; NULL `key` only validates it) and consumes its ':', or sets *done at the
 * closing '}'. Trailing commas are refused, as JSON requires. */
static moira_status_t json_next_key(json_t *j, bool *first, char **key, bool *done) {
    int c = json_peek(j);
    *done = false;
    if (c == '}') {
        j->pos++;
        *done = true;
        return MOIRA_OK_STATUS;
    }
    if (!*first) {
        if (c != ',') return json_unexpected(j, "',' or '}'");
        j->pos++;
        c = json_peek(j);
    }
    *first = false;
    if (c != '"') return json_unexpected(j, "a string key");
    MOIRA_RETURN_IF_ERROR(json_string(j, key));
    moira_status_t status = json_expect(j, ':', "':'");
    if (status && key) {
        free(*key);
        *key = NULL;
    }
    return status;
}

/* Array iteration, like json_next_key: leaves the cursor on the next element, or sets *done. */
static moira_status_t json_next_element(json_t *j, bool *first, bool *done) {
    int c = json_peek(j);
    *done = false;
    if (c == ']' && *first) {
        j->pos++;
        *done = true;
        return MOIRA_OK_STATUS;
    }
    if (!*first) {
        if (c == ']') {
            j->pos++;
            *done = true;
            return MOIRA_OK_STATUS;
        }
        if (c != ',') return json_unexpected(j, "',' or ']'");
        j->pos++;
        c = json_peek(j);
    }
    *first = false;
    if (!is_value_start(c)) return json_unexpected(j, "a value");
    return MOIRA_OK_STATUS;
}

static moira_status_t json_literal(json_t *j, const char *word) {
    size_t n = strlen(word);
    if (j->len - j->pos < n || memcmp(j->text + j->pos, word, n) != 0)
        return json_unexpected(j, "a value");
    j->pos += n;
    return MOIRA_OK_STATUS;
}

/* Validates and skips one value of any kind; the depth limit keeps "[[[[..." from exhausting the
 * stack. */
static moira_status_t json_skip(json_t *j, int depth) {
    if (depth > JSON_MAX_DEPTH)
        return json_error_at(j, j->pos, "values nested deeper than %d levels", JSON_MAX_DEPTH);
    int c = json_peek(j);
    bool first = true, done = false, is_integer, overflow;
    int64_t ignored;
    switch (c) {
    case '{':
        j->pos++;
        for (;;) {
            MOIRA_RETURN_IF_ERROR(json_next_key(j, &first, NULL, &done));
            if (done) return MOIRA_OK_STATUS;
            MOIRA_RETURN_IF_ERROR(json_skip(j, depth + 1));
        }
    case '[':
        j->pos++;
        for (;;) {
            MOIRA_RETURN_IF_ERROR(json_next_element(j, &first, &done));
            if (done) return MOIRA_OK_STATUS;
            MOIRA_RETURN_IF_ERROR(json_skip(j, depth + 1));
        }
    case '"':
        return json_string(j, NULL);
    case 't':
        return json_literal(j, "true");
    case 'f':
        return json_literal(j, "false");
    case 'n':
        return json_literal(j, "null");
    default:
        if (c == '-' || is_digit(c)) return json_number(j, &is_integer, &overflow, &ignored);
        return json_unexpected(j, "a value");
    }
}

/* Reads an integer element. Valid JSON that is not an int64 (a string, a fraction, a huge number)
 * leaves *ok false for the caller to report in terms of the tensor; bad syntax is an error here. */
static moira_status_t json_int(json_t *j, int64_t *out, bool *ok) {
    int c = json_peek(j);
    *ok = false;
    if (c == '-' || is_digit(c)) {
        bool is_integer, overflow;
        MOIRA_RETURN_IF_ERROR(json_number(j, &is_integer, &overflow, out));
        *ok = is_integer && !overflow;
        return MOIRA_OK_STATUS;
    }
    if (is_value_start(c)) return MOIRA_OK_STATUS;
    return json_unexpected(j, "a value");
}

static moira_status_t json_end(json_t *j) {
    if (json_peek(j) >= 0)
        return json_error_at(j, j->pos, "unexpected data after the top-level object");
    return MOIRA_OK_STATUS;
}

/* ------------------------------------------------------------------------------------------ */
/* Reading                                                                                    */

static moira_status_t push_entry(moira_safetensors_t *f, entry_t *e) {
    if (f->count == f->entry_cap) {
        size_t cap = f->entry_cap ? f->entry_cap * 2 : 64;
        entry_t *grown = realloc(f->entries, cap * sizeof(*grown));
        if (!grown) return out_of_memory(f->path);
        f->entries = grown;
        f->entry_cap = cap;
    }
    f->entries[f->count++] = *e;
    return MOIRA_OK_STATUS;
}

/* "shape": an array of at most MOIRA_MAX_RANK non-negative integers. */
static moira_status_t parse_shape(json_t *j, const char *name, int *rank, int64_t *shape) {
    const char *kind = "\"shape\" must be an array of non-negative integers";
    if (json_peek(j) != '[') {
        if (is_value_start(json_peek(j)))
            return tensor_error(MOIRA_CODE_INVALID_INPUT, j->path, name, "%s", kind);
        return json_unexpected(j, "'['");
    }
    j->pos++;
    bool first = true, done = false, ok;
    *rank = 0;
    for (;;) {
        MOIRA_RETURN_IF_ERROR(json_next_element(j, &first, &done));
        if (done) return MOIRA_OK_STATUS;
        if (*rank == MOIRA_MAX_RANK)
            return tensor_error(MOIRA_CODE_INVALID_INPUT, j->path, name,
                                "shape has more than %d dimensions", MOIRA_MAX_RANK);
        int64_t v;
        MOIRA_RETURN_IF_ERROR(json_int(j, &v, &ok));
        if (!ok) return tensor_error(MOIRA_CODE_INVALID_INPUT, j->path, name, "%s", kind);
        if (v < 0)
            return tensor_error(MOIRA_CODE_INVALID_INPUT, j->path, name,
                                "shape has a negative dimension (%lld)", (long long)v);
        shape[(*rank)++] = v;
    }
}

/* "data_offsets": exactly two non-negative integers. */
static moira_status_t parse_offsets(json_t *j, const char *name, int64_t *offsets) {
    const char *kind = "\"data_offsets\" must be two non-negative integers [begin, end]";
    if (json_peek(j) != '[') {
        if (is_value_start(json_peek(j)))
            return tensor_error(MOIRA_CODE_INVALID_INPUT, j->path, name, "%s", kind);
        return json_unexpected(j, "'['");
    }
    j->pos++;
    bool first = true, done = false, ok;
    int n = 0;
    for (;;) {
        MOIRA_RETURN_IF_ERROR(json_next_element(j, &first, &done));
        if (done) break;
        if (n == 2) return tensor_error(MOIRA_CODE_INVALID_INPUT, j->path, name, "%s", kind);
        int64_t v;
        MOIRA_RETURN_IF_ERROR(json_int(j, &v, &ok));
        if (!ok || v < 0) return tensor_error(MOIRA_CODE_INVALID_INPUT, j->path, name, "%s", kind);
        offsets[n++] = v;
    }
    if (n != 2) return tensor_error(MOIRA_CODE_INVALID_INPUT, j->path, name, "%s", kind);
    return MOIRA_OK_STATUS;
}

/* "__metadata__": free-form, but the format defines it as an object of strings. */
static moira_status_t parse_metadata(json_t *j) {
    const char *kind = "\"__metadata__\" must be an object whose values are strings";
    if (json_peek(j) != '{') {
        if (is_value_start(json_peek(j))) return json_error_at(j, j->pos, "%s", kind);
        return json_unexpected(j, "'{'");
    }
    j->pos++;
    bool first = true, done = false;
    for (;;) {
        MOIRA_RETURN_IF_ERROR(json_next_key(j, &first, NULL, &done));
        if (done) return MOIRA_OK_STATUS;
        if (json_peek(j) != '"') {
            if (is_value_start(json_peek(j))) return json_error_at(j, j->pos, "%s", kind);
            return json_unexpected(j, "a string");
        }
        MOIRA_RETURN_IF_ERROR(json_string(j, NULL));
    }
}

/* Element sizes of the safetensors dtypes Moira does not compute with, so their tensors can be
 * checked and skipped; 0 for a name that is no safetensors dtype at all. */
static size_t other_dtype_size(const char *name) {
    static const struct {
        const char *name;
        size_t size;
    } others[] = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},      {"I16", 2},     {"U16", 2}, {"U32", 4},
                  {"U64", 8},  {"F64", 8}, {"F8_E5M2", 1}, {"F8_E8M0", 1}, {"C64", 8}};
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
        if (!strcmp(name, others[i].name)) return others[i].size;
    return 0;
}

/* One tensor's entry: checks its fields against each other and against the data section, then
 * records the view. Takes ownership of `name`. */
static moira_status_t parse_entry(moira_safetensors_t *f, json_t *j, size_t shard_index, char *name,
                                  const unsigned char *data, uint64_t data_size) {
    const char *path = j->path;
    char *dtype_name = NULL;
    int rank = -1;
    int64_t shape[MOIRA_MAX_RANK] = {0}, offsets[2] = {0};
    bool have_offsets = false;
    moira_status_t status = MOIRA_OK_STATUS;
    char shape_buf[128];

    if (json_peek(j) != '{') {
        if (is_value_start(json_peek(j)))
            status = tensor_error(MOIRA_CODE_INVALID_INPUT, path, name,
                                  "entry must be an object with dtype, shape and data_offsets");
        else
            status = json_unexpected(j, "'{'");
        goto fail;
    }
    j->pos++;
    bool first = true, done = false;
    for (;;) {
        char *key = NULL;
        status = json_next_key(j, &first, &key, &done);
        if (status || done) break;
        bool repeated = false;
        if (strcmp(key, "dtype") == 0) {
            repeated = dtype_name != NULL;
            if (!repeated && json_peek(j) != '"') {
                status = is_value_start(json_peek(j))
                             ? tensor_error(MOIRA_CODE_INVALID_INPUT, path, name,
                                            "\"dtype\" must be a string")
                             : json_unexpected(j, "a string");
            } else if (!repeated) {
                status = json_string(j, &dtype_name);
            }
        } else if (strcmp(key, "shape") == 0) {
            repeated = rank >= 0;
            if (!repeated) status = parse_shape(j, name, &rank, shape);
        } else if (strcmp(key, "data_offsets") == 0) {
            repeated = have_offsets;
            if (!repeated) status = parse_offsets(j, name, offsets);
            have_offsets = true;
        } else {
            status = json_skip(j, 2); /* fields a newer writer may add */
        }
        if (repeated)
            status =
                tensor_error(MOIRA_CODE_INVALID_INPUT, path, name, "\"%s\" appears twice", key);
        free(key);
        if (status) break;
    }
    if (status) goto fail;

    const char *missing = !dtype_name     ? "dtype"
                          : rank < 0      ? "shape"
                          : !have_offsets ? "data_offsets"
                                          : NULL;
    if (missing) {
        status = tensor_error(MOIRA_CODE_INVALID_INPUT, path, name, "missing \"%s\"", missing);
        goto fail;
    }
    moira_dtype_t dtype = MOIRA_DTYPE_F32;
    size_t element_size = 0;
    bool readable = moira_dtype_from_name(dtype_name, &dtype);
    if (readable) {
        element_size = moira_dtype_size(dtype);
    } else if ((element_size = other_dtype_size(dtype_name)) == 0) {
        char shown[SHOWN_NAME_MAX];
        status = tensor_error(MOIRA_CODE_UNSUPPORTED, path, name,
                              "dtype \"%s\" is not supported (Moira reads F32, F16, BF16, "
                              "F8_E4M3, I32 and I64)",
                              show_name(dtype_name, shown, sizeof(shown)));
        goto fail;
    }
    int64_t numel = 1, nbytes;
    for (int i = 0; i < rank; i++) {
        if (__builtin_mul_overflow(numel, shape[i], &numel)) {
            status = tensor_error(MOIRA_CODE_INVALID_INPUT, path, name,
                                  "shape %s has more elements than fit in 64 bits",
                                  shape_str(rank, shape, shape_buf, sizeof(shape_buf)));
            goto fail;
        }
    }
    if (__builtin_mul_overflow(numel, (int64_t)element_size, &nbytes)) {
        status = tensor_error(MOIRA_CODE_INVALID_INPUT, path, name,
                              "shape %s is too large: its size overflows 64 bits",
                              shape_str(rank, shape, shape_buf, sizeof(shape_buf)));
        goto fail;
    }
    if (offsets[0] > offsets[1]) {
        status = tensor_error(MOIRA_CODE_INVALID_INPUT, path, name,
                              "data_offsets [%lld, %lld] end before they begin",
                              (long long)offsets[0], (long long)offsets[1]);
        goto fail;
    }
    if ((uint64_t)offsets[1] > data_size) {
        status = tensor_error(MOIRA_CODE_INVALID_INPUT, path, name,
                              "data_offsets [%lld, %lld] run past the end of the data section "
                              "(%llu bytes)",
                              (long long)offsets[0], (long long)offsets[1],
                              (unsigned long long)data_size);
        goto fail;
    }
    if (offsets[1] - offsets[0] != nbytes) {
        status = tensor_error(
            MOIRA_CODE_INVALID_INPUT, path, name,
            "data_offsets [%lld, %lld] hold %lld bytes, but %s %s needs %lld",
            (long long)offsets[0], (long long)offsets[1], (long long)(offsets[1] - offsets[0]),
            dtype_name, shape_str(rank, shape, shape_buf, sizeof(shape_buf)), (long long)nbytes);
        goto fail;
    }
    if (!readable) {
        skipped_t *grown = realloc(f->skipped, (f->skipped_count + 1) * sizeof(*grown));
        if (!grown) {
            status = out_of_memory(path);
            goto fail;
        }
        f->skipped = grown;
        moira_safetensors_other_t view = {.name = name,
                                          .dtype = dtype_name,
                                          .rank = rank,
                                          .data = data + offsets[0],
                                          .nbytes = (size_t)nbytes};
        memcpy(view.shape, shape, sizeof(view.shape));
        f->skipped[f->skipped_count++] = (skipped_t){name, dtype_name, view, shard_index};
        return MOIRA_OK_STATUS;
    }

    /* A misaligned tensor is copied later (align_entries), once the ranges are known not to
     * overlap: aliasing ranges could otherwise multiply one range's copy thousands of times. */
    entry_t e = {.name = name,
                 .shard = shard_index,
                 .begin = (uint64_t)offsets[0],
                 .end = (uint64_t)offsets[1]};
    e.view = moira_tensor_view(dtype, rank, shape, (void *)(data + offsets[0]));
    status = push_entry(f, &e);
    if (status) {
        free(e.copy);
        goto fail;
    }
    free(dtype_name);
    return MOIRA_OK_STATUS;
fail:
    free(dtype_name);
    free(name);
    return status;
}

/* One tensor's byte range, sorted by its start to find overlaps. */
typedef struct byte_range {
    uint64_t begin, end;
    size_t entry;
} byte_range_t;

static int by_begin(const void *a, const void *b) {
    const byte_range_t *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* The safetensors format gives every tensor its own bytes; two tensors sharing bytes are refused
 * (as Hugging Face's library refuses them), which also bounds the aligned copies below by the
 * file's size. Checks the entries [first, f->count) of one shard. */
static moira_status_t refuse_overlaps(moira_safetensors_t *f, size_t first, const char *path) {
    size_t n = f->count - first;
    if (n < 2) return MOIRA_OK_STATUS;
    byte_range_t *ranges = malloc(n * sizeof(*ranges));
    if (!ranges) return out_of_memory(path);
    for (size_t i = 0; i < n; i++)
        ranges[i] =
            (byte_range_t){f->entries[first + i].begin, f->entries[first + i].end, first + i};
    qsort(ranges, n, sizeof(*ranges), by_begin);
    moira_status_t status = MOIRA_OK_STATUS;
    const byte_range_t *previous = NULL;
    for (size_t i = 0; i < n && !status; i++) {
        const byte_range_t *r = &ranges[i];
        if (r->end == r->begin) continue; /* an empty tensor holds no bytes */
        const char *name = f->entries[r->entry].name;
        const char *previous_name = previous ? f->entries[previous->entry].name : NULL;
        /* A name given twice is reported as such by the duplicate check. */
        if (previous && r->begin < previous->end && strcmp(name, previous_name) != 0)
            status = tensor_error(MOIRA_CODE_INVALID_INPUT, path, name,
                                  "data_offsets [%llu, %llu] overlap those of tensor \"%s\" "
                                  "[%llu, %llu]; tensors may not share bytes",
                                  (unsigned long long)r->begin, (unsigned long long)r->end,
                                  previous_name, (unsigned long long)previous->begin,
                                  (unsigned long long)previous->end);
        if (!previous || r->end > previous->end) previous = r;
    }
    free(ranges);
    return status;
}

/* safetensors has no alignment rule, and reading a float through a misaligned pointer is UB:
 * such tensors get an aligned copy. */
static moira_status_t align_entries(moira_safetensors_t *f, size_t first, const char *path) {
    for (size_t i = first; i < f->count; i++) {
        entry_t *e = &f->entries[i];
        size_t nbytes = (size_t)(e->end - e->begin);
        if (nbytes == 0 || (uintptr_t)e->view.data % moira_dtype_size(e->view.dtype) == 0) continue;
        e->copy = aligned_alloc(64, (nbytes + 63) / 64 * 64);
        if (!e->copy) return out_of_memory(path);
        memcpy(e->copy, e->view.data, nbytes);
        e->view.data = e->copy;
    }
    return MOIRA_OK_STATUS;
}

/* Walks the header object: "__metadata__" once, every other key a tensor. */
static moira_status_t parse_header(moira_safetensors_t *f, size_t shard_index, const char *header,
                                   size_t header_len, const unsigned char *data,
                                   uint64_t data_size) {
    json_t j = {
        .text = header, .len = header_len, .path = f->shards[shard_index].path, .one_line = true};
    if (json_peek(&j) != '{') {
        if (is_value_start(json_peek(&j)))
            return json_error_at(&j, j.pos, "the header must be a JSON object");
        return json_unexpected(&j, "'{'");
    }
    j.pos++;
    bool first = true, done = false, seen_metadata = false;
    for (;;) {
        char *key = NULL;
        MOIRA_RETURN_IF_ERROR(json_next_key(&j, &first, &key, &done));
        if (done) break;
        if (strcmp(key, "__metadata__") == 0) {
            if (seen_metadata) {
                free(key);
                return json_error_at(&j, j.pos, "\"__metadata__\" appears twice");
            }
            seen_metadata = true;
            free(key);
            MOIRA_RETURN_IF_ERROR(parse_metadata(&j));
        } else {
            MOIRA_RETURN_IF_ERROR(parse_entry(f, &j, shard_index, key, data, data_size));
        }
    }
    return json_end(&j);
}

/* Makes room for one more shard and records its path; close() releases it from then on. */
static moira_status_t add_shard(moira_safetensors_t *f, const char *path, shard_t **out_shard) {
    if (f->shard_count == f->shard_cap) {
        size_t cap = f->shard_cap ? f->shard_cap * 2 : 4;
        shard_t *grown = realloc(f->shards, cap * sizeof(*grown));
        if (!grown) return out_of_memory(path);
        f->shards = grown;
        f->shard_cap = cap;
    }
    shard_t *shard = &f->shards[f->shard_count];
    memset(shard, 0, sizeof(*shard));
    shard->path = strdup(path);
    if (!shard->path) return out_of_memory(path);
    f->shard_count++;
    *out_shard = shard;
    return MOIRA_OK_STATUS;
}

/* Reads the 8-byte header length and the header of the last shard added, whose bytes are
 * already in memory (mapped or copied), and adds its tensors. */
static moira_status_t parse_shard_bytes(moira_safetensors_t *f) {
    size_t index = f->shard_count - 1;
    const shard_t *shard = &f->shards[index];
    const char *path = shard->path;
    const unsigned char *bytes = shard->map;
    size_t size = shard->map_size;
    if (size < 8)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "file is %zu bytes, shorter than the 8-byte header length that "
                               "starts every safetensors file",
                               size);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | bytes[i]; /* little-endian */
    if (header_len > size - 8)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "header length %llu runs past the end of the file (%zu bytes): "
                               "truncated or not a safetensors file",
                               (unsigned long long)header_len, size);
    if (header_len > MOIRA_SAFETENSORS_MAX_HEADER)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "header length %llu exceeds the limit of %u bytes",
                               (unsigned long long)header_len, MOIRA_SAFETENSORS_MAX_HEADER);
    size_t first = f->count;
    MOIRA_RETURN_IF_ERROR(parse_header(f, index, (const char *)bytes + 8, (size_t)header_len,
                                       bytes + 8 + header_len, size - 8 - header_len));
    MOIRA_RETURN_IF_ERROR(refuse_overlaps(f, first, path));
    return align_entries(f, first, path);
}

/* Maps one .safetensors file and adds its tensors. */
static moira_status_t load_shard(moira_safetensors_t *f, const char *path) {
    shard_t *shard = NULL;
    MOIRA_RETURN_IF_ERROR(add_shard(f, path, &shard));
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; it is then
     * refused as not a regular file, and changes nothing for a regular one. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return errno_error(path, "cannot open", errno);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return errno_error(path, "cannot stat", err);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "not a regular file, so not a safetensors file");
    }
    if (st.st_size < 8) {
        close(fd);
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "file is %lld bytes, shorter than the 8-byte header length that "
                               "starts every safetensors file",
                               (long long)st.st_size);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return moira_status_at(MOIRA_CODE_UNSUPPORTED, path, 0, 0,
                               "file too large to map in this address space");
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_err = errno;
    close(fd);
    if (map == MAP_FAILED) return errno_error(path, "cannot map", map_err);
    shard->map = map;
    shard->map_size = size;
    return parse_shard_bytes(f);
}

static size_t lookup(const moira_safetensors_t *f, const char *name) {
    if (!f->table_cap) return NO_ENTRY;
    size_t mask = f->table_cap - 1;
    for (size_t i = (size_t)hash_name(name) & mask;; i = (i + 1) & mask) {
        size_t e = f->table[i];
        if (e == NO_ENTRY || strcmp(f->entries[e].name, name) == 0) return e;
    }
}

/* Indexes every tensor by name; a name seen twice (in one header or across shards) is an error,
 * since which of the two a lookup returns would be arbitrary. */
static moira_status_t build_table(moira_safetensors_t *f) {
    size_t cap = 16;
    while (cap < 2 * f->count)
        cap *= 2;
    f->table = malloc(cap * sizeof(*f->table));
    if (!f->table) return out_of_memory(f->path);
    for (size_t i = 0; i < cap; i++)
        f->table[i] = NO_ENTRY;
    f->table_cap = cap;
    for (size_t e = 0; e < f->count; e++) {
        const entry_t *entry = &f->entries[e];
        size_t i = (size_t)hash_name(entry->name) & (cap - 1);
        for (; f->table[i] != NO_ENTRY; i = (i + 1) & (cap - 1)) {
            const entry_t *other = &f->entries[f->table[i]];
            if (strcmp(other->name, entry->name) != 0) continue;
            const char *path = f->shards[entry->shard].path;
            if (other->shard == entry->shard)
                return tensor_error(MOIRA_CODE_INVALID_INPUT, path, entry->name,
                                    "duplicate name in the header");
            return tensor_error(MOIRA_CODE_INVALID_INPUT, path, entry->name,
                                "duplicate name: also in %s", f->shards[other->shard].path);
        }
        f->table[i] = e;
    }
    return MOIRA_OK_STATUS;
}

/* Ties each fp8 weight to its DeepSeek-V3 block scales (X.weight -> X.weight_scale_inv), checking
 * the scale grid covers the weight exactly, so kernels can index scales without bounds checks. */
static moira_status_t attach_scales(moira_safetensors_t *f) {
    static const char suffix[] = "_scale_inv";
    for (size_t e = 0; e < f->count; e++) {
        entry_t *w = &f->entries[e];
        size_t len = strlen(w->name);
        if (w->view.dtype != MOIRA_DTYPE_F8_E4M3 || len < 7 ||
            strcmp(w->name + len - 7, ".weight") != 0)
            continue;
        char *scale_name = malloc(len + sizeof(suffix));
        if (!scale_name) return out_of_memory(f->path);
        memcpy(scale_name, w->name, len);
        memcpy(scale_name + len, suffix, sizeof(suffix));
        size_t s_index = lookup(f, scale_name);
        free(scale_name);
        if (s_index == NO_ENTRY) continue;
        entry_t *s = &f->entries[s_index];
        const char *path = f->shards[s->shard].path;
        char a[128], b[128], c[128];
        if (s->view.dtype != MOIRA_DTYPE_F32 && s->view.dtype != MOIRA_DTYPE_BF16)
            return tensor_error(MOIRA_CODE_INVALID_INPUT, path, s->name,
                                "block scales must be F32 or BF16, not %s",
                                moira_dtype_name(s->view.dtype));
        if (w->view.rank != 2)
            return tensor_error(MOIRA_CODE_INVALID_INPUT, f->shards[w->shard].path, w->name,
                                "an fp8 weight with block scales must be 2-D, not %s",
                                shape_str(w->view.rank, w->view.shape, a, sizeof(a)));
        int64_t want[2] = {(w->view.shape[0] + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK,
                           (w->view.shape[1] + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK};
        if (s->view.rank != 2 || s->view.shape[0] != want[0] || s->view.shape[1] != want[1])
            return tensor_error(MOIRA_CODE_INVALID_INPUT, path, s->name,
                                "block scales of shape %s do not match weight %s %s "
                                "(%dx%d blocks need %s)",
                                shape_str(s->view.rank, s->view.shape, a, sizeof(a)), w->name,
                                shape_str(2, w->view.shape, b, sizeof(b)), MOIRA_FP8_BLOCK,
                                MOIRA_FP8_BLOCK, shape_str(2, want, c, sizeof(c)));
        if (s->view.dtype == MOIRA_DTYPE_F32) {
            w->view.scale = &s->view;
            continue;
        }
        if (!s->scale_f32.data) {
            MOIRA_RETURN_IF_ERROR(
                moira_tensor_alloc(MOIRA_DTYPE_F32, 2, s->view.shape, &s->scale_f32));
            moira_convert_to_f32(MOIRA_DTYPE_BF16, s->view.data, s->scale_f32.data,
                                 (size_t)moira_tensor_numel(&s->view));
        }
        w->view.scale = &s->scale_f32;
    }
    return MOIRA_OK_STATUS;
}

/* Reads a small text file (index.json) whole; the header-size limit applies to it too. */
static moira_status_t read_text_file(const char *path, char **out_text, size_t *out_len) {
    *out_text = NULL;
    int fd =
        open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block: see load_shard */
    if (fd < 0) return errno_error(path, "cannot open", errno);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        (uint64_t)st.st_size > MOIRA_SAFETENSORS_MAX_HEADER) {
        close(fd);
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "not a regular file of at most %u bytes",
                               MOIRA_SAFETENSORS_MAX_HEADER);
    }
    size_t len = (size_t)st.st_size, got = 0;
    char *text = malloc(len + 1);
    if (!text) {
        close(fd);
        return out_of_memory(path);
    }
    while (got < len) {
        ssize_t n = read(fd, text + got, len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int err = n < 0 ? errno : EIO;
            free(text);
            close(fd);
            return errno_error(path, "cannot read", err);
        }
        got += (size_t)n;
    }
    close(fd);
    text[len] = '\0';
    *out_text = text;
    *out_len = len;
    return MOIRA_OK_STATUS;
}

typedef struct weight_map {
    char **names; /* owned */
    char **files; /* owned */
    size_t count, cap;
} weight_map_t;

static void weight_map_free(weight_map_t *m) {
    for (size_t i = 0; i < m->count; i++) {
        free(m->names[i]);
        free(m->files[i]);
    }
    free(m->names);
    free(m->files);
}

/* The index: {"metadata": {...}, "weight_map": {"tensor name": "shard file name", ...}}. */
static moira_status_t parse_index(json_t *j, weight_map_t *m) {
    if (json_peek(j) != '{') {
        if (is_value_start(json_peek(j)))
            return json_error_at(j, j->pos, "the index must be a JSON object");
        return json_unexpected(j, "'{'");
    }
    j->pos++;
    bool first = true, done = false, seen = false;
    size_t map_at = 0;
    for (;;) {
        char *key = NULL;
        MOIRA_RETURN_IF_ERROR(json_next_key(j, &first, &key, &done));
        if (done) break;
        bool is_map = strcmp(key, "weight_map") == 0;
        free(key);
        if (!is_map) {
            MOIRA_RETURN_IF_ERROR(json_skip(j, 1));
            continue;
        }
        if (seen) return json_error_at(j, j->pos, "\"weight_map\" appears twice");
        seen = true;
        if (json_peek(j) != '{') return json_unexpected(j, "'{' (weight_map is an object)");
        map_at = j->pos;
        j->pos++;
        bool first_entry = true;
        for (;;) {
            char *name = NULL, *file = NULL;
            MOIRA_RETURN_IF_ERROR(json_next_key(j, &first_entry, &name, &done));
            if (done) break;
            if (json_peek(j) != '"') {
                free(name);
                return json_unexpected(j, "a shard file name string");
            }
            moira_status_t status = json_string(j, &file);
            if (!status && m->count == m->cap) {
                size_t cap = m->cap ? m->cap * 2 : 256;
                char **names = realloc(m->names, cap * sizeof(*names));
                if (names) m->names = names;
                char **files = realloc(m->files, cap * sizeof(*files));
                if (files) m->files = files;
                if (names && files)
                    m->cap = cap;
                else
                    status = out_of_memory(j->path);
            }
            if (status) {
                free(name);
                free(file);
                return status;
            }
            m->names[m->count] = name;
            m->files[m->count++] = file;
        }
    }
    MOIRA_RETURN_IF_ERROR(json_end(j));
    if (!seen) return moira_status_at(MOIRA_CODE_INVALID_INPUT, j->path, 0, 0, "no \"weight_map\"");
    /* An index of nothing would open as a model without weights and fail later, far from here. */
    if (m->count == 0)
        return json_error_at(j, map_at, "\"weight_map\" is empty: it must name every tensor");
    return MOIRA_OK_STATUS;
}

static int skipped_by_name(const void *a, const void *b);
static const skipped_t *find_skipped(skipped_t *const *sorted, size_t n, const char *name);

/* A sharded checkpoint: opens every shard the index names (eagerly: mapping costs no I/O, and
 * it validates the whole checkpoint before any work starts), then checks the index agrees with
 * what the shards hold. Tensors a shard holds but the index omits are kept. */
static moira_status_t open_indexed(moira_safetensors_t *f, const char *dir,
                                   const char *index_path) {
    char *text = NULL;
    size_t len = 0;
    weight_map_t m = {0};
    const char **distinct = NULL;
    size_t *shard_of = NULL;
    skipped_t **sorted_skipped = NULL; /* made on the first name no plain tensor has */
    moira_status_t status = read_text_file(index_path, &text, &len);
    if (status) return status;
    json_t j = {.text = text, .len = len, .path = index_path, .one_line = false};
    status = parse_index(&j, &m);
    if (status) goto done;

    /* Duplicate names in the index are as ambiguous as duplicates in a header. */
    const char **sorted = malloc((m.count ? m.count : 1) * sizeof(*sorted));
    if (!sorted) {
        status = out_of_memory(index_path);
        goto done;
    }
    memcpy(sorted, m.names, m.count * sizeof(*sorted));
    qsort(sorted, m.count, sizeof(*sorted), cmp_str_ptr);
    for (size_t i = 1; i < m.count && !status; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            status = tensor_error(MOIRA_CODE_INVALID_INPUT, index_path, sorted[i],
                                  "listed twice in weight_map");
    free(sorted);
    if (status) goto done;

    /* Distinct shard files, sorted, so shards open in their natural order (-00001-of-...). */
    distinct = malloc((m.count ? m.count : 1) * sizeof(*distinct));
    shard_of = malloc((m.count ? m.count : 1) * sizeof(*shard_of));
    if (!distinct || !shard_of) {
        status = out_of_memory(index_path);
        goto done;
    }
    memcpy(distinct, m.files, m.count * sizeof(*distinct));
    qsort(distinct, m.count, sizeof(*distinct), cmp_str_ptr);
    size_t n_distinct = 0;
    for (size_t i = 0; i < m.count; i++)
        if (n_distinct == 0 || strcmp(distinct[n_distinct - 1], distinct[i]) != 0)
            distinct[n_distinct++] = distinct[i];
    for (size_t i = 0; i < m.count; i++) {
        const char **hit =
            bsearch(&m.files[i], distinct, n_distinct, sizeof(*distinct), cmp_str_ptr);
        shard_of[i] = (size_t)(hit - distinct);
    }
    /* Every shard stays mapped while the checkpoint is open, and the kernel allows a process a
     * bounded number of mappings (vm.max_map_count, 65530 by default): past half of it, an index
     * would fail deep inside mmap, or starve every later allocation, instead of saying why. */
    size_t max_shards = max_mappings() / 2;
    if (n_distinct > max_shards) {
        status = moira_status_at(MOIRA_CODE_INVALID_INPUT, index_path, 0, 0,
                                 "weight_map names %zu shards; Moira maps every shard and this "
                                 "system allows %zu mappings per process (vm.max_map_count), so "
                                 "at most %zu shards",
                                 n_distinct, max_mappings(), max_shards);
        goto done;
    }
    for (size_t k = 0; k < n_distinct; k++) {
        const char *file = distinct[k];
        /* A name too long for the file system is bad input too, not an I/O error (fuzz). */
        if (!*file || strchr(file, '/') || strcmp(file, ".") == 0 || strcmp(file, "..") == 0 ||
            strlen(file) > NAME_MAX) {
            char shown[SHOWN_NAME_MAX];
            status = moira_status_at(MOIRA_CODE_INVALID_INPUT, index_path, 0, 0,
                                     "weight_map names shard \"%s\", which is not a plain file "
                                     "name in this directory%s",
                                     show_name(file, shown, sizeof(shown)),
                                     strlen(file) > NAME_MAX ? " (longer than NAME_MAX)" : "");
            goto done;
        }
        char *shard_path = join_path(dir, file);
        if (!shard_path) {
            status = out_of_memory(index_path);
            goto done;
        }
        status = load_shard(f, shard_path);
        free(shard_path);
        if (status) {
            if (moira_status_code(status) == MOIRA_CODE_NOT_FOUND)
                status = moira_status_annotate(status, "%s names a missing shard", index_path);
            goto done;
        }
    }
    status = build_table(f);
    if (status) goto done;
    for (size_t i = 0; i < m.count; i++) {
        size_t e = lookup(f, m.names[i]);
        bool held = e != NO_ENTRY && f->entries[e].shard == shard_of[i];
        /* A tensor of a dtype Moira skips (the U8/I8 bytes of a quantised weight) is held too. */
        if (e == NO_ENTRY && f->skipped_count) {
            if (!sorted_skipped) {
                sorted_skipped = malloc(f->skipped_count * sizeof(*sorted_skipped));
                if (!sorted_skipped) {
                    status = out_of_memory(index_path);
                    goto done;
                }
                for (size_t k = 0; k < f->skipped_count; k++)
                    sorted_skipped[k] = &f->skipped[k];
                qsort(sorted_skipped, f->skipped_count, sizeof(*sorted_skipped), skipped_by_name);
            }
            const skipped_t *sk = find_skipped(sorted_skipped, f->skipped_count, m.names[i]);
            held = sk && sk->shard == shard_of[i];
        }
        if (!held) {
            status = tensor_error(MOIRA_CODE_INVALID_INPUT, index_path, m.names[i],
                                  "weight_map places it in %s, which does not hold it", m.files[i]);
            goto done;
        }
    }
done:
    free(sorted_skipped);
    free(distinct);
    free(shard_of);
    weight_map_free(&m);
    free(text);
    return status;
}

static bool has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A directory without an index is accepted when it holds exactly one .safetensors file: the
 * common layout of small models, where guessing cannot go wrong. */
static moira_status_t open_directory(moira_safetensors_t *f, const char *dir) {
    char *index_path = join_path(dir, INDEX_FILE_NAME);
    if (!index_path) return out_of_memory(dir);
    struct stat st;
    if (stat(index_path, &st) == 0) {
        moira_status_t status = open_indexed(f, dir, index_path);
        free(index_path);
        return status;
    }
    free(index_path);
    DIR *d = opendir(dir);
    if (!d) return errno_error(dir, "cannot list directory", errno);
    char *only = NULL;
    size_t found = 0;
    for (struct dirent *ent; (ent = readdir(d)) != NULL;) {
        if (!has_suffix(ent->d_name, ".safetensors") || ent->d_name[0] == '.') continue;
        if (found++ == 0) only = strdup(ent->d_name);
    }
    closedir(d);
    moira_status_t status = MOIRA_OK_STATUS;
    if (found == 0) {
        status =
            moira_status_at(MOIRA_CODE_NOT_FOUND, dir, 0, 0,
                            "directory has neither %s nor a .safetensors file", INDEX_FILE_NAME);
    } else if (found > 1) {
        status = moira_status_at(MOIRA_CODE_INVALID_INPUT, dir, 0, 0,
                                 "directory has %zu .safetensors files but no %s to say how they "
                                 "fit together",
                                 found, INDEX_FILE_NAME);
    } else if (!only) {
        status = out_of_memory(dir);
    } else {
        char *path = join_path(dir, only);
        status = path ? load_shard(f, path) : out_of_memory(dir);
        free(path);
        if (!status) status = build_table(f);
    }
    free(only);
    return status;
}

static int skipped_by_name(const void *a, const void *b) {
    return strcmp((*(const skipped_t *const *)a)->name, (*(const skipped_t *const *)b)->name);
}

/* The skipped tensor named `name` in the sorted index, or NULL. */
static const skipped_t *find_skipped(skipped_t *const *sorted, size_t n, const char *name) {
    skipped_t key = {.name = (char *)name};
    const skipped_t *k = &key;
    skipped_t *const *hit = bsearch(&k, sorted, n, sizeof(*sorted), skipped_by_name);
    return hit ? *hit : NULL;
}

/* `stem` + `suffix` in a fresh string (caller frees), NULL when out of memory. */
static char *joined(const char *stem, size_t stem_len, const char *suffix) {
    size_t n = strlen(suffix);
    char *out = malloc(stem_len + n + 1);
    if (!out) return NULL;
    memcpy(out, stem, stem_len);
    memcpy(out + stem_len, suffix, n + 1);
    return out;
}

/* MXFP4: the packed bytes [out, in/2] and the E8M0 scales [out, in/32], in a multiple of 32. */
static moira_status_t make_mxfp4(const moira_safetensors_t *f, const skipped_t *w,
                                 const skipped_t *sc, quantized_t *q) {
    const char *path = f->shards[w->shard].path;
    char a[128], b[128];
    if (strcmp(sc->dtype, "U8") != 0 && strcmp(sc->dtype, "F8_E8M0") != 0)
        return tensor_error(MOIRA_CODE_INVALID_INPUT, f->shards[sc->shard].path, sc->name,
                            "MXFP4 scales must be F8_E8M0 or U8, not %s", sc->dtype);
    if (w->view.rank != 2)
        return tensor_error(MOIRA_CODE_INVALID_INPUT, path, w->name,
                            "an MXFP4 weight must be 2-D [out, in/2], not %s",
                            shape_str(w->view.rank, w->view.shape, a, sizeof(a)));
    int64_t out = w->view.shape[0], in = 2 * w->view.shape[1];
    if (in % 32)
        return tensor_error(MOIRA_CODE_INVALID_INPUT, path, w->name,
                            "an MXFP4 row of %lld inputs is not a multiple of 32 (the block "
                            "one E8M0 scale covers)",
                            (long long)in);
    int64_t want[2] = {out, in / 32};
    if (sc->view.rank != 2 || sc->view.shape[0] != want[0] || sc->view.shape[1] != want[1])
        return tensor_error(MOIRA_CODE_INVALID_INPUT, f->shards[sc->shard].path, sc->name,
                            "MXFP4 scales of shape %s do not match weight %s (need %s)",
                            shape_str(sc->view.rank, sc->view.shape, a, sizeof(a)), w->name,
                            shape_str(2, want, b, sizeof(b)));
    int64_t shape[2] = {out, in};
    q->scale = moira_tensor_view(MOIRA_DTYPE_E8M0, 2, want, (void *)sc->view.data);
    q->view = moira_tensor_view(MOIRA_DTYPE_MXFP4, 2, shape, (void *)w->view.data);
    return MOIRA_OK_STATUS;
}

/* INT8: I8 [out, in] and one f32 scale per row, F32 [out] (or [out, 1]). */
static moira_status_t make_int8(const moira_safetensors_t *f, const skipped_t *w, const entry_t *sc,
                                quantized_t *q) {
    const char *path = f->shards[w->shard].path;
    char a[128];
    if (strcmp(w->dtype, "I8") != 0)
        return tensor_error(MOIRA_CODE_INVALID_INPUT, path, w->name,
                            "a weight with a weight_scale must be I8 (int8), not %s", w->dtype);
    if (w->view.rank != 2)
        return tensor_error(MOIRA_CODE_INVALID_INPUT, path, w->name,
                            "an int8 weight must be 2-D, not %s",
                            shape_str(w->view.rank, w->view.shape, a, sizeof(a)));
    const moira_tensor_t *s = &sc->view;
    bool rows_ok =
        (s->rank == 1 || (s->rank == 2 && s->shape[1] == 1)) && s->shape[0] == w->view.shape[0];
    if (s->dtype != MOIRA_DTYPE_F32 || !rows_ok)
        return tensor_error(MOIRA_CODE_INVALID_INPUT, f->shards[sc->shard].path, sc->name,
                            "int8 scales must be F32 [%lld] (one per output row), not %s %s",
                            (long long)w->view.shape[0], moira_dtype_name(s->dtype),
                            shape_str(s->rank, s->shape, a, sizeof(a)));
    q->view = moira_tensor_view(MOIRA_DTYPE_INT8, 2, w->view.shape, (void *)w->view.data);
    q->view.scale = s;
    return MOIRA_OK_STATUS;
}

static int quantized_by_name(const void *a, const void *b) {
    return strcmp(((const quantized_t *)a)->name, ((const quantized_t *)b)->name);
}

/* Finds every skipped U8/I8 `X.weight` with a companion scale and describes it as a quantised
 * weight; one with both kinds of scale is ambiguous, an error. `sorted` indexes the skipped
 * tensors by name, so a checkpoint of many thousand experts is paired in n log n. */
static moira_status_t pair_quantized(moira_safetensors_t *f, skipped_t **sorted) {
    for (size_t i = 0; i < f->skipped_count; i++)
        sorted[i] = &f->skipped[i];
    qsort(sorted, f->skipped_count, sizeof(*sorted), skipped_by_name);
    for (size_t i = 0; i < f->skipped_count; i++) {
        const skipped_t *w = &f->skipped[i];
        size_t len = strlen(w->name);
        if ((strcmp(w->dtype, "U8") != 0 && strcmp(w->dtype, "I8") != 0) || len < 7 ||
            strcmp(w->name + len - 7, ".weight") != 0)
            continue;
        char *mx_name = joined(w->name, len - 7, ".scale");
        char *i8_name = joined(w->name, len, "_scale");
        if (!mx_name || !i8_name) {
            free(mx_name);
            free(i8_name);
            return out_of_memory(f->path);
        }
        const skipped_t *mx = find_skipped(sorted, f->skipped_count, mx_name);
        size_t i8 = lookup(f, i8_name), wrong = mx ? NO_ENTRY : lookup(f, mx_name);
        free(mx_name);
        free(i8_name);
        if (wrong != NO_ENTRY)
            return tensor_error(MOIRA_CODE_INVALID_INPUT, f->shards[f->entries[wrong].shard].path,
                                f->entries[wrong].name,
                                "MXFP4 scales must be F8_E8M0 or U8, not %s",
                                moira_dtype_name(f->entries[wrong].view.dtype));
        if (!mx && i8 == NO_ENTRY) continue;
        if (mx && i8 != NO_ENTRY)
            return tensor_error(MOIRA_CODE_INVALID_INPUT, f->shards[w->shard].path, w->name,
                                "has both an MXFP4 .scale and an int8 .weight_scale");
        quantized_t q = {.name = w->name};
        MOIRA_RETURN_IF_ERROR(mx ? make_mxfp4(f, w, mx, &q) : make_int8(f, w, &f->entries[i8], &q));
        f->quantized[f->quantized_count++] = q;
    }
    qsort(f->quantized, f->quantized_count, sizeof(*f->quantized), quantized_by_name);
    for (size_t i = 0; i < f->quantized_count; i++)
        if (f->quantized[i].view.dtype == MOIRA_DTYPE_MXFP4)
            f->quantized[i].view.scale = &f->quantized[i].scale; /* stable once sorted */
    return MOIRA_OK_STATUS;
}

/* Quantised weights arrive as tensors the reader skips plus their scales (quantized_t). */
static moira_status_t attach_quantized(moira_safetensors_t *f) {
    if (!f->skipped_count) return MOIRA_OK_STATUS;
    skipped_t **sorted = malloc(f->skipped_count * sizeof(*sorted));
    f->quantized = calloc(f->skipped_count, sizeof(*f->quantized));
    moira_status_t status =
        sorted && f->quantized ? pair_quantized(f, sorted) : out_of_memory(f->path);
    free(sorted);
    return status;
}

/* The quantised weight named `name`, or NULL. */
static const quantized_t *find_quantized(const moira_safetensors_t *f, const char *name) {
    quantized_t key = {.name = name};
    return f->quantized_count ? bsearch(&key, f->quantized, f->quantized_count,
                                        sizeof(*f->quantized), quantized_by_name)
                              : NULL;
}

/* The common end of both opens: ties fp8 weights to their scales and quantised weights to
 * theirs, then hands the file out, or releases it on any error. */
static moira_status_t finish_open(moira_safetensors_t *f, moira_status_t status,
                                  moira_safetensors_t **out_file) {
    if (!status) status = attach_scales(f);
    if (!status) status = attach_quantized(f);
    if (status) {
        moira_safetensors_close(f);
        return status;
    }
    *out_file = f;
    return MOIRA_OK_STATUS;
}

moira_status_t moira_safetensors_open(const char *path, moira_safetensors_t **out_file) {
    if (!out_file)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "safetensors_open: no out_file");
    *out_file = NULL;
    if (!path || !*path)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "safetensors_open: empty path");
    moira_safetensors_t *f = calloc(1, sizeof(*f));
    if (!f) return out_of_memory(path);
    f->path = strdup(path);
    if (!f->path) {
        free(f);
        return out_of_memory(path);
    }
    struct stat st;
    moira_status_t status;
    if (stat(path, &st) != 0) {
        status = errno_error(path, "cannot open", errno);
    } else if (S_ISDIR(st.st_mode)) {
        status = open_directory(f, path);
    } else {
        status = load_shard(f, path);
        if (!status) status = build_table(f);
    }
    return finish_open(f, status, out_file);
}

moira_status_t moira_safetensors_open_memory(const char *name, const void *bytes, size_t size,
                                             moira_safetensors_t **out_file) {
    if (!out_file)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "safetensors_open: no out_file");
    *out_file = NULL;
    if (!name || !*name || (!bytes && size > 0))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "safetensors_open_memory: a name and the bytes are required");
    moira_safetensors_t *f = calloc(1, sizeof(*f));
    if (!f) return out_of_memory(name);
    f->path = strdup(name);
    shard_t *shard = NULL;
    moira_status_t status = f->path ? add_shard(f, name, &shard) : out_of_memory(name);
    if (!status) {
        /* Exactly `size` bytes, so a sanitizer sees any read past the end of the "file". */
        shard->map = malloc(size ? size : 1);
        shard->heap = true;
        shard->map_size = size;
        if (!shard->map) status = out_of_memory(name);
    }
    if (!status) {
        if (size) memcpy(shard->map, bytes, size);
        status = parse_shard_bytes(f);
    }
    if (!status) status = build_table(f);
    return finish_open(f, status, out_file);
}

void moira_safetensors_close(moira_safetensors_t *file) {
    if (!file) return;
    for (size_t i = 0; i < file->count; i++) {
        free(file->entries[i].name);
        free(file->entries[i].copy);
        moira_tensor_release(&file->entries[i].scale_f32);
    }
    for (size_t i = 0; i < file->shard_count; i++) {
        if (file->shards[i].heap)
            free(file->shards[i].map);
        else if (file->shards[i].map)
            munmap(file->shards[i].map, file->shards[i].map_size);
        free(file->shards[i].path);
    }
    for (size_t i = 0; i < file->skipped_count; i++) {
        free(file->skipped[i].name);
        free(file->skipped[i].dtype);
    }
    free(file->skipped);
    free(file->quantized);
    free(file->entries);
    free(file->shards);
    free(file->table);
    free(file->path);
    free(file);
}

const char *moira_safetensors_path(const moira_safetensors_t *file) {
    return file ? file->path : NULL;
}

size_t moira_safetensors_count(const moira_safetensors_t *file) {
    return file ? file->count : 0;
}

const char *moira_safetensors_name(const moira_safetensors_t *file, size_t index) {
    if (!file || index >= file->count) return NULL;
    return file->entries[index].name;
}

size_t moira_safetensors_other_count(const moira_safetensors_t *file) {
    return file ? file->skipped_count : 0;
}

const moira_safetensors_other_t *moira_safetensors_other(const moira_safetensors_t *file,
                                                         size_t index) {
    if (!file || index >= file->skipped_count) return NULL;
    return &file->skipped[index].view;
}

bool moira_safetensors_has(const moira_safetensors_t *file, const char *name) {
    return file && name && (lookup(file, name) != NO_ENTRY || find_quantized(file, name));
}

moira_status_t moira_safetensors_find(const moira_safetensors_t *file, const char *name,
                                      const moira_tensor_t **out_tensor) {
    if (out_tensor) *out_tensor = NULL;
    if (!file || !name || !out_tensor)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "safetensors_find: file, name and out_tensor are required");
    size_t e = lookup(file, name);
    const quantized_t *q = e == NO_ENTRY ? find_quantized(file, name) : NULL;
    if (q) {
        *out_tensor = &q->view;
        return MOIRA_OK_STATUS;
    }
    for (size_t i = 0; e == NO_ENTRY && i < file->skipped_count; i++)
        if (!strcmp(file->skipped[i].name, name)) {
            char shown[SHOWN_NAME_MAX];
            return moira_status_at(MOIRA_CODE_UNSUPPORTED, file->path, 0, 0,
                                   "tensor %s: dtype \"%s\" is not supported (Moira reads F32, "
                                   "F16, BF16, F8_E4M3, I32 and I64)",
                                   show_name(name, shown, sizeof(shown)), file->skipped[i].dtype);
        }
    if (e == NO_ENTRY) {
        char shown[SHOWN_NAME_MAX];
        return moira_status_at(MOIRA_CODE_NOT_FOUND, file->path, 0, 0,
                               "no tensor named \"%s\" (the file has %zu tensors)",
                               show_name(name, shown, sizeof(shown)), file->count);
    }
    *out_tensor = &file->entries[e].view;
    return MOIRA_OK_STATUS;
}

/* ------------------------------------------------------------------------------------------ */
/* Writing                                                                                    */

typedef struct text_buf {
    char *data;
    size_t len, cap;
    bool failed;
} text_buf_t;

static void tb_append(text_buf_t *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void tb_printf(text_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(text_buf_t *b, const char *fmt, ...) {
    char tmp[128];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, args);
    va_end(args);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        b->failed = true;
        return;
    }
    tb_append(b, tmp, (size_t)n);
}

/* JSON string escaping: quotes, backslashes and control bytes; UTF-8 passes through. */
static void tb_json_string(text_buf_t *b, const char *s) {
    tb_append(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            tb_append(b, esc, 2);
        } else if (c == '\n') {
            tb_append(b, "\\n", 2);
        } else if (c == '\t') {
            tb_append(b, "\\t", 2);
        } else if (c == '\r') {
            tb_append(b, "\\r", 2);
        } else if (c < 0x20) {
            tb_printf(b, "\\u%04x", c);
        } else {
            tb_append(b, p, 1);
        }
    }
    tb_append(b, "\"", 1);
}

static bool is_valid_utf8(const char *s) {
    size_t len = strlen(s);
    return moira_utf8_valid_prefix(s, len) == len;
}

/* Checks every tensor before anything touches the disk, and builds the header. */
static moira_status_t build_write_header(const char *path, const moira_named_tensor_t *tensors,
                                         size_t count, bool need_data, text_buf_t *header) {
    uint64_t offset = 0;
    /* The metadata Hugging Face's loaders look for, so Moira's outputs load there as well. */
    static const char prefix[] = "{\"__metadata__\":{\"format\":\"pt\"}";
    tb_append(header, prefix, sizeof(prefix) - 1);
    for (size_t i = 0; i < count; i++) {
        const char *name = tensors[i].name;
        const moira_tensor_t *t = tensors[i].tensor;
        if (!name || !*name)
            return moira_status_at(MOIRA_CODE_INVALID_ARGUMENT, path, 0, 0,
                                   "tensor %zu has no name", i);
        if (!is_valid_utf8(name) || strcmp(name, "__metadata__") == 0)
            return tensor_error(MOIRA_CODE_INVALID_ARGUMENT, path, name,
                                "not a valid tensor name (must be UTF-8, not __metadata__)");
        if (!t || (unsigned)t->dtype >= MOIRA_DTYPE_COUNT || t->rank < 0 ||
            t->rank > MOIRA_MAX_RANK)
            return tensor_error(MOIRA_CODE_INVALID_ARGUMENT, path, name,
                                "missing tensor, unknown dtype or rank outside 0..%d",
                                MOIRA_MAX_RANK);
        int64_t numel = 1, nbytes;
        for (int d = 0; d < t->rank; d++)
            if (t->shape[d] < 0 || __builtin_mul_overflow(numel, t->shape[d], &numel))
                return tensor_error(MOIRA_CODE_INVALID_ARGUMENT, path, name,
                                    "negative or overflowing shape");
        /* Quantised weights are stored as their bytes (MXFP4 as U8 pairs, INT8 as I8), the
         * layout the reader pairs with their scales again. */
        int64_t shape[MOIRA_MAX_RANK];
        memcpy(shape, t->shape, sizeof(shape));
        const char *dtype_name = moira_dtype_name(t->dtype);
        if (t->dtype == MOIRA_DTYPE_MXFP4) {
            if (t->rank < 1 || t->shape[t->rank - 1] % 2)
                return tensor_error(MOIRA_CODE_INVALID_ARGUMENT, path, name,
                                    "an MXFP4 tensor needs an even last dimension");
            shape[t->rank - 1] /= 2;
            numel /= 2;
            dtype_name = "U8";
        } else if (t->dtype == MOIRA_DTYPE_INT8) {
            dtype_name = "I8";
        }
        size_t element = t->dtype == MOIRA_DTYPE_MXFP4 ? 1 : moira_dtype_size(t->dtype);
        if (__builtin_mul_overflow(numel, (int64_t)element, &nbytes) || (uint64_t)nbytes > SIZE_MAX)
            return tensor_error(MOIRA_CODE_INVALID_ARGUMENT, path, name, "tensor too large");
        if (need_data && nbytes > 0 && !t->data)
            return tensor_error(MOIRA_CODE_INVALID_ARGUMENT, path, name, "tensor has no data");
        uint64_t end;
        if (__builtin_add_overflow(offset, (uint64_t)nbytes, &end))
            return moira_status_at(MOIRA_CODE_INVALID_ARGUMENT, path, 0, 0, "data too large");
        tb_append(header, ",", 1);
        tb_json_string(header, name);
        tb_printf(header, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name);
        for (int d = 0; d < t->rank; d++)
            tb_printf(header, "%s%lld", d ? "," : "", (long long)shape[d]);
        tb_printf(header, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                  (unsigned long long)end);
        offset = end;
    }
    tb_append(header, "}", 1);
    while (!header->failed && header->len % 8 != 0)
        tb_append(header, " ", 1);
    if (header->failed) return out_of_memory(path);

    /* Unique names, found by sorting a copy of the name pointers. */
    const char **names = malloc((count ? count : 1) * sizeof(*names));
    if (!names) return out_of_memory(path);
    for (size_t i = 0; i < count; i++)
        names[i] = tensors[i].name;
    qsort(names, count, sizeof(*names), cmp_str_ptr);
    moira_status_t status = MOIRA_OK_STATUS;
    for (size_t i = 1; i < count && !status; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            status = tensor_error(MOIRA_CODE_INVALID_ARGUMENT, path, names[i], "name given twice");
    free(names);
    return status;
}

/* The 8-byte length and the JSON header; `need_data` says whether the tensors' bytes follow from
 * their data pointers (write_stream) or one at a time later (write_header). */
static moira_status_t write_header(const char *path, FILE *out, const moira_named_tensor_t *tensors,
                                   size_t count, bool need_data) {
    if (!path || !*path || !out || (count > 0 && !tensors))
        return moira_status_make(
            MOIRA_CODE_INVALID_ARGUMENT,
            "safetensors_write: a path, a stream and the tensors are required");
    text_buf_t header = {0};
    moira_status_t status = build_write_header(path, tensors, count, need_data, &header);
    if (status) {
        free(header.data);
        return status;
    }
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; i++)
        len_bytes[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
    bool ok =
        fwrite(len_bytes, 1, 8, out) == 8 && fwrite(header.data, 1, header.len, out) == header.len;
    int err = errno;
    free(header.data);
    if (!ok) return errno_error_code(MOIRA_CODE_IO, path, "cannot write", err);
    return MOIRA_OK_STATUS;
}

moira_status_t moira_safetensors_write_header(const char *path, FILE *out,
                                              const moira_named_tensor_t *tensors, size_t count) {
    return write_header(path, out, tensors, count, false);
}

moira_status_t moira_safetensors_write_tensor_data(const char *path, FILE *out,
                                                   const moira_tensor_t *tensor) {
    size_t nbytes = moira_tensor_nbytes(tensor);
    if (nbytes && !tensor->data)
        return moira_status_at(MOIRA_CODE_INVALID_ARGUMENT, path, 0, 0, "tensor has no data");
    if (nbytes && fwrite(tensor->data, 1, nbytes, out) != nbytes)
        return errno_error_code(MOIRA_CODE_IO, path, "cannot write", errno);
    return MOIRA_OK_STATUS;
}

moira_status_t moira_safetensors_write_stream(const char *path, FILE *out,
                                              const moira_named_tensor_t *tensors, size_t count) {
    MOIRA_RETURN_IF_ERROR(write_header(path, out, tensors, count, true));
    for (size_t i = 0; i < count; i++)
        MOIRA_RETURN_IF_ERROR(moira_safetensors_write_tensor_data(path, out, tensors[i].tensor));
    return MOIRA_OK_STATUS;
}

moira_status_t moira_safetensors_write(const char *path, const moira_named_tensor_t *tensors,
                                       size_t count) {
    if (!path || !*path)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "safetensors_write: a path and the tensors are required");
    moira_atomic_file_t out;
    MOIRA_RETURN_IF_ERROR(moira_atomic_open(path, &out));
    moira_status_t status = moira_safetensors_write_stream(path, out.stream, tensors, count);
    if (status) {
        moira_atomic_abort(&out);
        return status;
    }
    return moira_atomic_commit(&out);
}
