/* `moira calibrate`: timing one target on the model's own shapes (runtime/cli/calibrate.h). The
 * target runs the real executor path a run takes - every routed expert on it, the home on it
 * where it can run one - so what is measured is what `moira run` will see, and the cost model's
 * figures are fitted to it (placement/calibrate_fit.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/calibrate_fit.h"
#include "placement/cost_model.h"
#include "placement/home.h"
#include "placement/profile.h"
#include "placement/reserve.h"
#include "runtime/backend.h"
#include "runtime/cli/calibrate.h"
#include "runtime/clock.h"

/* Bytes one link measurement copies each way: large enough that the copy's fixed cost is small
 * next to it (that cost is the launch's), small enough to take milliseconds. */
#define LINK_BYTES (16u << 20)

/* Host <-> device copy speed, GB/s: the best of three writes and three reads, averaged. */
static moira_status_t measure_link(moira_device_t *device, double *out_gbs) {
    moira_buffer_t *buffer = NULL;
    moira_queue_t *queue = NULL;
    char *host = calloc(LINK_BYTES, 1);
    if (!host) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "calibrate: out of memory");
    moira_status_t status = moira_buffer_alloc(device, LINK_BYTES, -1, &buffer);
    if (!status) status = moira_queue_create(device, &queue);
    double best[2] = {1e30, 1e30};
    for (int i = 0; !status && i < 6; i++) {
        double start = moira_now_seconds();
        status = i % 2 ? moira_queue_read(queue, buffer, 0, host, LINK_BYTES)
                       : moira_queue_write(queue, buffer, 0, host, LINK_BYTES);
        if (!status) status = moira_queue_finish(queue);
        double s = moira_now_seconds() - start;
        if (s < best[i % 2]) best[i % 2] = s;
    }
    if (queue) moira_queue_destroy(queue);
    if (buffer) moira_buffer_free(buffer);
    free(host);
    *out_gbs = status ? 0 : LINK_BYTES / ((best[0] + best[1]) / 2) / 1e9;
    return status;
}

/* The topology of one target: its host, the target alone, no links. Caller frees *out. */
static moira_status_t one_target(const moira_topology_t *topology, int index,
                                 moira_topology_t *out) {
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", topology->name);
    out->hosts = calloc((size_t)topology->n_hosts, sizeof(*out->hosts));
    if (!out->hosts) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    memcpy(out->hosts, topology->hosts, (size_t)topology->n_hosts * sizeof(*out->hosts));
    out->n_hosts = topology->n_hosts;
    return moira_topology_add_target(out, &topology->targets[index]);
}

/* Every routed expert on the one target of `single`, the home named there. */
static moira_status_t plan_all_on_one(const moira_topology_t *single,
                                      const moira_model_config_t *model, int64_t tokens,
                                      moira_plan_t *out) {
    moira_profile_t profile;
    MOIRA_RETURN_IF_ERROR(moira_profile_synthesise(model, "uniform", tokens, &profile));
    moira_plan_options_t options = {0, 0, MOIRA_PLAN_BALANCED};
    moira_status_t status = moira_plan_make(single, model, &profile, &options, out);
    moira_profile_free(&profile);
    if (!status) moira_plan_set_home(out, single, model, 0);
    return status;
}

/* Timed forwards per batch size: at least --iters, more while they take under TIME_BUDGET_S. */
#define MAX_FORWARDS 64
#define TIME_BUDGET_S 0.25

/* Per MoE layer of one forward: the target's busy time and assignments, the replicas it read
 * (experts with tokens) and the home's time. */
typedef struct one_forward {
    double busy_us, tokens, reads, home_us;
} one_forward_t;

static moira_status_t read_forward(const moira_executor_t *ex, one_forward_t *out) {
    const moira_exec_stats_t *stats = moira_executor_stats(ex);
    moira_profile_t profile;
    MOIRA_RETURN_IF_ERROR(moira_executor_observed_profile(ex, &profile));
    double reads = 0, home = 0;
    for (int l = 0; l < profile.n_layers; l++)
        for (int64_t e = 0; e < profile.experts; e++)
            reads += profile.load[(size_t)l * (size_t)profile.experts + (size_t)e] > 0;
    for (int l = 0; l < stats->n_layers; l++)
        if (stats->layers[l].is_moe) home += stats->layers[l].home_s;
    double layers = profile.n_layers > 0 ? profile.n_layers : 1;
    moira_profile_free(&profile);
    out->busy_us = stats->targets[0].busy_s * 1e6 / layers;
    out->tokens = (double)stats->targets[0].assignments / layers;
    out->reads = reads / layers;
    out->home_us = home * 1e6 / layers;
    return MOIRA_OK_STATUS;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The middle of `n` values (sorted in place): a forward slowed by other work on the host (a pool
 * thread descheduled at a barrier costs milliseconds) does not move it. */
static double median(double *values, int n) {
    qsort(values, (size_t)n, sizeof(double), by_value);
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

/* After a warm-up, forwards of the first `tokens` rows of the batch: `iters`, and more while
 * they stay within the time budget; the medians. */
static moira_status_t time_point(moira_executor_t *ex, run_model_t *m, int64_t tokens, int iters,
                                 one_forward_t *out) {
    int64_t d = m->config.hidden_size, shape[2] = {tokens, d}, pshape[1] = {tokens};
    moira_tensor_t x = moira_tensor_view(MOIRA_DTYPE_F32, 2, shape, m->x.data);
    moira_tensor_t y = moira_tensor_view(MOIRA_DTYPE_F32, 2, shape, m->out.data);
    moira_tensor_t pos = moira_tensor_view(MOIRA_DTYPE_I32, 1, pshape, m->positions.data);
    MOIRA_RETURN_IF_ERROR(moira_executor_forward(ex, &x, &pos, &y, false, NULL));
    double start = moira_now_seconds(), busy[MAX_FORWARDS], home[MAX_FORWARDS];
    int n = 0;
    while (n < MAX_FORWARDS && (n < iters || moira_now_seconds() - start < TIME_BUDGET_S)) {
        moira_executor_reset_stats(ex);
        MOIRA_RETURN_IF_ERROR(moira_executor_forward(ex, &x, &pos, &y, false, NULL));
        MOIRA_RETURN_IF_ERROR(read_forward(ex, out));
        busy[n] = out->busy_us;
        home[n++] = out->home_us;
    }
    out->busy_us = median(busy, n);
    out->home_us = median(home, n);
    return MOIRA_OK_STATUS;
}

/* The expert figures from the points: launch, bandwidth from the time per read, throughput
 * from the time per assignment; transfers over the link are taken out first. */
static moira_status_t fit_experts(const moira_cost_model_t *cost, const moira_target_t *target,
                                  const one_forward_t *f, int n, calibrate_result_t *out) {
    moira_calibration_point_t points[CALIBRATE_MAX_POINTS];
    for (int i = 0; i < n; i++) {
        double link = moira_target_link_gbs(target);
        double link_us =
            link > 0 ? moira_cost_link_bytes(cost, target, f[i].tokens) / (link * 1e3) : 0;
        double busy = f[i].busy_us - link_us;
        points[i] = (moira_calibration_point_t){
            f[i].reads, f[i].tokens, busy > 0.01 * f[i].busy_us ? busy : 0.01 * f[i].busy_us};
    }
    moira_calibration_fit_t fit;
    MOIRA_RETURN_IF_ERROR(moira_calibration_fit(points, n, 0, &fit));
    out->figures.launch_us = fit.launch_us;
    out->figures.bandwidth_gbs = cost->expert_bytes / (fit.us_per_read * 1e3);
    out->figures.tflops[cost->weight_dtype] = cost->flops_per_token / (fit.us_per_token * 1e6);
    out->worst_ratio = fit.worst_ratio;
    return MOIRA_OK_STATUS;
}

/* The home figures: its weights read at the bandwidth the experts measured; launch, throughput
 * and attention throughput fitted to the home's times (moira_home_layer_us' form). */
static moira_status_t fit_home(const moira_model_config_t *model, const one_forward_t *f, int n,
                               const int64_t *tokens, calibrate_result_t *out) {
    int64_t layer =
        model->first_k_dense_replace < model->num_hidden_layers ? model->first_k_dense_replace : 0;
    double experts = 0, rest = 0;
    moira_model_layer_bytes(model, layer, model->weight_dtype, &experts, &rest);
    double params = rest / (double)moira_dtype_size(model->weight_dtype);
    moira_home_point_t points[CALIBRATE_MAX_POINTS];
    for (int i = 0; i < n; i++)
        points[i] = (moira_home_point_t){2.0 * params * (double)tokens[i],
                                         moira_home_attention_flops(model, (double)tokens[i]),
                                         f[i].home_us};
    moira_home_fit_t fit;
    MOIRA_RETURN_IF_ERROR(
        moira_calibration_fit_home(points, n, rest / (out->figures.bandwidth_gbs * 1e3), &fit));
    out->figures.home_launch_us = fit.launch_us;
    out->figures.home_tflops = 1.0 / (fit.us_per_flop * 1e6);
    out->figures.home_attention_tflops =
        fit.us_per_attention_flop > 0 ? 1.0 / (fit.us_per_attention_flop * 1e6) : 0;
    out->home_worst_ratio = fit.worst_ratio;
    return MOIRA_OK_STATUS;
}

/* The home runs on the target's own device when it can (CPU memory: the cpu device it is bound
 * to), else on cpu:0 and the home is not fitted. */
static moira_status_t pick_home(moira_device_t *device, const moira_model_config_t *model,
                                bool *out_here, moira_device_t **out) {
    moira_status_t status = moira_exec_check_home(device, model);
    *out_here = !status;
    if (!status) {
        *out = device;
        return MOIRA_OK_STATUS;
    }
    moira_status_free(status);
    return moira_device_find("cpu:0", out);
}

/* Skips (not an error) what this target cannot do here; measures the rest. */
static moira_status_t measure(const moira_topology_t *single, run_model_t *m, const int64_t *points,
                              int n_points, int iters, calibrate_result_t *out) {
    const moira_model_config_t *model = &m->config;
    moira_plan_t plan;
    memset(&plan, 0, sizeof(plan));
    moira_exec_binding_t binding;
    memset(&binding, 0, sizeof(binding));
    moira_executor_t *ex = NULL;
    moira_device_t **homes = NULL;
    moira_status_t status = plan_all_on_one(single, model, points[n_points - 1], &plan);
    if (!status) status = moira_exec_bind(single, &plan, model, NULL, &binding);
    if (status) { /* cannot hold the model, or no device here: say so and go on */
        snprintf(out->why, sizeof(out->why), "%s", moira_status_message(status));
        moira_status_free(status);
        moira_plan_free(&plan);
        moira_exec_binding_free(&binding);
        return MOIRA_OK_STATUS;
    }
    moira_device_t *device = binding.devices[0], *home = NULL;
    snprintf(out->device, sizeof(out->device), "%s", moira_device_info(device)->name);
    moira_target_t *target = &((moira_topology_t *)single)->targets[0];
    if (target->kind != MOIRA_TARGET_NUMA)
        status = measure_link(device, &target->measured.link_gbs);
    out->figures.link_gbs = target->measured.link_gbs;
    if (!status) status = pick_home(device, model, &out->home_measured, &home);
    homes = calloc((size_t)model->num_hidden_layers + 1, sizeof(*homes));
    if (!status && !homes) status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    for (int64_t l = 0; !status && l < model->num_hidden_layers; l++)
        homes[l] = home;
    if (!status) {
        moira_exec_config_t config = {.model = model,
                                      .weights = m->layers,
                                      .topology = single,
                                      .plan = &plan,
                                      .binding = &binding,
                                      .home_devices = homes,
                                      .max_tokens = points[n_points - 1]};
        status = moira_executor_create(&config, &ex);
    }
    one_forward_t f[CALIBRATE_MAX_POINTS];
    for (int i = 0; !status && i < n_points; i++) {
        status = time_point(ex, m, points[i], iters, &f[i]);
        out->tokens[i] = (double)points[i];
        out->busy_us[i] = f[i].busy_us;
        out->home_us[i] = f[i].home_us;
    }
    out->n_points = n_points;
    moira_cost_model_t cost;
    moira_cost_model_init(model, &cost);
    if (!status) status = fit_experts(&cost, target, f, n_points, out);
    if (!status && out->home_measured) status = fit_home(model, f, n_points, points, out);
    out->measured = !status;
    moira_executor_destroy(ex);
    free(homes);
    moira_exec_binding_free(&binding);
    moira_plan_free(&plan);
    return status;
}

moira_status_t calibrate_target(const moira_topology_t *topology, int index, run_model_t *m,
                                const int64_t *points, int n_points, int iters,
                                calibrate_result_t *out) {
    memset(out, 0, sizeof(*out));
    moira_topology_t single;
    MOIRA_RETURN_IF_ERROR(one_target(topology, index, &single));
    moira_status_t status = measure(&single, m, points, n_points, iters, out);
    moira_topology_free(&single);
    return status;
}
