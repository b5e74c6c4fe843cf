/* Plan files: YAML or JSON with one structure (DESIGN.md §5), and their validation. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/plan.h"
#include "placement/tree_writer.h"
#include "placement/yaml_doc.h"

/* What a plan may fill on a target: its memory less the reserve the caller set
 * (moira_topology_reserve: workspaces, the home's weights, --reserve). */
static uint64_t usable_bytes(const moira_target_t *target) {
    return target->memory_bytes > target->reserve_bytes
               ? target->memory_bytes - target->reserve_bytes
               : 0;
}

#define MAX_PLAN_EXPERTS (1 << 20)

/* The plan's device list: every target with its host, where its host buffers go and how much of
 * its memory the plan uses, so a reader sees capacity next to placement. */
static void write_devices(moira_tree_writer_t *w, const moira_plan_t *plan,
                          const moira_topology_t *topology) {
    moira_tree_key(w, "devices");
    moira_tree_list(w, false);
    for (int t = 0; t < topology->n_targets; t++) {
        const moira_target_t *target = &topology->targets[t];
        moira_tree_map(w, true);
        moira_tree_key(w, "name");
        moira_tree_string(w, target->name);
        moira_tree_key(w, "host");
        moira_tree_string(w, topology->hosts[target->host].name);
        moira_tree_key(w, "kind");
        moira_tree_string(w, moira_target_kind_name(target->kind));
        moira_tree_key(w, "backend");
        moira_tree_string(w, target->backend);
        moira_tree_key(w, "host_numa"); /* where this target's host buffers go */
        moira_tree_int(w, target->numa);
        moira_tree_key(w, "memory_bytes");
        moira_tree_int(w, (int64_t)target->memory_bytes);
        moira_tree_key(w, "used_bytes");
        moira_tree_int(w, moira_plan_target_used_bytes(plan, t));
        moira_tree_close(w, true);
    }
    moira_tree_close(w, false);
}

/* One layer: each target's replicas (experts and the tokens each receives) and the layer's
 * predicted cost. Replicas of one target are contiguous in memory. */
static void write_layer(moira_tree_writer_t *w, const moira_plan_layer_t *layer,
                        const moira_topology_t *topology) {
    moira_tree_map(w, false);
    moira_tree_key(w, "layer");
    moira_tree_int(w, layer->layer);
    moira_tree_key(w, "devices");
    moira_tree_map(w, false);
    for (int r = 0; r < layer->n_replicas;) {
        int t = layer->replica_target[r], end = r;
        while (end < layer->n_replicas && layer->replica_target[end] == t)
            end++;
        moira_tree_key(w, topology->targets[t].name);
        moira_tree_map(w, true);
        moira_tree_key(w, "experts");
        moira_tree_list(w, true);
        for (int i = r; i < end; i++)
            moira_tree_int(w, layer->replica_expert[i]);
        moira_tree_close(w, false);
        moira_tree_key(w, "load");
        moira_tree_list(w, true);
        for (int i = r; i < end; i++)
            moira_tree_double(w, layer->replica_load[i]);
        moira_tree_close(w, false);
        moira_tree_close(w, true);
        r = end;
    }
    moira_tree_close(w, true);
    moira_tree_key(w, "max_over_mean");
    moira_tree_double(w, layer->cost.max_over_mean);
    moira_tree_key(w, "predicted_us");
    moira_tree_double(w, layer->cost.predicted_us);
    moira_tree_key(w, "link_bytes");
    moira_tree_double(w, layer->cost.link_bytes);
    moira_tree_key(w, "network_bytes");
    moira_tree_double(w, layer->cost.network_bytes);
    moira_tree_close(w, true);
}

moira_status_t moira_plan_write_stream(const moira_plan_t *plan, const moira_topology_t *topology,
                                       FILE *out, bool json) {
    moira_tree_writer_t w;
    moira_tree_begin(&w, out, json);
    moira_tree_map(&w, false);
    moira_tree_key(&w, "moira_plan");
    moira_tree_int(&w, 1);
    moira_tree_key(&w, "topology");
    moira_tree_string(&w, plan->topology);
    moira_tree_key(&w, "model");
    moira_tree_string(&w, plan->model);
    if (plan->home[0]) {
        moira_tree_key(&w, "home");
        moira_tree_string(&w, plan->home);
    }
    moira_tree_key(&w, "experts");
    moira_tree_int(&w, plan->experts);
    moira_tree_key(&w, "expert_bytes");
    moira_tree_int(&w, plan->expert_bytes);
    moira_tree_key(&w, "slots");
    moira_tree_int(&w, plan->slots);
    moira_tree_key(&w, "redundant");
    moira_tree_int(&w, plan->redundant);
    write_devices(&w, plan, topology);
    moira_tree_key(&w, "layers");
    moira_tree_list(&w, false);
    for (int l = 0; l < plan->n_layers; l++)
        write_layer(&w, &plan->layers[l], topology);
    moira_tree_close(&w, false);
    moira_plan_summary_t summary;
    moira_plan_summarise(plan, &summary);
    moira_tree_key(&w, "summary");
    moira_tree_map(&w, true);
    moira_tree_key(&w, "max_over_mean");
    moira_tree_double(&w, summary.max_over_mean);
    moira_tree_key(&w, "predicted_us_per_layer");
    moira_tree_double(&w, summary.predicted_us_per_layer);
    moira_tree_key(&w, "link_bytes_per_token");
    moira_tree_double(&w, summary.link_bytes_per_token);
    moira_tree_key(&w, "network_bytes_per_token");
    moira_tree_double(&w, summary.network_bytes_per_token);
    moira_tree_close(&w, true);
    moira_tree_close(&w, true);
    if (!moira_tree_end(&w)) return moira_status_make(MOIRA_CODE_IO, "cannot write the plan");
    return MOIRA_OK_STATUS;
}

typedef struct write_ctx {
    const moira_plan_t *plan;
    const moira_topology_t *topology;
    bool json;
} write_ctx_t;

/* Adapts moira_plan_write_stream to the atomic file writer's callback. */
static bool write_plan_to(FILE *out, void *context) {
    write_ctx_t *ctx = context;
    moira_status_t status = moira_plan_write_stream(ctx->plan, ctx->topology, out, ctx->json);
    moira_status_free(status);
    return status == MOIRA_OK_STATUS;
}

moira_status_t moira_plan_write(const moira_plan_t *plan, const moira_topology_t *topology,
                                const char *path, bool json) {
    write_ctx_t ctx = {plan, topology, json};
    return moira_write_file_atomically(path, write_plan_to, &ctx);
}

/* Checks common to planned and loaded plans; `path` only names the plan in messages. */
moira_status_t moira_plan_validate(const moira_plan_t *plan, const moira_topology_t *topology,
                                   const char *path) {
    const char *name = path ? path : "plan";
    if (strcmp(plan->topology, topology->name))
        return moira_status_make(MOIRA_CODE_INVALID_INPUT, "%s is for topology \"%s\", not \"%s\"",
                                 name, plan->topology, topology->name);
    unsigned char *covered = calloc((size_t)plan->experts + 1, 1);
    int *per_target = calloc((size_t)topology->n_targets + 1, sizeof(int));
    moira_status_t status = MOIRA_OK_STATUS;
    if (!covered || !per_target)
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    for (int l = 0; !status && l < plan->n_layers; l++) {
        const moira_plan_layer_t *layer = &plan->layers[l];
        memset(covered, 0, (size_t)plan->experts);
        memset(per_target, 0, (size_t)topology->n_targets * sizeof(int));
        for (int r = 0; !status && r < layer->n_replicas; r++) {
            int t = layer->replica_target[r];
            int32_t e = layer->replica_expert[r];
            if (t < 0 || t >= topology->n_targets || e < 0 || e >= plan->experts)
                status = moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                           "%s: layer %lld has a replica out of range", name,
                                           (long long)layer->layer);
            else {
                covered[e] = 1;
                if (++per_target[t] > plan->slots && plan->slots > 0)
                    status = moira_status_make(
                        MOIRA_CODE_INVALID_INPUT,
                        "%s: layer %lld puts %d replicas on %s, more than --slots %lld", name,
                        (long long)layer->layer, per_target[t], topology->targets[t].name,
                        (long long)plan->slots);
            }
        }
        for (int64_t e = 0; !status && e < plan->experts; e++)
            if (!covered[e])
                status = moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                           "%s: layer %lld has no replica of expert %lld", name,
                                           (long long)layer->layer, (long long)e);
    }
    for (int t = 0; !status && t < topology->n_targets; t++) {
        int64_t used = moira_plan_target_used_bytes(plan, t);
        const moira_target_t *target = &topology->targets[t];
        if ((uint64_t)used > usable_bytes(target))
            status = moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                       "%s: %s holds %lld bytes of experts but has %llu bytes of "
                                       "memory (%llu of them kept in reserve)",
                                       name, target->name, (long long)used,
                                       (unsigned long long)target->memory_bytes,
                                       (unsigned long long)target->reserve_bytes);
    }
    free(covered);
    free(per_target);
    return status;
}

moira_status_t moira_plan_check_model(const moira_plan_t *plan, const moira_model_config_t *model,
                                      const char *path) {
    const char *name = path ? path : "plan";
    int64_t expert_bytes =
        moira_model_config_expert_bytes(model, moira_model_config_expert_dtype(model));
    if (plan->experts != model->n_routed_experts || plan->expert_bytes != expert_bytes)
        return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                 "%s places %lld experts of %lld bytes; model \"%s\" has %lld of "
                                 "%lld bytes",
                                 name, (long long)plan->experts, (long long)plan->expert_bytes,
                                 model->name, (long long)model->n_routed_experts,
                                 (long long)expert_bytes);
    int64_t moe_layers = 0;
    for (int l = 0; l < plan->n_layers; l++)
        if (!moira_model_config_is_moe_layer(model, plan->layers[l].layer))
            return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                     "%s: layer %lld is not an MoE layer of model \"%s\"", name,
                                     (long long)plan->layers[l].layer, model->name);
        else
            moe_layers++;
    if (moe_layers != moira_model_config_moe_layer_count(model))
        return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                 "%s places %lld MoE layers; model \"%s\" has %lld", name,
                                 (long long)moe_layers, model->name,
                                 (long long)moira_model_config_moe_layer_count(model));
    return MOIRA_OK_STATUS;
}

/* ---- Loading ---------------------------------------------------------------------------- */

typedef struct load_ctx {
    moira_yaml_doc_t *doc;
    const moira_topology_t *topology;
    const moira_model_config_t *model; /* fills what a hand-written plan leaves out; may be NULL */
    moira_plan_t *plan;
    int64_t *used_bytes; /* per target, accumulated while reading layers */
    /* Stamps that make the duplicate checks one look-up each (owned, freed by finish_load):
     * expert_stamp[e] is the number of the last device entry that listed e, target_stamp[t]
     * 1 + the last layer that named t; layer_seen is an open-addressing set of layer indices
     * (layer_seen_cap slots, -1 empty) read so far. */
    int *expert_stamp; /* per expert */
    int *target_stamp; /* per target */
    int entry;         /* device entries read so far */
    int64_t *layer_seen;
    size_t layer_seen_cap;
} load_ctx_t;

/* Adds a layer index to the set; false when it was there. The capacity is a power of two over
 * twice the layers the file lists, so probing ends. */
static bool layer_seen_add(load_ctx_t *ctx, int64_t layer) {
    size_t mask = ctx->layer_seen_cap - 1;
    size_t i = (size_t)((uint64_t)layer * 0x9E3779B97F4A7C15ull >> 32) & mask;
    while (ctx->layer_seen[i] >= 0) {
        if (ctx->layer_seen[i] == layer) return false;
        i = (i + 1) & mask;
    }
    ctx->layer_seen[i] = layer;
    return true;
}

/* Reads `key` when present; hand-written plans may leave predictions out. */
static moira_status_t optional_number(load_ctx_t *ctx, const yaml_node_t *map, const char *key,
                                      double *out) {
    yaml_node_t *v = moira_yaml_get(ctx->doc, map, key);
    if (!v) return MOIRA_OK_STATUS;
    return moira_yaml_number(ctx->doc, v, key, 0, out);
}

/* The top-level devices list is informational, but its names and hosts must match the topology
 * so that a plan for another machine is caught early. */
static moira_status_t load_device_list(load_ctx_t *ctx, const yaml_node_t *devices) {
    moira_yaml_doc_t *doc = ctx->doc;
    static const char *const keys[] = {"name",      "host",         "kind",       "backend",
                                       "host_numa", "memory_bytes", "used_bytes", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, devices, "devices"));
    for (int i = 0; i < moira_yaml_length(devices); i++) {
        yaml_node_t *d = moira_yaml_item(doc, devices, i), *v = NULL;
        MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, d, "a device"));
        MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, d, keys));
        char name[MOIRA_TARGET_NAME_MAX];
        MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, d, "name", "a device", &v));
        MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "name", name, sizeof(name)));
        int t = moira_topology_find_target(ctx->topology, name);
        if (t < 0)
            return moira_yaml_fail(doc, v, "unknown device \"%s\" (not in topology \"%s\")", name,
                                   ctx->topology->name);
        if ((v = moira_yaml_get(doc, d, "host"))) {
            char host[MOIRA_TOPOLOGY_NAME_MAX];
            MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "host", host, sizeof(host)));
            const char *want = ctx->topology->hosts[ctx->topology->targets[t].host].name;
            if (strcmp(host, want))
                return moira_yaml_fail(doc, v, "device \"%s\" is on host \"%s\", not \"%s\"", name,
                                       want, host);
        }
    }
    return MOIRA_OK_STATUS;
}

/* Grows a layer's replica arrays to hold `n` more. */
static moira_status_t reserve_replicas(moira_plan_layer_t *layer, int more) {
    int n = layer->n_replicas + more;
    int *targets = realloc(layer->replica_target, (size_t)n * sizeof(int));
    if (targets) layer->replica_target = targets;
    int32_t *experts = realloc(layer->replica_expert, (size_t)n * sizeof(int32_t));
    if (experts) layer->replica_expert = experts;
    double *loads = realloc(layer->replica_load, (size_t)n * sizeof(double));
    if (loads) layer->replica_load = loads;
    if (!targets || !experts || !loads)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "plan: out of memory");
    return MOIRA_OK_STATUS;
}

/* One `DEVICE: {experts, load}` entry: the device must exist, its replicas must fit its slots
 * and (summed over the layers read so far) its memory, and no expert may appear twice on it. */
static moira_status_t load_layer_device(load_ctx_t *ctx, moira_plan_layer_t *layer,
                                        const yaml_node_t *key, const yaml_node_t *value) {
    moira_yaml_doc_t *doc = ctx->doc;
    const moira_plan_t *plan = ctx->plan;
    char name[MOIRA_TARGET_NAME_MAX];
    MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, key, "a device name", name, sizeof(name)));
    int t = moira_topology_find_target(ctx->topology, name);
    if (t < 0)
        return moira_yaml_fail(doc, key, "unknown device \"%s\" (not in topology \"%s\")", name,
                               ctx->topology->name);
    int this_layer = ctx->plan->n_layers; /* 1 + the index of the layer being read */
    if (ctx->target_stamp[t] == this_layer)
        return moira_yaml_fail(doc, key, "device \"%s\" given twice in layer %lld", name,
                               (long long)layer->layer);
    ctx->target_stamp[t] = this_layer;
    static const char *const keys[] = {"experts", "load", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, value, "a layer's device entry"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, value, keys));
    yaml_node_t *experts = NULL, *load = moira_yaml_get(doc, value, "load");
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, value, "experts", "a device entry", &experts));
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, experts, "experts"));
    int n = moira_yaml_length(experts);
    if (load) {
        MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, load, "load"));
        if (moira_yaml_length(load) != n)
            return moira_yaml_fail(doc, load,
                                   "load has %d entries but experts has %d (one per "
                                   "replica)",
                                   moira_yaml_length(load), n);
    }
    if (plan->slots > 0 && n > plan->slots)
        return moira_yaml_fail(doc, experts, "%d replicas on \"%s\" exceed slots %lld", n, name,
                               (long long)plan->slots);
    /* Compared as counts so that no product can overflow: used_bytes never exceeds memory. */
    const moira_target_t *target = &ctx->topology->targets[t];
    uint64_t usable = usable_bytes(target), used = (uint64_t)ctx->used_bytes[t];
    uint64_t room = usable > used ? (usable - used) / (uint64_t)plan->expert_bytes : 0;
    if ((uint64_t)n > room)
        return moira_yaml_fail(doc, experts,
                               "\"%s\" would hold %lld more experts by layer %lld, but its memory "
                               "(%llu bytes, %llu kept in reserve, %lld already used) has room "
                               "for %llu",
                               name, (long long)n, (long long)layer->layer,
                               (unsigned long long)target->memory_bytes,
                               (unsigned long long)target->reserve_bytes,
                               (long long)ctx->used_bytes[t], (unsigned long long)room);
    ctx->used_bytes[t] += (int64_t)n * plan->expert_bytes;
    MOIRA_RETURN_IF_ERROR(reserve_replicas(layer, n));
    int entry = ++ctx->entry;
    for (int i = 0; i < n; i++) {
        int64_t e = 0;
        double l = 0;
        yaml_node_t *item = moira_yaml_item(doc, experts, i);
        MOIRA_RETURN_IF_ERROR(moira_yaml_int(doc, item, "an expert", 0, plan->experts - 1, &e));
        if (ctx->expert_stamp[e] == entry)
            return moira_yaml_fail(doc, item, "expert %lld appears twice on \"%s\"", (long long)e,
                                   name);
        ctx->expert_stamp[e] = entry;
        if (load)
            MOIRA_RETURN_IF_ERROR(moira_yaml_number_range(doc, moira_yaml_item(doc, load, i),
                                                          "a load", 0, MOIRA_MAX_TOKEN_COUNT, &l));
        int r = layer->n_replicas++;
        layer->replica_target[r] = t;
        layer->replica_expert[r] = (int32_t)e;
        layer->replica_load[r] = l;
    }
    return MOIRA_OK_STATUS;
}

/* One layer: its index is unique, and every logical expert has at least one replica. */
static moira_status_t load_layer(load_ctx_t *ctx, const yaml_node_t *node) {
    moira_yaml_doc_t *doc = ctx->doc;
    moira_plan_t *plan = ctx->plan;
    static const char *const keys[] = {
        "layer", "devices", "max_over_mean", "predicted_us", "link_bytes", "network_bytes", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, node, "a plan layer"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, node, keys));
    moira_plan_layer_t *layer = &plan->layers[plan->n_layers];
    memset(layer, 0, sizeof(*layer));
    plan->n_layers++;
    yaml_node_t *v = NULL, *devices = NULL;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "layer", "a plan layer", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_int(doc, v, "layer", 0, INT32_MAX, &layer->layer));
    if (!layer_seen_add(ctx, layer->layer))
        return moira_yaml_fail(doc, v, "layer %lld given twice", (long long)layer->layer);
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "devices", "a plan layer", &devices));
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, devices, "a layer's devices"));
    for (yaml_node_pair_t *pair = devices->data.mapping.pairs.start;
         pair < devices->data.mapping.pairs.top; pair++)
        MOIRA_RETURN_IF_ERROR(
            load_layer_device(ctx, layer, yaml_document_get_node(&doc->document, pair->key),
                              yaml_document_get_node(&doc->document, pair->value)));
    unsigned char *covered = calloc((size_t)plan->experts, 1);
    if (!covered) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "plan: out of memory");
    for (int r = 0; r < layer->n_replicas; r++)
        covered[layer->replica_expert[r]] = 1;
    int64_t missing = -1;
    for (int64_t e = 0; e < plan->experts && missing < 0; e++)
        if (!covered[e]) missing = e;
    free(covered);
    if (missing >= 0)
        return moira_yaml_fail(doc, devices,
                               "layer %lld has no replica of expert %lld (every "
                               "expert needs at least one)",
                               (long long)layer->layer, (long long)missing);
    MOIRA_RETURN_IF_ERROR(optional_number(ctx, node, "max_over_mean", &layer->cost.max_over_mean));
    MOIRA_RETURN_IF_ERROR(optional_number(ctx, node, "predicted_us", &layer->cost.predicted_us));
    MOIRA_RETURN_IF_ERROR(optional_number(ctx, node, "link_bytes", &layer->cost.link_bytes));
    MOIRA_RETURN_IF_ERROR(optional_number(ctx, node, "network_bytes", &layer->cost.network_bytes));
    return MOIRA_OK_STATUS;
}

/* The expert count and size: from the file when it gives them, else from the model (DESIGN §5:
 * what the model determines is not required in a hand-written plan). */
static moira_status_t model_figures(load_ctx_t *ctx, const yaml_node_t *root) {
    moira_yaml_doc_t *doc = ctx->doc;
    moira_plan_t *plan = ctx->plan;
    const moira_model_config_t *model = ctx->model;
    yaml_node_t *v = moira_yaml_get(doc, root, "experts");
    if (v)
        MOIRA_RETURN_IF_ERROR(
            moira_yaml_int(doc, v, "experts", 1, MAX_PLAN_EXPERTS, &plan->experts));
    else if (model)
        plan->experts = model->n_routed_experts;
    if ((v = moira_yaml_get(doc, root, "expert_bytes")))
        MOIRA_RETURN_IF_ERROR(
            moira_yaml_int(doc, v, "expert_bytes", 1, INT64_MAX / 4096, &plan->expert_bytes));
    else if (model)
        plan->expert_bytes =
            moira_model_config_expert_bytes(model, moira_model_config_expert_dtype(model));
    if (plan->experts > 0 && plan->expert_bytes > 0) return MOIRA_OK_STATUS;
    return moira_yaml_fail(doc, root,
                           "the plan gives no %s and no model was given to take it from "
                           "(give --model)",
                           plan->experts > 0 ? "expert_bytes" : "experts");
}

/* The whole document: header keys, then devices and layers, each located on error. */
static moira_status_t load_plan(load_ctx_t *ctx) {
    moira_yaml_doc_t *doc = ctx->doc;
    moira_plan_t *plan = ctx->plan;
    yaml_node_t *root = moira_yaml_root(doc), *v = NULL, *layers = NULL;
    static const char *const keys[] = {"moira_plan", "topology",     "model",   "home",
                                       "experts",    "expert_bytes", "slots",   "redundant",
                                       "devices",    "layers",       "summary", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, root, "a plan"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, root, keys));
    int64_t version = 0;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, root, "moira_plan", "a plan", &v));
    MOIRA_RETURN_IF_ERROR(
        moira_yaml_int(doc, v, "moira_plan (the format version)", 1, 1, &version));
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, root, "topology", "a plan", &v));
    MOIRA_RETURN_IF_ERROR(
        moira_yaml_string(doc, v, "topology", plan->topology, sizeof(plan->topology)));
    if (strcmp(plan->topology, ctx->topology->name))
        return moira_yaml_fail(doc, v, "the plan is for topology \"%s\", not \"%s\"",
                               plan->topology, ctx->topology->name);
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, root, "model", "a plan", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "model", plan->model, sizeof(plan->model)));
    if ((v = moira_yaml_get(doc, root, "home"))) {
        MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "home", plan->home, sizeof(plan->home)));
        if (moira_topology_find_target(ctx->topology, plan->home) < 0)
            return moira_yaml_fail(doc, v, "home \"%s\" is not a device of topology \"%s\"",
                                   plan->home, ctx->topology->name);
    }
    MOIRA_RETURN_IF_ERROR(model_figures(ctx, root));
    if ((v = moira_yaml_get(doc, root, "slots")))
        MOIRA_RETURN_IF_ERROR(moira_yaml_int(doc, v, "slots", 0, MAX_PLAN_EXPERTS, &plan->slots));
    if ((v = moira_yaml_get(doc, root, "redundant")))
        MOIRA_RETURN_IF_ERROR(
            moira_yaml_int(doc, v, "redundant", 0, MAX_PLAN_EXPERTS, &plan->redundant));
    if ((v = moira_yaml_get(doc, root, "devices"))) MOIRA_RETURN_IF_ERROR(load_device_list(ctx, v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, root, "layers", "a plan", &layers));
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, layers, "layers"));
    /* No layers is the plan of a model without MoE layers; checking the plan against its model
     * (every MoE layer planned once) refuses it for any other model. */
    int n = moira_yaml_length(layers);
    plan->layers = calloc((size_t)(n > 0 ? n : 1), sizeof(moira_plan_layer_t));
    ctx->layer_seen_cap = 16;
    while (ctx->layer_seen_cap < 2 * (size_t)n)
        ctx->layer_seen_cap *= 2;
    ctx->layer_seen = malloc(ctx->layer_seen_cap * sizeof(int64_t));
    ctx->expert_stamp = calloc((size_t)plan->experts, sizeof(int));
    if (!plan->layers || !ctx->layer_seen || !ctx->expert_stamp)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "plan: out of memory");
    memset(ctx->layer_seen, 0xff, ctx->layer_seen_cap * sizeof(int64_t));
    for (int i = 0; i < n; i++)
        MOIRA_RETURN_IF_ERROR(load_layer(ctx, moira_yaml_item(doc, layers, i)));
    return MOIRA_OK_STATUS;
}

/* Shared tail of _load and _parse: read, then run the checks planned plans also pass. */
static moira_status_t finish_load(moira_yaml_doc_t *doc, const moira_topology_t *topology,
                                  const moira_model_config_t *model, moira_plan_t *out) {
    memset(out, 0, sizeof(*out));
    load_ctx_t ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.doc = doc;
    ctx.topology = topology;
    ctx.model = model;
    ctx.plan = out;
    ctx.used_bytes = calloc((size_t)topology->n_targets + 1, sizeof(int64_t));
    ctx.target_stamp = calloc((size_t)topology->n_targets + 1, sizeof(int));
    moira_status_t status =
        ctx.used_bytes && ctx.target_stamp
            ? load_plan(&ctx)
            : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "plan: out of memory");
    if (!status) status = moira_plan_validate(out, topology, doc->file);
    free(ctx.used_bytes);
    free(ctx.target_stamp);
    free(ctx.expert_stamp);
    free(ctx.layer_seen);
    moira_yaml_doc_free(doc);
    if (status) moira_plan_free(out);
    return status;
}

moira_status_t moira_plan_load_for_model(const char *path, const moira_topology_t *topology,
                                         const moira_model_config_t *model, moira_plan_t *out) {
    moira_yaml_doc_t doc;
    MOIRA_RETURN_IF_ERROR(moira_yaml_doc_load(path, "plan", &doc));
    return finish_load(&doc, topology, model, out);
}

moira_status_t moira_plan_parse_for_model(const char *text, size_t len, const char *display_name,
                                          const moira_topology_t *topology,
                                          const moira_model_config_t *model, moira_plan_t *out) {
    moira_yaml_doc_t doc;
    MOIRA_RETURN_IF_ERROR(moira_yaml_doc_parse(text, len, display_name, "plan", &doc));
    return finish_load(&doc, topology, model, out);
}

moira_status_t moira_plan_load(const char *path, const moira_topology_t *topology,
                               moira_plan_t *out) {
    return moira_plan_load_for_model(path, topology, NULL, out);
}

moira_status_t moira_plan_parse(const char *text, size_t len, const char *display_name,
                                const moira_topology_t *topology, moira_plan_t *out) {
    return moira_plan_parse_for_model(text, len, display_name, topology, NULL, out);
}
