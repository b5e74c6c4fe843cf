/* `moira run`'s host-memory check, before any weight is read (runtime/cli/run.h). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "placement/reserve.h"
#include "runtime/cli/run.h"

/* MemAvailable from /proc/meminfo (what the kernel can give without swapping), else the free
 * pages sysconf reports. */
static double available_host_bytes(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kib = 0;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
    if (f) fclose(f);
    if (kib > 0) return (double)kib * 1024.0;
    return (double)sysconf(_SC_AVPHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
}

/* Whether a device keeps its buffers in host memory: the CPU ones (cpu:0, PoCL's CPU device)
 * and emulated ones. */
static bool in_host_memory(const moira_device_t *device) {
    const moira_device_info_t *info = moira_device_info(device);
    return info->kind == MOIRA_DEVICE_KIND_CPU || info->emulated;
}

/* A home device of its own memory (a GPU) must hold the home's weights and latent caches. */
static moira_status_t check_home_device(const run_placement_t *p, const moira_model_config_t *model,
                                        double caches) {
    const moira_device_info_t *info = moira_device_info(p->home);
    double weights = moira_model_home_bytes(model), need = weights + caches;
    if (in_host_memory(p->home) || !info->memory_bytes || need <= (double)info->memory_bytes)
        return MOIRA_OK_STATUS;
    return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                             "the home %s needs %.2f GiB (%.2f GiB of %s weights, %.2f GiB of "
                             "latent caches) but has %.2f GiB; use fewer sequences or a shorter "
                             "context (--ctx), or another home",
                             info->name, need / 1073741824.0, weights / 1073741824.0, model->name,
                             caches / 1073741824.0, (double)info->memory_bytes / 1073741824.0);
}

moira_status_t run_check_host_memory(const run_placement_t *p, const moira_model_config_t *model,
                                     double home_cache_bytes) {
    MOIRA_RETURN_IF_ERROR(check_home_device(p, model, home_cache_bytes));
    double experts = 0,
           home = in_host_memory(p->home) ? moira_model_home_bytes(model) + home_cache_bytes : 0;
    for (int t = 0; t < p->binding.n_targets; t++)
        if (p->binding.devices[t] && in_host_memory(p->binding.devices[t]))
            experts += (double)p->binding.replicas[t] * (double)p->plan.expert_bytes;
    double available = available_host_bytes();
    if (available <= 0 || experts + home <= available) return MOIRA_OK_STATUS;
    return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                             "the plan needs %.2f GiB of host memory (%.2f GiB of experts on "
                             "devices that keep them there, %.2f GiB of %s weights and latent "
                             "caches besides them on %s), but %.2f GiB is available; nothing was "
                             "loaded",
                             (experts + home) / 1073741824.0, experts / 1073741824.0,
                             home / 1073741824.0, model->name, moira_device_info(p->home)->name,
                             available / 1073741824.0);
}
