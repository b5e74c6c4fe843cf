/* safetensors reader and writer: round trips of every dtype, the golden data, sharded checkpoint
 * directories, fp8 block scales, alignment, atomic writes, and a table of hostile files crafted
 * byte by byte, each of which must be refused with the right code and never crash. */
#include "runtime/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/remove_tree.h"
#include "tests/unit/testing.h"

static char g_dir[64];

static const char *in_dir(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", g_dir, name);
    return buf;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    CHECK_MSG(fp != NULL, "cannot create %s", path);
    if (!fp) return;
    if (n) CHECK(fwrite(data, 1, n, fp) == n);
    CHECK(fclose(fp) == 0);
}

/* A safetensors file by hand: 8-byte length (`declared`, or the header's own length when
 * UINT64_MAX), the header text, then `data_bytes` bytes of data. */
static void write_raw(const char *path, const char *header, uint64_t declared, size_t data_bytes) {
    size_t hlen = strlen(header);
    uint64_t len = declared == UINT64_MAX ? hlen : declared;
    size_t total = 8 + hlen + data_bytes;
    unsigned char *buf = calloc(1, total);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(len >> (8 * i));
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < data_bytes; i++)
        buf[8 + hlen + i] = (unsigned char)(i * 7 + 1);
    write_bytes(path, buf, total);
    free(buf);
}

static size_t read_file(const char *path, unsigned char *buf, size_t cap) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    size_t n = fread(buf, 1, cap, fp);
    fclose(fp);
    return n;
}

/* Opens `path` expecting failure with `code` and, when given, `needle` in the message. Prints the
 * message so the log shows what a user would see. */
static void expect_open_error(const char *label, const char *path, moira_code_t code,
                              const char *needle) {
    moira_safetensors_t *file = (moira_safetensors_t *)&g_dir; /* must be reset to NULL */
    moira_status_t status = moira_safetensors_open(path, &file);
    const char *msg = moira_status_message(status);
    CHECK_MSG(moira_status_code(status) == code, "%s: expected %s, got %s (%s)", label,
              moira_code_name(code), moira_code_name(moira_status_code(status)), msg);
    if (needle)
        CHECK_MSG(strstr(msg, needle) != NULL, "%s: message \"%s\" lacks \"%s\"", label, msg,
                  needle);
    if (status) {
        CHECK_MSG(file == NULL, "%s: out_file not cleared on failure", label);
        printf("  %-26s %s: %s\n", label, moira_code_name(moira_status_code(status)), msg);
    } else {
        moira_safetensors_close(file);
    }
    moira_status_free(status);
}

/* ---------------------------------------------------------------------------------------- */

static void fill_pattern(void *data, size_t n, unsigned seed) {
    unsigned char *p = data;
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31 + seed * 7 + 3);
}

/* Every dtype and rank 0..4 (and an empty tensor), in an order that puts some tensors at offsets
 * not aligned to their element size, so the reader's aligned copies are exercised too. */
static void test_round_trip(void) {
    struct {
        const char *name;
        moira_dtype_t dtype;
        int rank;
        int64_t shape[4];
    } specs[] = {
        {"f8.weight", MOIRA_DTYPE_F8_E4M3, 2, {3, 5}}, /* 15 bytes: what follows is misaligned */
        {"f32", MOIRA_DTYPE_F32, 2, {4, 3}},
        {"f16 vec", MOIRA_DTYPE_F16, 1, {7}},
        {"bf16.rank3", MOIRA_DTYPE_BF16, 3, {2, 3, 5}},
        {"i32.scalar", MOIRA_DTYPE_I32, 0, {0}},
        {"i64.rank4", MOIRA_DTYPE_I64, 4, {2, 1, 3, 2}},
        {"empty", MOIRA_DTYPE_F32, 2, {0, 8}},
        {"quote\"back\\slash\nnewline \xc3\xa9", MOIRA_DTYPE_F32, 1, {2}},
    };
    enum { N = sizeof(specs) / sizeof(specs[0]) };
    moira_tensor_t tensors[N];
    moira_named_tensor_t named[N];
    for (int i = 0; i < N; i++) {
        CHECK_OK(moira_tensor_alloc(specs[i].dtype, specs[i].rank, specs[i].shape, &tensors[i]));
        fill_pattern(tensors[i].data, moira_tensor_nbytes(&tensors[i]), (unsigned)i);
        named[i] = (moira_named_tensor_t){specs[i].name, &tensors[i]};
    }
    char path[128];
    in_dir(path, sizeof(path), "round.safetensors");
    CHECK_OK(moira_safetensors_write(path, named, N));

    /* The header length is a multiple of 8 and the file ends exactly at the last tensor. */
    unsigned char head[8];
    CHECK(read_file(path, head, 8) == 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | head[i];
    CHECK(hlen % 8 == 0);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    size_t data_total = 0;
    for (int i = 0; i < N; i++)
        data_total += moira_tensor_nbytes(&tensors[i]);
    CHECK((uint64_t)st.st_size == 8 + hlen + data_total);

    moira_safetensors_t *file = NULL;
    CHECK_OK(moira_safetensors_open(path, &file));
    if (!file) return;
    CHECK(moira_safetensors_count(file) == N);
    CHECK(strcmp(moira_safetensors_path(file), path) == 0);
    for (int i = 0; i < N; i++) {
        CHECK_MSG(moira_safetensors_name(file, (size_t)i) &&
                      strcmp(moira_safetensors_name(file, (size_t)i), specs[i].name) == 0,
                  "name %d out of order", i);
        const moira_tensor_t *t = NULL;
        CHECK_OK(moira_safetensors_find(file, specs[i].name, &t));
        if (!t) continue;
        CHECK(t->dtype == specs[i].dtype);
        CHECK(moira_tensor_same_shape(t, &tensors[i]));
        CHECK(!t->owns_data);
        CHECK(t->scale == NULL); /* f8.weight has no f8.weight_scale_inv */
        size_t nbytes = moira_tensor_nbytes(t);
        CHECK_MSG(memcmp(t->data, tensors[i].data, nbytes) == 0, "%s: bytes differ", specs[i].name);
        CHECK_MSG((uintptr_t)t->data % moira_dtype_size(t->dtype) == 0 || nbytes == 0,
                  "%s: data misaligned", specs[i].name);
    }
    /* Read through typed pointers: UBSan's alignment check watches these. */
    const moira_tensor_t *f32 = NULL;
    CHECK_OK(moira_safetensors_find(file, "f32", &f32));
    if (f32) {
        float sum = 0, want = 0;
        for (int i = 0; i < 12; i++) {
            sum += ((const float *)f32->data)[i];
            want += ((const float *)tensors[1].data)[i];
        }
        CHECK(memcmp(&sum, &want, sizeof(sum)) == 0);
    }
    CHECK(moira_safetensors_name(file, N) == NULL);
    CHECK(moira_safetensors_has(file, "f32"));
    CHECK(!moira_safetensors_has(file, "f33"));
    moira_safetensors_close(file);
    for (int i = 0; i < N; i++)
        moira_tensor_release(&tensors[i]);

    /* An empty set of tensors is a valid file too. */
    in_dir(path, sizeof(path), "empty.safetensors");
    CHECK_OK(moira_safetensors_write(path, NULL, 0));
    file = NULL;
    CHECK_OK(moira_safetensors_open(path, &file));
    CHECK(moira_safetensors_count(file) == 0);
    moira_safetensors_close(file);
}

static void test_golden(void) {
    const char *path = MOIRA_TEST_DATA_DIR "/golden/gate_v3.inputs.safetensors";
    moira_safetensors_t *file = NULL;
    CHECK_OK(moira_safetensors_open(path, &file));
    if (!file) return;
    CHECK(moira_safetensors_count(file) == 3);
    struct {
        const char *name;
        int rank;
        int64_t shape[2];
    } want[] = {{"mlp.gate.weight", 2, {32, 64}},
                {"mlp.gate.e_score_correction_bias", 1, {32}},
                {"hidden_states", 2, {24, 64}}};
    for (int i = 0; i < 3; i++) {
        const moira_tensor_t *t = NULL;
        CHECK_OK(moira_safetensors_find(file, want[i].name, &t));
        if (!t) continue;
        CHECK(t->dtype == MOIRA_DTYPE_F32);
        CHECK(t->rank == want[i].rank);
        for (int d = 0; d < want[i].rank; d++)
            CHECK(t->shape[d] == want[i].shape[d]);
        const float *v = t->data;
        bool finite = true;
        for (int64_t k = 0; k < moira_tensor_numel(t); k++)
            finite = finite && v[k] == v[k];
        CHECK(finite);
    }
    const moira_tensor_t *t = (const moira_tensor_t *)path;
    moira_status_t status = moira_safetensors_find(file, "mlp.gate.bias", &t);
    CHECK(moira_status_code(status) == MOIRA_CODE_NOT_FOUND);
    CHECK(t == NULL);
    CHECK(strstr(moira_status_message(status), "mlp.gate.bias") != NULL);
    CHECK(strstr(moira_status_message(status), path) != NULL);
    printf("  %-26s %s\n", "missing tensor", moira_status_message(status));
    moira_status_free(status);
    moira_safetensors_close(file);
}

static void test_sharded_directory(void) {
    char dir[128], path[192];
    snprintf(dir, sizeof(dir), "%s/sharded", g_dir);
    CHECK(mkdir(dir, 0755) == 0);
    float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {7, 8, 9};
    int32_t c[2] = {-1, 42};
    int64_t sa[2] = {2, 3}, sb[1] = {3}, sc[1] = {2};
    moira_tensor_t ta = moira_tensor_view(MOIRA_DTYPE_F32, 2, sa, a);
    moira_tensor_t tb = moira_tensor_view(MOIRA_DTYPE_F32, 1, sb, b);
    moira_tensor_t tc = moira_tensor_view(MOIRA_DTYPE_I32, 1, sc, c);
    moira_named_tensor_t shard1[] = {{"model.layers.0.mlp.gate.weight", &ta}};
    moira_named_tensor_t shard2[] = {{"model.layers.1.mlp.gate.weight", &tb},
                                     {"model.layers.1.ids", &tc}};
    snprintf(path, sizeof(path), "%s/model-00001-of-00002.safetensors", dir);
    CHECK_OK(moira_safetensors_write(path, shard1, 1));
    snprintf(path, sizeof(path), "%s/model-00002-of-00002.safetensors", dir);
    CHECK_OK(moira_safetensors_write(path, shard2, 2));
    const char *index =
        "{\n  \"metadata\": {\"total_size\": 44},\n  \"weight_map\": {\n"
        "    \"model.layers.0.mlp.gate.weight\": \"model-00001-of-00002.safetensors\",\n"
        "    \"model.layers.1.ids\": \"model-00002-of-00002.safetensors\",\n"
        "    \"model.layers.1.mlp.gate.weight\": \"model-00002-of-00002.safetensors\"\n"
        "  }\n}\n";
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    write_bytes(path, index, strlen(index));

    moira_safetensors_t *file = NULL;
    CHECK_OK(moira_safetensors_open(dir, &file));
    if (file) {
        CHECK(moira_safetensors_count(file) == 3);
        const moira_tensor_t *t = NULL;
        CHECK_OK(moira_safetensors_find(file, "model.layers.1.mlp.gate.weight", &t));
        CHECK(t && t->rank == 1 && t->shape[0] == 3 && memcmp(t->data, b, sizeof(b)) == 0);
        CHECK_OK(moira_safetensors_find(file, "model.layers.0.mlp.gate.weight", &t));
        CHECK(t && t->rank == 2 && memcmp(t->data, a, sizeof(a)) == 0);
        CHECK_OK(moira_safetensors_find(file, "model.layers.1.ids", &t));
        CHECK(t && t->dtype == MOIRA_DTYPE_I32 && ((const int32_t *)t->data)[1] == 42);
        CHECK_CODE(moira_safetensors_find(file, "model.layers.2.ids", &t), MOIRA_CODE_NOT_FOUND);
        moira_safetensors_close(file);
    }

    /* The index must agree with the shards. */
    const char *wrong_shard = "{\"weight_map\": {\"model.layers.0.mlp.gate.weight\": "
                              "\"model-00002-of-00002.safetensors\"}}";
    write_bytes(path, wrong_shard, strlen(wrong_shard));
    expect_open_error("index: wrong shard", dir, MOIRA_CODE_INVALID_INPUT,
                      "tensor model.layers.0.mlp.gate.weight: weight_map places it in");
    const char *missing_shard = "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\",\n"
                                "                 \"y\": \"model-00009-of-00009.safetensors\"}}";
    write_bytes(path, missing_shard, strlen(missing_shard));
    expect_open_error("index: missing shard", dir, MOIRA_CODE_NOT_FOUND,
                      "model-00009-of-00009.safetensors");
    const char *escape = "{\"weight_map\": {\"x\": \"../round.safetensors\"}}";
    write_bytes(path, escape, strlen(escape));
    expect_open_error("index: path escape", dir, MOIRA_CODE_INVALID_INPUT, "not a plain file");
    const char *bad_json = "{\n  \"weight_map\": {\n    \"x\": \"a.safetensors\",\n  }\n}\n";
    write_bytes(path, bad_json, strlen(bad_json));
    expect_open_error("index: bad JSON", dir, MOIRA_CODE_INVALID_INPUT, "index.json:4:3: ");
    const char *no_map = "{\"metadata\": {}}";
    write_bytes(path, no_map, strlen(no_map));
    expect_open_error("index: no weight_map", dir, MOIRA_CODE_INVALID_INPUT, "weight_map");
    const char *dup = "{\"weight_map\": {\"x\": \"a.safetensors\", \"x\": \"a.safetensors\"}}";
    write_bytes(path, dup, strlen(dup));
    expect_open_error("index: duplicate name", dir, MOIRA_CODE_INVALID_INPUT, "twice");

    /* Without an index: several shards are ambiguous, exactly one is the model. */
    CHECK(unlink(path) == 0);
    expect_open_error("dir: two files, no index", dir, MOIRA_CODE_INVALID_INPUT, "index.json");
    snprintf(path, sizeof(path), "%s/model-00001-of-00002.safetensors", dir);
    CHECK(unlink(path) == 0);
    file = NULL;
    CHECK_OK(moira_safetensors_open(dir, &file));
    CHECK(moira_safetensors_count(file) == 2);
    moira_safetensors_close(file);
    snprintf(path, sizeof(path), "%s/model-00002-of-00002.safetensors", dir);
    CHECK(unlink(path) == 0);
    expect_open_error("dir: empty", dir, MOIRA_CODE_NOT_FOUND, "neither");
}

static void test_fp8_scales(void) {
    /* A 130 x 260 fp8 weight: 2 x 3 blocks of 128 x 128, the last ones partial. */
    int64_t wshape[2] = {130, 260}, sshape[2] = {2, 3}, bad_shape[2] = {2, 2};
    moira_tensor_t w, s32, s16, bad;
    CHECK_OK(moira_tensor_alloc(MOIRA_DTYPE_F8_E4M3, 2, wshape, &w));
    CHECK_OK(moira_tensor_alloc(MOIRA_DTYPE_F32, 2, sshape, &s32));
    CHECK_OK(moira_tensor_alloc(MOIRA_DTYPE_BF16, 2, sshape, &s16));
    CHECK_OK(moira_tensor_alloc(MOIRA_DTYPE_F32, 2, bad_shape, &bad));
    memset(w.data, moira_f32_to_fp8_e4m3(1.5f), 130 * 260);
    float scales[6] = {1, 2, 4, 0.5f, 0.25f, 8};
    memcpy(s32.data, scales, sizeof(scales));
    moira_convert_from_f32(MOIRA_DTYPE_BF16, scales, s16.data, 6);
    moira_named_tensor_t named[] = {
        {"a.weight", &w}, {"a.weight_scale_inv", &s32}, /* F32 scales, shared data */
        {"b.weight", &w}, {"b.weight_scale_inv", &s16}, /* BF16 scales: converted */
        {"c.weight", &w},                               /* no scales at all */
    };
    char path[128];
    in_dir(path, sizeof(path), "fp8.safetensors");
    CHECK_OK(moira_safetensors_write(path, named, 5));
    moira_safetensors_t *file = NULL;
    CHECK_OK(moira_safetensors_open(path, &file));
    if (file) {
        const char *names[2] = {"a.weight", "b.weight"};
        for (int k = 0; k < 2; k++) {
            const moira_tensor_t *t = NULL;
            CHECK_OK(moira_safetensors_find(file, names[k], &t));
            if (!t) continue;
            CHECK(t->dtype == MOIRA_DTYPE_F8_E4M3);
            CHECK(t->scale && t->scale->dtype == MOIRA_DTYPE_F32 && t->scale->rank == 2 &&
                  t->scale->shape[0] == 2 && t->scale->shape[1] == 3);
            if (!t->scale) continue;
            for (int i = 0; i < 6; i++)
                CHECK(((const float *)t->scale->data)[i] == scales[i]);
            /* Row 129 lies in block row 1: scales 0.5, 0.25, 8 over column blocks. */
            float row[260];
            moira_tensor_row_to_f32(t, 129, row);
            CHECK(row[0] == 0.75f && row[200] == 0.375f && row[259] == 12.0f);
        }
        const moira_tensor_t *c = NULL, *sinv = NULL;
        CHECK_OK(moira_safetensors_find(file, "c.weight", &c));
        CHECK(c && c->scale == NULL);
        CHECK_OK(moira_safetensors_find(file, "b.weight_scale_inv", &sinv));
        CHECK(sinv && sinv->dtype == MOIRA_DTYPE_BF16); /* the stored tensor stays as stored */
        moira_safetensors_close(file);
    }

    named[1].tensor = &bad;
    CHECK_OK(moira_safetensors_write(path, named, 2));
    expect_open_error("fp8: scale shape", path, MOIRA_CODE_INVALID_INPUT,
                      "tensor a.weight_scale_inv: block scales of shape [2, 2] do not match weight "
                      "a.weight [130, 260] (128x128 blocks need [2, 3])");
    moira_tensor_t i32 = moira_tensor_view(MOIRA_DTYPE_I32, 2, sshape, s32.data);
    named[1].tensor = &i32;
    CHECK_OK(moira_safetensors_write(path, named, 2));
    expect_open_error("fp8: scale dtype", path, MOIRA_CODE_INVALID_INPUT, "F32 or BF16");
    moira_tensor_release(&w);
    moira_tensor_release(&s32);
    moira_tensor_release(&s16);
    moira_tensor_release(&bad);
}

/* Names a parser must get right: escapes, non-BMP characters written as surrogate pairs (as
 * Python's json.dumps does), names past libyaml's 1024-character key limit, metadata, unknown
 * fields, and a header length that leaves the data misaligned. */
static void test_parser_edges(void) {
    char path[128], header[4096];
    in_dir(path, sizeof(path), "edges.safetensors");
    char long_name[1501];
    memset(long_name, 'x', 1500);
    long_name[1500] = '\0';
    snprintf(header, sizeof(header),
             "{\"__metadata__\": {\"format\": \"pt\", \"note\": \"\\u00e9\"},\n"
             "\t\"\\u00e9\\ud83d\\ude00\\/\\t\": {\"dtype\": \"F32\", \"shape\": [1], "
             "\"data_offsets\": [0, 4], \"extra\": {\"nested\": [1, 2.5e-3, true, null]}},\r\n"
             " \"%s\": {\"data_offsets\": [4, 12], \"shape\": [2], \"dtype\": \"F32\"} }",
             long_name);
    write_raw(path, header, UINT64_MAX, 12); /* header length is arbitrary: data misaligned */
    moira_safetensors_t *file = NULL;
    CHECK_OK(moira_safetensors_open(path, &file));
    if (!file) return;
    CHECK(moira_safetensors_count(file) == 2);
    const moira_tensor_t *t = NULL;
    CHECK_OK(moira_safetensors_find(file, "\xc3\xa9\xf0\x9f\x98\x80/\t", &t));
    CHECK_OK(moira_safetensors_find(file, long_name, &t));
    if (t) {
        CHECK((uintptr_t)t->data % 4 == 0);
        unsigned char want[8];
        for (int i = 0; i < 8; i++)
            want[i] = (unsigned char)((i + 4) * 7 + 1);
        float expect[2];
        memcpy(expect, want, 8);
        const float *v = t->data;
        CHECK(memcmp(&v[0], &expect[0], 4) == 0 && memcmp(&v[1], &expect[1], 4) == 0);
    }
    moira_safetensors_close(file);
}

/* Hostile and broken files. */
static void test_malformed(void) {
    static const struct {
        const char *label;
        const char *header;
        size_t data;
        moira_code_t code;
        const char *needle;
    } cases[] = {
        {"empty header", "", 0, MOIRA_CODE_INVALID_INPUT, ":1:1: header: expected '{'"},
        {"not an object", "[1, 2]   ", 0, MOIRA_CODE_INVALID_INPUT, "must be a JSON object"},
        {"bad JSON: missing colon", "{\"a\" 1}", 0, MOIRA_CODE_INVALID_INPUT,
         ":1:6: header: expected ':', found '1'"},
        {"bad JSON: trailing comma",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},}", 4,
         MOIRA_CODE_INVALID_INPUT, ":1:62: header: expected a string key, found '}'"},
        {"bad JSON: unterminated", "{\"w\": {\"dtype\": \"F32", 0, MOIRA_CODE_INVALID_INPUT,
         "unterminated string"},
        {"bad JSON: trailing data", "{} {}", 0, MOIRA_CODE_INVALID_INPUT,
         ":1:4: header: unexpected data"},
        {"bad JSON: leading zero",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [01], \"data_offsets\": [0, 4]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "leading zeros"},
        {"bad JSON: bad escape", "{\"w\\q\": {}}", 0, MOIRA_CODE_INVALID_INPUT, "invalid escape"},
        {"bad JSON: lone surrogate", "{\"w\\ud800\": {}}", 0, MOIRA_CODE_INVALID_INPUT,
         "surrogate"},
        {"bad JSON: NUL escape in name", "{\"w\\u0000x\": {}}", 0, MOIRA_CODE_INVALID_INPUT, "NUL"},
        {"bad JSON: raw control byte", "{\"w\x01\": {}}", 0, MOIRA_CODE_INVALID_INPUT,
         "control byte"},
        {"bad JSON: invalid UTF-8", "{\"w\xc0\xaf\": {}}", 0, MOIRA_CODE_INVALID_INPUT,
         "invalid UTF-8"},
        {"bad JSON: bare word", "{\"w\": {\"dtype\": F32}}", 0, MOIRA_CODE_INVALID_INPUT,
         "expected a string"},
        {"entry not an object", "{\"w\": 5}", 0, MOIRA_CODE_INVALID_INPUT,
         "tensor w: entry must be an object"},
        {"missing dtype", "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "tensor w: missing \"dtype\""},
        {"missing shape", "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "tensor w: missing \"shape\""},
        {"missing data_offsets", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "tensor w: missing \"data_offsets\""},
        {"repeated field",
         "{\"w\": {\"dtype\": \"F32\", \"dtype\": \"F32\", \"shape\": [1], "
         "\"data_offsets\": [0, 4]}}",
         4, MOIRA_CODE_INVALID_INPUT, "\"dtype\" appears twice"},
        {"dtype not a string", "{\"w\": {\"dtype\": 4, \"shape\": [1], \"data_offsets\": [0, 4]}}",
         4, MOIRA_CODE_INVALID_INPUT, "\"dtype\" must be a string"},
        {"unknown dtype", "{\"w\": {\"dtype\": \"f32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
         4, MOIRA_CODE_UNSUPPORTED, "\"f32\""},
        {"negative shape",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1, 4], \"data_offsets\": [0, 4]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "tensor w: shape has a negative dimension"},
        {"fractional shape",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.0], \"data_offsets\": [0, 4]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "non-negative integers"},
        {"shape not an array",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": 4, \"data_offsets\": [0, 4]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "\"shape\" must be an array"},
        {"rank 5",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1], \"data_offsets\": [0, 4]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "more than 4 dimensions"},
        {"dimension beyond int64",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [99999999999999999999], "
         "\"data_offsets\": [0, 4]}}",
         4, MOIRA_CODE_INVALID_INPUT, "non-negative integers"},
        {"element count overflow",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], "
         "\"data_offsets\": [0, 4]}}",
         4, MOIRA_CODE_INVALID_INPUT, "more elements than fit in 64 bits"},
        {"byte size overflow",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [2305843009213693952, 2], "
         "\"data_offsets\": [0, 4]}}",
         4, MOIRA_CODE_INVALID_INPUT, "overflows 64 bits"},
        {"offsets past end",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "run past the end of the data section"},
        {"offsets huge",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], "
         "\"data_offsets\": [18446744073709551608, 18446744073709551616]}}",
         4, MOIRA_CODE_INVALID_INPUT, "data_offsets"},
        {"offsets reversed",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 0]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "end before they begin"},
        {"offsets three values",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 8,
         MOIRA_CODE_INVALID_INPUT, "two non-negative integers"},
        {"offsets negative",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4,
         MOIRA_CODE_INVALID_INPUT, "two non-negative integers"},
        {"size mismatch", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}",
         8, MOIRA_CODE_INVALID_INPUT, "hold 4 bytes, but F32 [2] needs 8"},
        {"duplicate name",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
         "\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
         4, MOIRA_CODE_INVALID_INPUT, "tensor w: duplicate name"},
        {"metadata not strings", "{\"__metadata__\": {\"n\": 1}}", 0, MOIRA_CODE_INVALID_INPUT,
         "__metadata__"},
        {"metadata twice", "{\"__metadata__\": {}, \"__metadata__\": {}}", 0,
         MOIRA_CODE_INVALID_INPUT, "twice"},
    };
    char path[128];
    in_dir(path, sizeof(path), "bad.safetensors");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_raw(path, cases[i].header, UINT64_MAX, cases[i].data);
        expect_open_error(cases[i].label, path, cases[i].code, cases[i].needle);
    }

    /* Deep nesting in an ignored field must not exhaust the stack. */
    size_t depth = 100000;
    char *deep = malloc(depth * 2 + 128);
    size_t n = (size_t)sprintf(deep, "{\"w\": {\"x\": ");
    for (size_t i = 0; i < depth; i++)
        deep[n++] = '[';
    for (size_t i = 0; i < depth; i++)
        deep[n++] = ']';
    strcpy(deep + n, "}}");
    write_raw(path, deep, UINT64_MAX, 0);
    free(deep);
    expect_open_error("deep nesting", path, MOIRA_CODE_INVALID_INPUT, "nested deeper");

    /* Damage to the framing rather than the JSON. */
    const char *ok_header =
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    write_bytes(path, "", 0);
    expect_open_error("empty file", path, MOIRA_CODE_INVALID_INPUT, "shorter than the 8-byte");
    write_bytes(path, "\x10\0\0", 3);
    expect_open_error("truncated length", path, MOIRA_CODE_INVALID_INPUT, "shorter");
    write_raw(path, ok_header, strlen(ok_header) + 1, 0); /* the header itself is cut short */
    expect_open_error("truncated header", path, MOIRA_CODE_INVALID_INPUT, "past the end");
    write_raw(path, ok_header, UINT64_MAX, 3); /* the data is cut short */
    expect_open_error("truncated data", path, MOIRA_CODE_INVALID_INPUT, "past the end of the data");
    write_raw(path, ok_header, 0xFFFFFFFFFFFFFFFFull - 1, 4);
    expect_open_error("header length 2^64-2", path, MOIRA_CODE_INVALID_INPUT, "past the end");
    /* A header length over the 100 MB limit that the file does cover (a sparse file). */
    write_raw(path, "{}", 200u * 1000u * 1000u, 0);
    CHECK(truncate(path, 8 + 200u * 1000u * 1000u) == 0);
    expect_open_error("header over 100 MB", path, MOIRA_CODE_INVALID_INPUT, "exceeds the limit");
    CHECK(unlink(path) == 0);
    expect_open_error("missing file", path, MOIRA_CODE_NOT_FOUND, path);
}

static void expect_unchanged(const char *label, const char *path, const unsigned char *before,
                             size_t size) {
    unsigned char now[4096];
    size_t got = read_file(path, now, sizeof(now));
    CHECK_MSG(got == size && memcmp(now, before, size) == 0, "%s: target changed", label);
}

/* "Written whole or not at all": every failed write leaves the old file and no temporary. */
static void test_write_failures(void) {
    char path[128];
    in_dir(path, sizeof(path), "target.safetensors");
    float v[4] = {1, 2, 3, 4};
    int64_t shape[1] = {4};
    moira_tensor_t t = moira_tensor_view(MOIRA_DTYPE_F32, 1, shape, v);
    moira_named_tensor_t one[] = {{"v", &t}};
    CHECK_OK(moira_safetensors_write(path, one, 1));
    unsigned char before[4096];
    size_t size = read_file(path, before, sizeof(before));
    CHECK(size > 8);

    moira_named_tensor_t dup[] = {{"a", &t}, {"b", &t}, {"a", &t}};
    CHECK_CODE(moira_safetensors_write(path, dup, 3), MOIRA_CODE_INVALID_ARGUMENT);
    expect_unchanged("duplicate names", path, before, size);

    moira_tensor_t rank5 = t;
    rank5.rank = 5;
    moira_named_tensor_t bad_rank[] = {{"v", &rank5}};
    CHECK_CODE(moira_safetensors_write(path, bad_rank, 1), MOIRA_CODE_INVALID_ARGUMENT);
    moira_named_tensor_t bad_name[] = {{"bad\xff", &t}};
    CHECK_CODE(moira_safetensors_write(path, bad_name, 1), MOIRA_CODE_INVALID_ARGUMENT);
    moira_named_tensor_t reserved[] = {{"__metadata__", &t}};
    CHECK_CODE(moira_safetensors_write(path, reserved, 1), MOIRA_CODE_INVALID_ARGUMENT);
    expect_unchanged("invalid tensors", path, before, size);

    char nodir[160];
    snprintf(nodir, sizeof(nodir), "%s/no/such/dir/x.safetensors", g_dir);
    CHECK_CODE(moira_safetensors_write(nodir, one, 1), MOIRA_CODE_IO);

    /* Fail in the middle of writing data: a file size limit makes write() return EFBIG. */
    float big[2048] = {0};
    int64_t big_shape[1] = {2048};
    moira_tensor_t tbig = moira_tensor_view(MOIRA_DTYPE_F32, 1, big_shape, big);
    moira_named_tensor_t large[] = {{"big", &tbig}};
    struct rlimit old_limit, limit;
    CHECK(getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    limit = old_limit;
    limit.rlim_cur = 1024;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &limit) == 0) {
        moira_status_t status = moira_safetensors_write(path, large, 1);
        CHECK(setrlimit(RLIMIT_FSIZE, &old_limit) == 0);
        CHECK(moira_status_code(status) == MOIRA_CODE_IO);
        printf("  %-26s %s\n", "write past size limit", moira_status_message(status));
        moira_status_free(status);
        expect_unchanged("write error", path, before, size);
    }
    signal(SIGXFSZ, old_handler);

    /* A directory where the output should go: refused before anything is written (bad usage). */
    char blocked[160];
    snprintf(blocked, sizeof(blocked), "%s/blocked.safetensors", g_dir);
    CHECK(mkdir(blocked, 0755) == 0);
    snprintf(nodir, sizeof(nodir), "%s/blocked.safetensors/keep", g_dir);
    write_bytes(nodir, "x", 1);
    CHECK_CODE(moira_safetensors_write(blocked, one, 1), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK(unlink(nodir) == 0);
    CHECK(rmdir(blocked) == 0);

    /* No temporary files were left behind. */
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "ls -a %s | grep -q '\\.tmp\\.'", g_dir);
    CHECK_MSG(system(cmd) != 0, "a temporary file was left in %s", g_dir);

    /* A successful overwrite replaces the file and keeps it readable. */
    CHECK_OK(moira_safetensors_write(path, large, 1));
    moira_safetensors_t *file = NULL;
    CHECK_OK(moira_safetensors_open(path, &file));
    CHECK(moira_safetensors_count(file) == 1 && moira_safetensors_has(file, "big"));
    moira_safetensors_close(file);
}

/* Tensors of dtypes Moira does not compute with (F64, BOOL) are checked and skipped: the file
 * opens, the other tensors read, and asking for a skipped one says why (issue 20: one unused F64
 * tensor made the whole file unreadable). */
static void test_unsupported_dtypes(void) {
    char path[128];
    in_dir(path, sizeof(path), "mixed.safetensors");
    write_raw(path,
              "{\"x\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
              " \"w\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [8, 16]},"
              " \"m\": {\"dtype\": \"BOOL\", \"shape\": [3], \"data_offsets\": [16, 19]}}",
              UINT64_MAX, 19);
    moira_safetensors_t *file = NULL;
    CHECK_OK(moira_safetensors_open(path, &file));
    if (!file) return;
    const moira_tensor_t *t = NULL;
    CHECK_OK(moira_safetensors_find(file, "x", &t));
    CHECK(moira_safetensors_count(file) == 1);
    moira_status_t status = moira_safetensors_find(file, "w", &t);
    CHECK(moira_status_code(status) == MOIRA_CODE_UNSUPPORTED);
    CHECK_MSG(strstr(moira_status_message(status), "tensor w: dtype \"F64\" is not supported"),
              "message: %s", moira_status_message(status));
    moira_status_free(status);
    status = moira_safetensors_find(file, "m", &t);
    CHECK(moira_status_code(status) == MOIRA_CODE_UNSUPPORTED &&
          strstr(moira_status_message(status), "BOOL"));
    moira_status_free(status);
    /* Skipped tensors stay reachable as raw bytes, for tools that only read values. */
    CHECK(moira_safetensors_other_count(file) == 2 && !moira_safetensors_other(file, 2));
    const moira_safetensors_other_t *w = moira_safetensors_other(file, 0);
    const moira_safetensors_other_t *m = moira_safetensors_other(file, 1);
    CHECK(w && !strcmp(w->name, "w") && !strcmp(w->dtype, "F64") && w->rank == 1 &&
          w->shape[0] == 1 && w->nbytes == 8 && ((const unsigned char *)w->data)[0] == 8 * 7 + 1);
    CHECK(m && !strcmp(m->name, "m") && !strcmp(m->dtype, "BOOL") && m->shape[0] == 3 &&
          m->nbytes == 3 && ((const unsigned char *)m->data)[2] == 18 * 7 + 1);
    moira_safetensors_close(file);
    /* A skipped tensor is still checked: its bytes must be where its shape says. */
    write_raw(path, "{\"w\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
              UINT64_MAX, 8);
    expect_open_error("F64 of the wrong size", path, MOIRA_CODE_INVALID_INPUT, "needs 16");
}

int main(void) {
    snprintf(g_dir, sizeof(g_dir), "%s", "/tmp/moira_st_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_golden();
    test_sharded_directory();
    test_fp8_scales();
    test_parser_edges();
    test_malformed();
    test_unsupported_dtypes();
    test_write_failures();
    moira_remove_tree(g_dir);
    return moira_test_finish("test_safetensors");
}
