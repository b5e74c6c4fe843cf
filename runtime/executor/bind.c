/* Binding a plan's targets to this machine's devices, and the checks that reject a plan the
 * machine cannot run before any weight is loaded (runtime/executor/executor.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/cluster/cluster.h"
#include "runtime/executor/executor.h"

/* Frees what moira_exec_bind allocated; the devices belong to the runtime. */
void moira_exec_binding_free(moira_exec_binding_t *binding) {
    free(binding->devices);
    free(binding->replicas);
    memset(binding, 0, sizeof(*binding));
}

/* Case-insensitive substring search: `select` names a device by part of its name. */
static bool contains_ignoring_case(const char *haystack, const char *needle) {
    size_t n = strlen(needle);
    if (n == 0) return false;
    for (; *haystack; haystack++)
        if (!strncasecmp(haystack, needle, n)) return true;
    return false;
}

/* A backend-specific fact ("platform") or "", so select can match an OpenCL platform name. */
static const char *device_detail(const moira_device_info_t *info, const char *key) {
    for (int i = 0; i < info->n_details; i++)
        if (!strcmp(info->details[i].key, key)) return info->details[i].value;
    return "";
}

/* Whether `select` picks this device: its exact name, or part of its model, vendor or platform. */
static bool select_matches(const moira_device_info_t *info, const char *select) {
    return !strcmp(info->name, select) || contains_ignoring_case(info->model, select) ||
           contains_ignoring_case(info->vendor, select) ||
           contains_ignoring_case(device_detail(info, "platform"), select);
}

/* Devices other GPU/NPU targets already took; CPU memory targets share the cpu device. */
static bool taken(const moira_exec_binding_t *b, const moira_topology_t *topology,
                  const moira_device_t *device) {
    for (int t = 0; t < b->n_targets; t++)
        if (b->devices[t] == device && topology->targets[t].kind != MOIRA_TARGET_NUMA) return true;
    return false;
}

/* The device a target runs on, by the rule in executor.h. */
static moira_status_t find_device(const moira_exec_binding_t *b, const moira_topology_t *topology,
                                  const moira_target_t *target, moira_device_t **out) {
    *out = NULL;
    char known[512] = "";
    size_t used = 0;
    for (int i = 0; i < moira_device_count(); i++) {
        moira_device_t *device = moira_device_at(i);
        const moira_device_info_t *info = moira_device_info(device);
        if (used < sizeof(known))
            used += (size_t)snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
                                     info->name);
        if (*out || strcmp(info->backend, target->backend)) continue;
        bool wanted = target->select[0]
                          ? select_matches(info, target->select)
                          : target->kind == MOIRA_TARGET_NUMA || !taken(b, topology, device);
        if (wanted) *out = device;
    }
    if (*out) return MOIRA_OK_STATUS;
    bool registered = false;
    for (int i = 0; i < moira_backend_count(); i++)
        registered = registered || !strcmp(moira_backend_name(i), target->backend);
    if (!registered)
        return moira_status_make(MOIRA_CODE_NOT_FOUND,
                                 "topology device \"%s\" uses backend \"%s\", which this build "
                                 "does not have",
                                 target->name, target->backend);
    if (target->select[0])
        return moira_status_make(MOIRA_CODE_NOT_FOUND,
                                 "topology device \"%s\" (backend %s, select \"%s\") matches no "
                                 "device here (devices: %s)",
                                 target->name, target->backend, target->select,
                                 used ? known : "none");
    return moira_status_make(MOIRA_CODE_NOT_FOUND,
                             "topology device \"%s\" needs a free %s device; there is none here "
                             "(devices: %s)",
                             target->name, target->backend, used ? known : "none");
}

/* A topology that calls a device something it is not (a gpu of 178.8 GiB bound to a CPU OpenCL
 * device of 21.5 GiB) plans for a machine that is not there; the run goes on, but says so.
 * Memory within 5% is taken as agreeing (drivers report a little less than the card has). */
static void warn_if_unlike(const moira_target_t *target, const moira_device_info_t *info) {
    if (target->kind == MOIRA_TARGET_NUMA) return;
    moira_device_kind_t kind =
        target->kind == MOIRA_TARGET_NPU ? MOIRA_DEVICE_KIND_NPU : MOIRA_DEVICE_KIND_GPU;
    if (info->kind != kind)
        fprintf(stderr,
                "moira: warning: topology device \"%s\" is a %s, but it is bound to %s, a %s "
                "device; plans for the topology are costed for a %s\n",
                target->name, moira_target_kind_name(target->kind), info->name,
                moira_device_kind_name(info->kind), moira_target_kind_name(target->kind));
    if (info->memory_bytes > 0 && (double)target->memory_bytes > 1.05 * (double)info->memory_bytes)
        fprintf(stderr,
                "moira: warning: topology device \"%s\" has %.1f GiB, but %s, which it is "
                "bound to, has %.1f GiB\n",
                target->name, (double)target->memory_bytes / 1073741824.0, info->name,
                (double)info->memory_bytes / 1073741824.0);
}

/* The three kernels a target runs for its experts; only the FFN reads the experts' weights
 * (`weight_dtype`: the experts' format, which a quantised checkpoint sets apart). */
static moira_status_t check_expert_ops(const moira_device_t *device, const moira_target_t *target,
                                       moira_dtype_t weight_dtype) {
    static const int ops[] = {MOIRA_OP_MOE_DISPATCH, MOIRA_OP_MOE_FFN, MOIRA_OP_MOE_COMBINE};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (!moira_device_supports(device, ops[i],
                                   ops[i] == MOIRA_OP_MOE_FFN ? weight_dtype : MOIRA_DTYPE_F32))
            return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                     "%s (%s) has no %s kernel for %s weights", target->name,
                                     moira_device_info(device)->name, moira_op_name(ops[i]),
                                     moira_dtype_name(weight_dtype));
    return MOIRA_OK_STATUS;
}

/* Asked before any weight moves, so a home device without a kernel fails early and by name. */
moira_status_t moira_exec_check_home(const moira_device_t *device,
                                     const moira_model_config_t *model) {
    static const int ops[] = {MOIRA_OP_RMSNORM, MOIRA_OP_LINEAR, MOIRA_OP_ROPE,
                              MOIRA_OP_GATE,    MOIRA_OP_SWIGLU, MOIRA_OP_MLA_ATTENTION};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (!moira_device_supports(device, ops[i], model->weight_dtype))
            return moira_status_make(MOIRA_CODE_UNSUPPORTED, "%s has no %s kernel for %s weights",
                                     moira_device_info(device)->name, moira_op_name(ops[i]),
                                     moira_dtype_name(model->weight_dtype));
    return MOIRA_OK_STATUS;
}

/* Sums what the plan puts on each device (several CPU NUMA targets share the cpu device) and
 * compares it with what the device says it has. */
static moira_status_t check_device_memory(const moira_exec_binding_t *b,
                                          const moira_topology_t *topology,
                                          const moira_plan_t *plan, const char *name) {
    for (int t = 0; t < b->n_targets; t++) {
        if (!b->devices[t]) continue;
        double need = 0;
        for (int o = 0; o < b->n_targets; o++)
            if (b->devices[o] == b->devices[t]) need += (double)b->replicas[o];
        need *= (double)plan->expert_bytes;
        const moira_device_info_t *info = moira_device_info(b->devices[t]);
        if (info->memory_bytes > 0 && need > (double)info->memory_bytes)
            return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                     "%s: %s would hold %.3f GiB of experts on %s, which has "
                                     "%.3f GiB",
                                     name, topology->targets[t].name, need / 1073741824.0,
                                     info->name, (double)info->memory_bytes / 1073741824.0);
    }
    return MOIRA_OK_STATUS;
}

/* The binding proper: the plan fits the model, replica counts, one host, a device per used target,
 * its kernels. */
static moira_status_t bind_targets(const moira_topology_t *topology, const moira_plan_t *plan,
                                   const moira_model_config_t *model, const char *name,
                                   moira_exec_binding_t *b) {
    MOIRA_RETURN_IF_ERROR(moira_plan_check_model(plan, model, name));
    for (int l = 0; l < plan->n_layers; l++)
        for (int r = 0; r < plan->layers[l].n_replicas; r++)
            b->replicas[plan->layers[l].replica_target[r]]++;
    moira_cluster_t *cluster = moira_cluster_current();
    if (cluster && moira_cluster_size(cluster) != topology->n_hosts)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%d ranks were started for a topology of %d host%s (%s); start "
                                 "one rank per host: mpirun -np %d",
                                 moira_cluster_size(cluster), topology->n_hosts,
                                 topology->n_hosts == 1 ? "" : "s", topology->name,
                                 topology->n_hosts);
    b->host = cluster ? moira_cluster_rank(cluster) : -1;
    int host = b->host;
    for (int t = 0; t < topology->n_targets; t++) {
        const moira_target_t *target = &topology->targets[t];
        if (b->replicas[t] == 0) continue;
        if (cluster && target->host != b->host) continue; /* another rank's */
        if (host >= 0 && target->host != host)
            return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                     "%s places experts on hosts \"%s\" and \"%s\"; one process "
                                     "runs one host's devices (start one rank per host with "
                                     "mpirun -np %d)",
                                     name, topology->hosts[host].name,
                                     topology->hosts[target->host].name, topology->n_hosts);
        host = target->host;
        MOIRA_RETURN_IF_ERROR(find_device(b, topology, target, &b->devices[t]));
        warn_if_unlike(target, moira_device_info(b->devices[t]));
        MOIRA_RETURN_IF_ERROR(
            check_expert_ops(b->devices[t], target, moira_model_config_expert_dtype(model)));
    }
    return check_device_memory(b, topology, plan, name);
}

/* Allocates the per-target arrays, then binds; on failure nothing is left to free. */
moira_status_t moira_exec_bind(const moira_topology_t *topology, const moira_plan_t *plan,
                               const moira_model_config_t *model, const char *plan_path,
                               moira_exec_binding_t *out) {
    memset(out, 0, sizeof(*out));
    out->n_targets = topology->n_targets;
    out->devices = calloc((size_t)topology->n_targets + 1, sizeof(*out->devices));
    out->replicas = calloc((size_t)topology->n_targets + 1, sizeof(*out->replicas));
    if (!out->devices || !out->replicas) {
        moira_exec_binding_free(out);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    }
    moira_status_t status =
        bind_targets(topology, plan, model, plan_path ? plan_path : "the plan", out);
    if (status) moira_exec_binding_free(out);
    return status;
}
