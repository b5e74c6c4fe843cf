/* A small test harness: checks that record failures and keep going, NMSE against references, and
 * the skip convention (exit 77) that CTest reports as "skipped". */
#ifndef MOIRA_TESTS_TESTING_H
#define MOIRA_TESTS_TESTING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops/weights.h"
#include "runtime/status.h"

#define MOIRA_TEST_SKIP 77

extern int moira_test_failures;
extern int moira_test_checks;

void moira_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        moira_test_checks++;                                                                       \
        if (!(cond)) moira_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                      \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        moira_test_checks++;                                                                       \
        if (!(cond)) moira_test_fail(__FILE__, __LINE__, __VA_ARGS__);                             \
    } while (0)

/* Checks that `expr` returns OK; on failure prints the status and frees it. */
#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        moira_test_checks++;                                                                       \
        moira_status_t check_status_ = (expr);                                                     \
        if (check_status_) {                                                                       \
            moira_test_fail(__FILE__, __LINE__, "%s: %s", #expr,                                   \
                            moira_status_message(check_status_));                                  \
            moira_status_free(check_status_);                                                      \
        }                                                                                          \
    } while (0)

/* Checks that `expr` fails with `code`, printing its message (so the log shows what users see). */
#define CHECK_CODE(expr, code)                                                                     \
    do {                                                                                           \
        moira_test_checks++;                                                                       \
        moira_status_t check_status_ = (expr);                                                     \
        if (moira_status_code(check_status_) != (code))                                            \
            moira_test_fail(__FILE__, __LINE__, "%s: expected %s, got %s (%s)", #expr,             \
                            moira_code_name(code),                                                 \
                            moira_code_name(moira_status_code(check_status_)),                     \
                            moira_status_message(check_status_));                                  \
        moira_status_free(check_status_);                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        moira_test_checks++;                                                                       \
        double check_a_ = (a), check_b_ = (b);                                                     \
        if (!(check_a_ - check_b_ <= (tol) && check_b_ - check_a_ <= (tol)))                       \
            moira_test_fail(__FILE__, __LINE__, "%s = %.9g vs %s = %.9g (tol %g)", #a, check_a_,   \
                            #b, check_b_, (double)(tol));                                          \
    } while (0)

/* NMSE = sum((got - ref)^2) / sum(ref^2), DESIGN.md §4. Infinity when NaN/Inf disagree. */
double moira_test_nmse(const float *got, const double *ref, size_t n);
double moira_test_nmse_f32(const float *got, const float *ref, size_t n);

/* Deterministic uniform values in [lo, hi). */
void moira_test_fill_uniform(float *dst, size_t n, uint64_t seed, float lo, float hi);

/* Adds to load[e] the (token, expert) assignments the fp64 reference router makes for expert e of
 * MoE decoder layer `layer` given that layer's input x (f32 [T, D]): routed on
 * rmsnorm(h, post_attention_layernorm) where h = x + mla(rmsnorm(x, input_layernorm)). What a
 * recorded load profile must say. `load` has n_routed_experts entries. */
moira_status_t moira_test_reference_moe_load(const moira_model_config_t *config,
                                             const moira_layer_weights_t *layer,
                                             const moira_tensor_t *x,
                                             const moira_tensor_t *positions, double *load);

/* Runs a shell command and returns its exit code (-1 when it did not exit normally) with what it
 * wrote to stdout in `output` (NUL-terminated, cut to size - 1 bytes; the command's stderr goes
 * with it only when the command redirects it). */
int moira_test_run_capture(const char *command, char *output, size_t size);

/* Prints the summary line ("N passed, N failed") and returns the process exit code. */
int moira_test_finish(const char *name);

#endif
