/* Calibrated figures (issue 15, DESIGN.md §5 `measured:`): the fit recovers hand-chosen figures
 * from the times they imply, topology files carry measured figures (read, checked at
 * file:line:col, written back), and the cost model prefers them, launch included, against
 * hand-computed times. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/calibrate_fit.h"
#include "placement/cost_model.h"
#include "placement/home.h"
#include "placement/plan.h"
#include "placement/profile.h"
#include "placement/reserve.h"
#include "placement/speed.h"
#include "placement/topology.h"
#include "testing.h"

/* Times made by hand from launch 10 us, 2 us per read, 0.5 us per token: the first two points
 * are memory-bound (10 + 2 x reads), the last compute-bound (10 + 0.5 x tokens). */
static void test_fit_recovers_figures(void) {
    moira_calibration_point_t points[3] = {{4, 4, 18}, {32, 64, 74}, {32, 2048, 1034}};
    moira_calibration_fit_t fit;
    CHECK_OK(moira_calibration_fit(points, 3, 0, &fit));
    CHECK_NEAR(fit.launch_us, 10, 1e-9);
    CHECK_NEAR(fit.us_per_read, 2, 1e-12);
    CHECK_NEAR(fit.us_per_token, 0.5, 1e-12);
    CHECK_NEAR(fit.worst_ratio, 1, 1e-12);
    CHECK_NEAR(moira_calibration_predict(&fit, 8, 100), 10 + 50, 1e-9);
    /* The order of the points does not matter. */
    moira_calibration_point_t shuffled[3] = {points[2], points[0], points[1]};
    CHECK_OK(moira_calibration_fit(shuffled, 3, 0, &fit));
    CHECK_NEAR(fit.launch_us, 10, 1e-9);
    CHECK_NEAR(fit.us_per_token, 0.5, 1e-12);
    /* The home: reads fixed at 30 us; launch 100, 0.25 us per token: T=1 memory-bound
     * (100 + 30), T=512 compute-bound (100 + 128). */
    moira_calibration_point_t home[2] = {{1, 1, 130}, {1, 512, 228}};
    CHECK_OK(moira_calibration_fit(home, 2, 30, &fit));
    CHECK_NEAR(fit.launch_us, 100, 1e-9);
    CHECK_NEAR(fit.us_per_read, 30, 0);
    CHECK_NEAR(fit.us_per_token, 0.25, 1e-12);
    /* Noisy points still give a fit, and say how far it is from the worst of them. */
    moira_calibration_point_t noisy[3] = {{4, 4, 20}, {32, 64, 70}, {32, 2048, 1100}};
    CHECK_OK(moira_calibration_fit(noisy, 3, 0, &fit));
    CHECK(fit.worst_ratio >= 1 && fit.worst_ratio < 1.1);
    /* The home with attention, by hand: memory 30 us, launch 100, 1e-6 us per FLOP, 1e-4 us per
     * attention FLOP. T=1 (1e7 FLOPs, 1e4 attention): 100 + max(30, 10) + 1 = 131; T=16 (1.6e8,
     * 2.72e5): 100 + 160 + 27.2 = 287.2; T=512 (5.12e9, 2.62656e8): 100 + 5120 + 26265.6. */
    moira_home_point_t hp[3] = {
        {1e7, 1e4, 131}, {1.6e8, 2.72e5, 287.2}, {5.12e9, 2.62656e8, 31485.6}};
    moira_home_fit_t hf;
    CHECK_OK(moira_calibration_fit_home(hp, 3, 30, &hf));
    CHECK_NEAR(hf.launch_us, 100, 1e-6);
    CHECK_NEAR(hf.us_per_flop, 1e-6, 1e-15);
    CHECK_NEAR(hf.us_per_attention_flop, 1e-4, 1e-15);
    CHECK_NEAR(hf.worst_ratio, 1, 1e-9);
    CHECK_NEAR(moira_home_fit_predict(&hf, 30, 3.2e8, 1.056e6), 100 + 320 + 105.6, 1e-6);
    moira_calibration_point_t zero[2] = {{1, 1, 0}, {2, 2, 5}};
    CHECK_CODE(moira_calibration_fit(zero, 2, 0, &fit), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK_CODE(moira_calibration_fit(points, 1, 0, &fit), MOIRA_CODE_INVALID_ARGUMENT);
}

static const char calibrated[] =
    "name: c\n"
    "hosts:\n"
    "  - name: h\n"
    "    numa_nodes:\n"
    "      - {id: 0, memory_gib: 64, bandwidth_gbs: 100, cores: 8, peak_tflops: {f32: 1},\n"
    "         measured: {bandwidth_gbs: 20, tflops: {bf16: 0.1}, launch_us: 50,\n"
    "                    home_launch_us: 300, home_tflops: 0.02, home_attention_tflops: 0.001}}\n"
    "    devices:\n"
    "      - {name: g, kind: gpu, backend: opencl, memory_gib: 16, bandwidth_gbs: 1000,\n"
    "         peak_tflops: {bf16: 100}, link_gbs: 32,\n"
    "         measured: {bandwidth_gbs: 50, tflops: {bf16: 2, f32: 1}, launch_us: 20, "
    "link_gbs: 8}}\n";

/* The cost model's time on each target against the formula by hand with the measured figures. */
static void test_cost_prefers_measured(void) {
    moira_topology_t t;
    CHECK_OK(moira_topology_parse(calibrated, strlen(calibrated), "c.yaml", NULL, &t));
    CHECK(t.n_targets == 2);
    CHECK(t.targets[0].measured.bandwidth_gbs == 20 && t.targets[0].measured.launch_us == 50);
    CHECK(t.targets[1].measured.link_gbs == 8 &&
          t.targets[1].measured.tflops[MOIRA_DTYPE_F32] == 1);
    CHECK(moira_target_bandwidth_gbs(&t.targets[0]) == 20);
    CHECK(moira_target_bandwidth_gbs(&t.targets[1]) == 50);
    CHECK(moira_target_link_gbs(&t.targets[0]) == 0);
    CHECK(moira_target_link_gbs(&t.targets[1]) == 8);
    CHECK(moira_target_peak_tflops(&t.targets[1], MOIRA_DTYPE_BF16) == 2);
    CHECK(moira_target_peak_tflops(&t.targets[1], MOIRA_DTYPE_F32) == 1);
    /* fp8 weights widen to the measured bf16 figure, not the data sheet's 100. */
    CHECK(moira_target_peak_tflops(&t.targets[1], MOIRA_DTYPE_F8_E4M3) == 2);
    moira_model_config_t model;
    moira_model_config_default(&model); /* moira-tiny: D 256, I 128, bf16 */
    moira_cost_model_t cost;
    moira_cost_model_init(&model, &cost);
    double expert_bytes = 3.0 * 256 * 128 * 2, flops = 6.0 * 256 * 128;
    CHECK_NEAR(cost.expert_bytes, expert_bytes, 0);
    /* CPU memory, 4 reads and 4 tokens: launch 50 + max(4 x 196608 B / 20 GB/s = 39.3216 us,
     * 4 x 196608 FLOP / 0.1 TFLOP/s = 7.86432 us). */
    CHECK_NEAR(moira_cost_target_us(&cost, &t.targets[0], 4, 4), 50 + 4 * expert_bytes / 20e3,
               1e-9);
    /* The GPU, 32 reads and 2048 tokens: launch 20 + max(32 x 196608 / 50e3 = 125.83 us,
     * 2048 x 196608 / 2e6 = 201.33 us) + 2048 x 512 B x 2 / 8e3 = 262.14 us over the link. */
    CHECK_NEAR(moira_cost_target_us(&cost, &t.targets[1], 2048, 32),
               20 + 2048 * flops / 2e6 + 2048 * 512.0 * 2 / 8e3, 1e-9);
    /* Nothing to do costs nothing: no launch without work. */
    CHECK(moira_cost_target_us(&cost, &t.targets[1], 0, 0) == 0);
    /* The home on CPU memory: launch 300 + max(rest / 20 GB/s, 2 x params x T / 0.02 TFLOP/s) */
    double experts = 0, rest = 0;
    moira_model_layer_bytes(&model, 1, model.weight_dtype, &experts, &rest);
    /* ... + attention: 4 heads x (32 + 16 + 32) dims x T (T + 1) FLOPs at 0.001 TFLOP/s. */
    double params = rest / 2, attention1 = 4.0 * 80 * 1 * 2, attention512 = 4.0 * 80 * 512 * 513;
    CHECK_NEAR(moira_home_attention_flops(&model, 512), attention512, 0);
    double want1 = 300 + fmax(rest / 20e3, 2 * params / 0.02e6) + attention1 / 0.001e6;
    double want512 = 300 + fmax(rest / 20e3, 2 * params * 512 / 0.02e6) + attention512 / 0.001e6;
    CHECK_NEAR(moira_home_layer_us(&t, 0, &model, 1, 1), want1, 1e-9);
    CHECK_NEAR(moira_home_layer_us(&t, 0, &model, 1, 512), want512, 1e-6);
    moira_topology_free(&t);
}

/* A written topology reads back to the same targets and figures. */
static void test_write_round_trip(void) {
    moira_topology_t t, back;
    CHECK_OK(moira_topology_parse(calibrated, strlen(calibrated), "c.yaml", NULL, &t));
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    CHECK(out && moira_topology_write_stream(&t, out, false));
    fclose(out);
    CHECK_OK(moira_topology_parse(text, len, "written.yaml", NULL, &back));
    CHECK(back.n_targets == 2 && back.n_hosts == 1);
    for (int i = 0; i < 2 && back.n_targets == 2; i++) {
        const moira_target_t *a = &t.targets[i], *b = &back.targets[i];
        CHECK(!strcmp(a->name, b->name) && a->kind == b->kind && a->numa == b->numa);
        CHECK(a->memory_bytes == b->memory_bytes && a->bandwidth_gbs == b->bandwidth_gbs);
        CHECK(!memcmp(&a->measured, &b->measured, sizeof(a->measured)));
        CHECK(!memcmp(a->peak_tflops, b->peak_tflops, sizeof(a->peak_tflops)));
        CHECK(a->link_gbs == b->link_gbs);
    }
    printf("%s", text);
    free(text);
    moira_topology_free(&back);
    moira_topology_free(&t);
}

/* Bad measured figures are refused where they stand. */
static void expect_error(const char *measured, const char *token) {
    char text[1024];
    snprintf(
        text, sizeof(text),
        "name: c\nhosts:\n  - name: h\n    numa_nodes:\n"
        "      - {id: 0, memory_gib: 64, bandwidth_gbs: 100, cores: 8, peak_tflops: {f32: 1},\n"
        "         measured: %s}\n",
        measured);
    const char *line6 = text;
    for (int l = 1; l < 6; l++)
        line6 = strchr(line6, '\n') + 1;
    int column = (int)(strstr(line6, token) - line6) + 1;
    char expected[48];
    snprintf(expected, sizeof(expected), "bad.yaml:6:%d: ", column);
    moira_topology_t t;
    moira_status_t status = moira_topology_parse(text, strlen(text), "bad.yaml", NULL, &t);
    CHECK_MSG(moira_status_code(status) == MOIRA_CODE_INVALID_INPUT, "%s -> %s", measured,
              moira_status_message(status));
    CHECK_MSG(!strncmp(moira_status_message(status), expected, strlen(expected)),
              "expected %s..., got %s", expected, moira_status_message(status));
    printf("  rejected: %s\n", moira_status_message(status));
    moira_status_free(status);
}

static void test_bad_measured(void) {
    expect_error("{bandwidth_gbs: -3}", "-3");
    expect_error("{bandwidth_gbs: 0}", "0}");
    expect_error("{launch_us: -1}", "-1");
    expect_error("{bandwith_gbs: 3}", "bandwith_gbs");
    expect_error("{tflops: {bf16: 0}}", "{bf16");
    expect_error("{link_gbs: fast}", "fast");
    expect_error("[1, 2]", "[1");
}

/* The loop closes on speed: a recorded profile's `speeds:` read back (located errors), and a
 * device that ran 50x its prediction scales its cost by 50 and is given fewer experts. */
static void test_recorded_speeds(void) {
    moira_model_config_t model;
    moira_model_config_default(&model);
    char text[2048] = "moira_profile: 1\nexperts: 32\nlayers:\n  - {layer: 1, load: [";
    for (int e = 0; e < 32; e++)
        strcat(text, e ? ", 64" : "64");
    strcat(text, "]}\nspeeds:\n  - {device: g, busy_us: 5000, predicted_us: 100}\n"
                 "  - {device: elsewhere, busy_us: 1, predicted_us: 2}\n");
    moira_profile_t profile;
    CHECK_OK(moira_profile_parse(text, strlen(text), "p.yaml", &model, &profile));
    CHECK(profile.n_speeds == 2 && !strcmp(profile.speeds[0].device, "g"));
    CHECK(profile.speeds[0].busy_us == 5000 && profile.speeds[0].predicted_us == 100);
    moira_topology_t t;
    CHECK_OK(moira_topology_parse(calibrated, strlen(calibrated), "c.yaml", NULL, &t));
    moira_cost_model_t cost;
    moira_cost_model_init(&model, &cost);
    double before = moira_cost_target_us(&cost, &t.targets[1], 2048, 32);
    moira_plan_options_t options = {0, 0, MOIRA_PLAN_BALANCED};
    moira_plan_t fast, slow;
    CHECK_OK(moira_plan_make(&t, &model, &profile, &options, &fast));
    /* Only g is in this topology: one speed applied. */
    CHECK(moira_topology_apply_speeds(&t, &profile, NULL) == 1);
    CHECK_NEAR(t.targets[1].time_scale, 50, 0);
    CHECK_NEAR(moira_cost_target_us(&cost, &t.targets[1], 2048, 32), 50 * before, 1e-9);
    CHECK_OK(moira_plan_make(&t, &model, &profile, &options, &slow));
    int64_t on_fast = moira_plan_target_used_bytes(&fast, 1);
    int64_t on_slow = moira_plan_target_used_bytes(&slow, 1);
    printf("  g holds %lld bytes of experts as planned, %lld after running 50x slower\n",
           (long long)on_fast, (long long)on_slow);
    CHECK(on_slow < on_fast);
    moira_plan_free(&fast);
    moira_plan_free(&slow);
    moira_topology_free(&t);
    moira_profile_free(&profile);
    /* Bad speeds: at their line and column. */
    char full[1024] = "moira_profile: 1\nexperts: 32\nlayers:\n  - {layer: 1, load: [";
    for (int e = 0; e < 32; e++)
        strcat(full, e ? ", 1" : "1");
    strcat(full, "]}\nspeeds:\n  - {device: g, busy_us: 0, predicted_us: 1}\n");
    moira_status_t status = moira_profile_parse(full, strlen(full), "bad.yaml", &model, &profile);
    CHECK_MSG(moira_status_code(status) == MOIRA_CODE_INVALID_INPUT &&
                  strstr(moira_status_message(status), "bad.yaml:6:26: busy_us must be positive"),
              "%s", moira_status_message(status));
    printf("  rejected: %s\n", moira_status_message(status));
    moira_status_free(status);
}

int main(void) {
    test_fit_recovers_figures();
    test_cost_prefers_measured();
    test_write_round_trip();
    test_bad_measured();
    test_recorded_speeds();
    return moira_test_finish("test_placement_calibrate");
}
