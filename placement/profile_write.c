/* Writing expert load profiles (DESIGN.md §5): the other half of the re-planning loop, so a
 * load observed by `moira run` can be planned for with `moira plan --profile`. */
#include <stdio.h>

#include "placement/plan.h"
#include "placement/profile.h"
#include "placement/tree_writer.h"

typedef struct profile_write_ctx {
    const moira_profile_t *profile;
    const char *model_name;
} profile_write_ctx_t;

/* One `{layer, load}` line per profiled layer, in the file's flow style so a layer of hundreds
 * of experts stays one readable line; then the devices' measured speeds when there are any. */
static bool write_profile_to(FILE *out, void *context) {
    const profile_write_ctx_t *ctx = context;
    const moira_profile_t *p = ctx->profile;
    moira_tree_writer_t w;
    moira_tree_begin(&w, out, false);
    moira_tree_map(&w, false);
    moira_tree_key(&w, "moira_profile");
    moira_tree_int(&w, 1);
    if (ctx->model_name) {
        moira_tree_key(&w, "model");
        moira_tree_string(&w, ctx->model_name);
    }
    moira_tree_key(&w, "experts");
    moira_tree_int(&w, p->experts);
    moira_tree_key(&w, "layers");
    moira_tree_list(&w, false);
    for (int l = 0; l < p->n_layers; l++) {
        moira_tree_map(&w, true);
        moira_tree_key(&w, "layer");
        moira_tree_int(&w, p->layers[l]);
        moira_tree_key(&w, "load");
        moira_tree_list(&w, true);
        for (int64_t e = 0; e < p->experts; e++)
            moira_tree_double(&w, p->load[(size_t)l * (size_t)p->experts + (size_t)e]);
        moira_tree_close(&w, false);
        moira_tree_close(&w, true);
    }
    moira_tree_close(&w, false);
    if (p->n_speeds > 0) {
        moira_tree_key(&w, "speeds");
        moira_tree_list(&w, false);
        for (int i = 0; i < p->n_speeds; i++) {
            moira_tree_map(&w, true);
            moira_tree_key(&w, "device");
            moira_tree_string(&w, p->speeds[i].device);
            moira_tree_key(&w, "busy_us");
            moira_tree_double(&w, p->speeds[i].busy_us);
            moira_tree_key(&w, "predicted_us");
            moira_tree_double(&w, p->speeds[i].predicted_us);
            moira_tree_close(&w, true);
        }
        moira_tree_close(&w, false);
    }
    moira_tree_close(&w, true);
    return moira_tree_end(&w);
}

/* Whole or not at all, like every output file (DESIGN.md §6). */
moira_status_t moira_profile_write(const moira_profile_t *profile, const char *model_name,
                                   const char *path) {
    profile_write_ctx_t ctx = {profile, model_name};
    return moira_write_file_atomically(path, write_profile_to, &ctx);
}

/* For a caller that commits this output together with others (moira run -o --record-profile). */
moira_status_t moira_profile_write_stream(const moira_profile_t *profile, const char *model_name,
                                          const char *path, FILE *out) {
    profile_write_ctx_t ctx = {profile, model_name};
    if (write_profile_to(out, &ctx)) return MOIRA_OK_STATUS;
    return moira_status_at(MOIRA_CODE_IO, path, 0, 0, "cannot write");
}
