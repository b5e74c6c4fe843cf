/* Topology files written back (topology.h): what `moira calibrate` leaves behind, the machine as
 * found plus the figures measured on it. */
#include "placement/topology.h"
#include "placement/tree_writer.h"

#define GIB 1073741824.0

/* The dtype keys a topology file's peak tables take, in the order they are written. */
static const char *const peak_keys[] = {"f32", "f16", "bf16", "fp8"};
static const moira_dtype_t peak_dtypes[] = {MOIRA_DTYPE_F32, MOIRA_DTYPE_F16, MOIRA_DTYPE_BF16,
                                            MOIRA_DTYPE_F8_E4M3};

static bool any_positive(const double *peaks) {
    for (int i = 0; i < 4; i++)
        if (peaks[peak_dtypes[i]] > 0) return true;
    return false;
}

/* `{f32: .., bf16: ..}` with the positive entries only. */
static void write_peaks(moira_tree_writer_t *w, const char *key, const double *peaks) {
    moira_tree_key(w, key);
    moira_tree_map(w, true);
    for (int i = 0; i < 4; i++) {
        if (!(peaks[peak_dtypes[i]] > 0)) continue;
        moira_tree_key(w, peak_keys[i]);
        moira_tree_double(w, peaks[peak_dtypes[i]]);
    }
    moira_tree_close(w, true);
}

/* A key and a figure, left out when it is 0 (not measured). */
static void write_figure(moira_tree_writer_t *w, const char *key, double value) {
    if (!(value > 0)) return;
    moira_tree_key(w, key);
    moira_tree_double(w, value);
}

/* `measured: {...}` when calibration gave the target anything; nothing otherwise. */
static void write_measured(moira_tree_writer_t *w, const moira_measured_t *m) {
    bool any = m->bandwidth_gbs > 0 || m->launch_us > 0 || m->link_gbs > 0 ||
               m->home_launch_us > 0 || m->home_tflops > 0 || m->home_attention_tflops > 0 ||
               any_positive(m->tflops);
    if (!any) return;
    moira_tree_key(w, "measured");
    moira_tree_map(w, true);
    write_figure(w, "bandwidth_gbs", m->bandwidth_gbs);
    if (any_positive(m->tflops)) write_peaks(w, "tflops", m->tflops);
    moira_tree_key(w, "launch_us"); /* 0 is a measurement too */
    moira_tree_double(w, m->launch_us);
    write_figure(w, "link_gbs", m->link_gbs);
    if (m->home_tflops > 0) {
        moira_tree_key(w, "home_launch_us");
        moira_tree_double(w, m->home_launch_us);
    }
    write_figure(w, "home_tflops", m->home_tflops);
    write_figure(w, "home_attention_tflops", m->home_attention_tflops);
    moira_tree_close(w, true);
}

/* Memory, bandwidth and peaks as the topology specified them (measured figures go apart). */
static void write_specified(moira_tree_writer_t *w, const moira_target_t *t) {
    moira_tree_key(w, "memory_gib");
    moira_tree_double(w, (double)t->memory_bytes / GIB);
    moira_tree_key(w, "bandwidth_gbs");
    moira_tree_double(w, t->bandwidth_gbs);
    write_peaks(w, "peak_tflops", t->peak_tflops);
}

/* One NUMA node as `numa_nodes:` lists it. */
static void write_numa(moira_tree_writer_t *w, const moira_target_t *t) {
    moira_tree_map(w, true);
    moira_tree_key(w, "id");
    moira_tree_int(w, t->numa);
    moira_tree_key(w, "cores");
    moira_tree_int(w, t->cores);
    write_specified(w, t);
    write_measured(w, &t->measured);
    moira_tree_close(w, true);
}

/* One GPU or NPU as `devices:` lists it. */
static void write_device(moira_tree_writer_t *w, const moira_target_t *t) {
    moira_tree_map(w, true);
    moira_tree_key(w, "name");
    moira_tree_string(w, t->name);
    moira_tree_key(w, "kind");
    moira_tree_string(w, moira_target_kind_name(t->kind));
    moira_tree_key(w, "backend");
    moira_tree_string(w, t->backend);
    if (t->select[0]) {
        moira_tree_key(w, "select");
        moira_tree_string(w, t->select);
    }
    if (t->pci_bus_id[0]) {
        moira_tree_key(w, "pci_bus_id");
        moira_tree_string(w, t->pci_bus_id);
    }
    write_specified(w, t);
    if (t->numa >= 0) {
        moira_tree_key(w, "numa");
        moira_tree_int(w, t->numa);
    }
    moira_tree_key(w, "link_gbs");
    moira_tree_double(w, t->link_gbs);
    write_measured(w, &t->measured);
    moira_tree_close(w, true);
}

/* A host: its NUMA nodes, then its devices (the loader's order). */
static void write_host(moira_tree_writer_t *w, const moira_topology_t *topology, int host) {
    moira_tree_map(w, false);
    moira_tree_key(w, "name");
    moira_tree_string(w, topology->hosts[host].name);
    for (int pass = 0; pass < 2; pass++) {
        bool numa = pass == 0, opened = false;
        for (int i = 0; i < topology->n_targets; i++) {
            const moira_target_t *t = &topology->targets[i];
            if (t->host != host || (t->kind == MOIRA_TARGET_NUMA) != numa) continue;
            if (!opened) {
                moira_tree_key(w, numa ? "numa_nodes" : "devices");
                moira_tree_list(w, false);
                opened = true;
            }
            if (numa)
                write_numa(w, t);
            else
                write_device(w, t);
        }
        if (opened) moira_tree_close(w, false);
    }
    moira_tree_close(w, true);
}

bool moira_topology_write_stream(const moira_topology_t *topology, FILE *out, bool json) {
    moira_tree_writer_t w;
    moira_tree_begin(&w, out, json);
    moira_tree_map(&w, false);
    moira_tree_key(&w, "name");
    moira_tree_string(&w, topology->name);
    moira_tree_key(&w, "hosts");
    moira_tree_list(&w, false);
    for (int h = 0; h < topology->n_hosts; h++)
        write_host(&w, topology, h);
    moira_tree_close(&w, false);
    if (topology->n_links > 0) {
        moira_tree_key(&w, "links");
        moira_tree_list(&w, false);
        for (int i = 0; i < topology->n_links; i++) {
            const moira_link_t *l = &topology->links[i];
            moira_tree_map(&w, true);
            moira_tree_key(&w, "between");
            moira_tree_list(&w, true);
            moira_tree_string(&w, topology->targets[l->a].name);
            moira_tree_string(&w, topology->targets[l->b].name);
            moira_tree_close(&w, false);
            moira_tree_key(&w, "bandwidth_gbs");
            moira_tree_double(&w, l->bandwidth_gbs);
            moira_tree_close(&w, true);
        }
        moira_tree_close(&w, false);
    }
    if (topology->network_gbs > 0) {
        moira_tree_key(&w, "network");
        moira_tree_map(&w, true);
        moira_tree_key(&w, "bandwidth_gbs");
        moira_tree_double(&w, topology->network_gbs);
        moira_tree_key(&w, "latency_us");
        moira_tree_double(&w, topology->network_latency_us);
        moira_tree_close(&w, true);
    }
    moira_tree_close(&w, true);
    return moira_tree_end(&w);
}
