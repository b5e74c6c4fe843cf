/* `moira run`: deciding where everything runs, and refusing what cannot run, before any weight
 * is loaded (runtime/cli/run.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/home.h"
#include "placement/profile.h"
#include "placement/reserve.h"
#include "runtime/backend.h"
#include "runtime/cli/cli.h"
#include "runtime/cli/run.h"
#include "runtime/cluster/cluster.h"

/* Accepts a zeroed or half-filled placement. */
void run_placement_free(run_placement_t *p) {
    moira_exec_binding_free(&p->binding);
    moira_plan_free(&p->plan);
    moira_topology_free(&p->topology);
    free(p->homes);
    memset(p, 0, sizeof(*p));
}

/* A plan made here: Moira's planner for a uniform load of the batch's tokens, no redundancy. */
static moira_status_t make_plan(const moira_topology_t *topology, const moira_model_config_t *model,
                                int64_t tokens, moira_plan_t *out) {
    moira_profile_t profile;
    MOIRA_RETURN_IF_ERROR(moira_profile_synthesise(model, "uniform", tokens, &profile));
    moira_plan_options_t options = {0, 0, MOIRA_PLAN_BALANCED};
    moira_status_t status = moira_plan_make(topology, model, &profile, &options, out);
    moira_profile_free(&profile);
    return status;
}

/* The topology the plan is for: --backend alone makes a one-device machine; else --topology, or
 * this machine discovered. */
static moira_status_t load_topology(const run_args_t *a, bool single_device,
                                    moira_topology_t *out) {
    if (single_device) {
        moira_device_t *device = NULL;
        MOIRA_RETURN_IF_ERROR(moira_device_find(a->backend, &device));
        return moira_topology_for_device(moira_device_info(device), out);
    }
    moira_device_info_t *infos = NULL;
    int n = 0;
    MOIRA_RETURN_IF_ERROR(moira_cli_device_infos(&infos, &n));
    const char *backends[16];
    moira_discovery_devices_t devices = {infos, n, backends, moira_cli_backend_names(backends, 16),
                                         a->with_emulated || getenv("MOIRA_NPU_DEVICES")};
    moira_status_t status = a->topology ? moira_topology_load(a->topology, &devices, out)
                                        : moira_topology_discover_local(&devices, out);
    free(infos);
    return status;
}

/* The home device: --backend; else the plan's home when it names a device with `select` (CPU
 * memory as home is cpu:0); else cpu:0. */
static moira_status_t find_home(const run_args_t *a, const run_placement_t *p,
                                moira_device_t **out) {
    if (a->backend) return moira_device_find(a->backend, out);
    int home = p->plan.home[0] ? moira_topology_find_target(&p->topology, p->plan.home) : -1;
    const moira_target_t *t = home >= 0 ? &p->topology.targets[home] : NULL;
    moira_cluster_t *cluster = moira_cluster_current();
    if (t && cluster && t->host != moira_cluster_rank(cluster)) {
        /* Across hosts rank 0 owns the tokens, so the plan's home is one of its devices; the
         * other ranks' home (holding weights they do not run) is their cpu:0. */
        if (moira_cluster_rank(cluster) == 0)
            return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                     "the plan's home \"%s\" is on host \"%s\"; under mpirun "
                                     "rank 0 (host \"%s\") runs attention for every token, so "
                                     "the home must be one of its devices",
                                     t->name, p->topology.hosts[t->host].name,
                                     p->topology.hosts[0].name);
        return moira_device_find("cpu:0", out);
    }
    if (t && t->kind != MOIRA_TARGET_NUMA && t->select[0]) {
        moira_status_t status = moira_device_find(t->select, out);
        if (!status) return MOIRA_OK_STATUS;
        moira_status_free(status);
        fprintf(stderr,
                "moira: warning: the plan's home \"%s\" (select \"%s\") is no device "
                "here; the home is cpu:0\n",
                t->name, t->select);
    }
    return moira_device_find("cpu:0", out);
}

moira_exec_config_t run_exec_config(const moira_model_config_t *model,
                                    const moira_layer_weights_t *weights, const run_placement_t *p,
                                    int64_t max_tokens) {
    return (moira_exec_config_t){.model = model,
                                 .weights = weights,
                                 .topology = &p->topology,
                                 .plan = &p->plan,
                                 .binding = &p->binding,
                                 .home_devices = p->homes,
                                 .max_tokens = max_tokens};
}

/* Everything here reads files and the device list only; no weight has been read yet. */
moira_status_t run_place(const run_args_t *a, const moira_model_config_t *model, int64_t tokens,
                         run_placement_t *out) {
    memset(out, 0, sizeof(*out));
    bool single_device = a->backend && !a->topology && !a->plan;
    moira_status_t status = load_topology(a, single_device, &out->topology);
    if (!status && a->plan) {
        /* A plan from a file keeps the same reserve free as one made here (its home unknown). */
        moira_topology_reserve(&out->topology, model, (double)a->reserve_gib * 1073741824.0, -1);
        status = moira_plan_load_for_model(a->plan, &out->topology, model, &out->plan);
        if (!status) moira_plan_evaluate(&out->plan, &out->topology, model);
        snprintf(out->source, sizeof(out->source), "%s (topology %s)", a->plan, out->topology.name);
    } else if (!status) {
        int home = moira_home_choose(&out->topology, model, (double)tokens);
        moira_topology_reserve(&out->topology, model, (double)a->reserve_gib * 1073741824.0, home);
        status = make_plan(&out->topology, model, tokens, &out->plan);
        if (!status && home >= 0) moira_plan_set_home(&out->plan, &out->topology, model, home);
        snprintf(out->source, sizeof(out->source), "%s for a uniform load of %lld tokens%s%s",
                 single_device ? "every expert on one device" : "planned here", (long long)tokens,
                 a->topology ? " on " : " on this machine", a->topology ? a->topology : "");
    }
    if (!status)
        status = moira_exec_bind(&out->topology, &out->plan, model, a->plan, &out->binding);
    if (!status) status = find_home(a, out, &out->home);
    if (!status) status = moira_exec_check_home(out->home, model);
    if (!status) status = run_check_host_memory(out, model, a->home_cache_bytes);
    if (!status) {
        out->homes = calloc((size_t)model->num_hidden_layers + 1, sizeof(*out->homes));
        if (!out->homes) status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
        for (int64_t l = 0; out->homes && l < model->num_hidden_layers; l++)
            out->homes[l] = out->home;
    }
    if (status) run_placement_free(out);
    return status;
}
