/* The plan as a picture: targets as columns (grouped by host), MoE layers as rows, each cell
 * shaded by the tokens the target receives in that layer (its load) and labelled with its replica
 * count; a memory bar above each column and the layer's predicted time to the right of each row.
 * Hovering a cell shows its predicted time. The home device's column is framed and labelled
 * "home", and in each layer the device that sets the layer's time (the slowest target, or the
 * home when its share is longer) is outlined in red. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/home.h"
#include "placement/plan.h"

#define LEFT_MARGIN 56
#define TOP_MARGIN 72
#define NAME_BAND 96
#define MEMORY_BAND 48
#define RIGHT_BAND 150
#define BOTTOM_BAND 60

typedef struct svg_ctx {
    const moira_plan_t *plan;
    const moira_topology_t *topology;
    const moira_model_config_t *model;
    double *time_us; /* layers x targets */
    double *tokens;  /* layers x targets */
    int *replicas;   /* layers x targets */
    int *bottleneck; /* layers: the target that sets the layer's time */
    double *home_us; /* layers: the home's share (0 without a home) */
    int home;        /* target index of the plan's home; -1 none */
    double max_tokens;
    double max_layer_us;
    int cell_w, cell_h;
} svg_ctx_t;

/* Shading from white (idle) through light blue to dark navy (the plan's busiest cell). */
static void shade(double fraction, char *out, size_t size) {
    if (fraction < 0) fraction = 0;
    if (fraction > 1) fraction = 1;
    static const double stops[3][3] = {{247, 251, 255}, {107, 174, 214}, {8, 48, 107}};
    double x = fraction * 2;
    int i = x >= 1 ? 1 : 0;
    double f = x - i;
    int rgb[3];
    for (int c = 0; c < 3; c++)
        rgb[c] = (int)lround(stops[i][c] + (stops[i + 1][c] - stops[i][c]) * f);
    snprintf(out, size, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

/* XML text must not carry raw <, > or &; names come from user files. */
static void escaped(FILE *out, const char *text) {
    for (; *text; text++) {
        if (*text == '<')
            fputs("&lt;", out);
        else if (*text == '>')
            fputs("&gt;", out);
        else if (*text == '&')
            fputs("&amp;", out);
        else if (*text == '"')
            fputs("&quot;", out);
        else
            fputc(*text, out);
    }
}

/* Left edge of target t's column. */
static int column_x(const svg_ctx_t *ctx, int t) {
    return LEFT_MARGIN + t * ctx->cell_w;
}

/* Title and the plan's headline figures, so the picture stands on its own. */
static void draw_header(FILE *out, const svg_ctx_t *ctx) {
    moira_plan_summary_t summary;
    moira_plan_summarise(ctx->plan, &summary);
    fprintf(out, "<text x=\"%d\" y=\"22\" font-size=\"16\" font-weight=\"bold\">Moira plan: ",
            LEFT_MARGIN);
    escaped(out, ctx->plan->model);
    fputs(" on ", out);
    escaped(out, ctx->plan->topology);
    fputs("</text>\n", out);
    fprintf(out,
            "<text x=\"%d\" y=\"40\" font-size=\"12\" fill=\"#333\">%d MoE layers, %lld "
            "experts in %.1f replicas per layer (%lld redundant allowed); predicted %.1f us per "
            "layer</text>\n",
            LEFT_MARGIN, ctx->plan->n_layers, (long long)ctx->plan->experts,
            summary.replicas_per_layer, (long long)ctx->plan->redundant,
            summary.predicted_us_per_layer);
    fprintf(out,
            "<text x=\"%d\" y=\"56\" font-size=\"12\" fill=\"#333\">mean max/mean load "
            "%.3f; %.3g link bytes and %.3g network bytes per token</text>\n",
            LEFT_MARGIN, summary.max_over_mean, summary.link_bytes_per_token,
            summary.network_bytes_per_token);
    if (ctx->home < 0) return;
    fprintf(out, "<text x=\"%d\" y=\"70\" font-size=\"12\" fill=\"#6a3d9a\">home: ", LEFT_MARGIN);
    escaped(out, ctx->topology->targets[ctx->home].name);
    fputs(" (attention, router, shared experts, dense layers); red outline: the device that sets "
          "each layer's time</text>\n",
          out);
}

/* The home's column: framed in purple from its name to the last layer, labelled "home". */
static void draw_home(FILE *out, const svg_ctx_t *ctx) {
    if (ctx->home < 0) return;
    int x = column_x(ctx, ctx->home);
    int grid_bottom = TOP_MARGIN + NAME_BAND + MEMORY_BAND + ctx->plan->n_layers * ctx->cell_h;
    fprintf(out,
            "<rect class=\"home\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
            "stroke=\"#6a3d9a\" stroke-width=\"2\"><title>home: ",
            x, TOP_MARGIN + 14, ctx->cell_w, grid_bottom - TOP_MARGIN - 14);
    escaped(out, ctx->topology->targets[ctx->home].name);
    fputs("</title></rect>\n", out);
    fprintf(out,
            "<text x=\"%d\" y=\"%d\" font-size=\"9\" text-anchor=\"middle\" "
            "fill=\"#6a3d9a\">home</text>\n",
            x + ctx->cell_w / 2, TOP_MARGIN + NAME_BAND + MEMORY_BAND - 2);
}

/* Column heads: target names, memory bars (used / total), and host boundaries in red. */
static void draw_columns(FILE *out, const svg_ctx_t *ctx) {
    const moira_topology_t *topo = ctx->topology;
    int name_y = TOP_MARGIN + NAME_BAND - 4;
    int bar_top = TOP_MARGIN + NAME_BAND + 4, bar_h = MEMORY_BAND - 12;
    for (int t = 0; t < topo->n_targets; t++) {
        const moira_target_t *target = &topo->targets[t];
        int x = column_x(ctx, t), cx = x + ctx->cell_w / 2;
        fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"10\" transform=\"rotate(-50 %d %d)\">",
                cx, name_y, cx, name_y);
        escaped(out, target->name);
        fprintf(out, "</text>\n");
        double used = (double)moira_plan_target_used_bytes(ctx->plan, t);
        double fraction = target->memory_bytes ? used / (double)target->memory_bytes : 0;
        int filled = (int)lround(fraction * bar_h);
        int bw = ctx->cell_w - 4 > 4 ? ctx->cell_w - 4 : 4;
        fprintf(out,
                "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#eee\" "
                "stroke=\"#999\" stroke-width=\"0.5\"><title>",
                x + 2, bar_top, bw, bar_h);
        escaped(out, target->name);
        fprintf(out, ": %.1f of %.1f GiB</title></rect>\n", used / 1073741824.0,
                (double)target->memory_bytes / 1073741824.0);
        fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n", x + 2,
                bar_top + bar_h - filled, bw, filled,
                target->kind == MOIRA_TARGET_NUMA ? "#b8860b" : "#2e8b57");
        if (ctx->cell_w >= 20)
            fprintf(out,
                    "<text x=\"%d\" y=\"%d\" font-size=\"8\" text-anchor=\"middle\">"
                    "%.0f%%</text>\n",
                    cx, bar_top + bar_h / 2 + 3, fraction * 100);
    }
    /* Host separators and names. */
    int grid_top = TOP_MARGIN + NAME_BAND + MEMORY_BAND;
    int grid_bottom = grid_top + ctx->plan->n_layers * ctx->cell_h;
    for (int t = 0; t < topo->n_targets; t++) {
        if (t > 0 && topo->targets[t].host == topo->targets[t - 1].host) continue;
        int x = column_x(ctx, t);
        fprintf(out,
                "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#c00\" "
                "stroke-width=\"1.5\"/>\n",
                x, TOP_MARGIN, x, grid_bottom);
        fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"11\" fill=\"#c00\">", x + 3,
                TOP_MARGIN + 10);
        escaped(out, topo->hosts[topo->targets[t].host].name);
        fputs("</text>\n", out);
    }
}

/* The layer x target grid, plus each layer's predicted time as a bar on the right. */
static void draw_grid(FILE *out, const svg_ctx_t *ctx) {
    const moira_topology_t *topo = ctx->topology;
    int grid_top = TOP_MARGIN + NAME_BAND + MEMORY_BAND;
    int right = column_x(ctx, topo->n_targets);
    int label_every = ctx->cell_h >= 10 ? 1 : (10 + ctx->cell_h - 1) / ctx->cell_h;
    for (int l = 0; l < ctx->plan->n_layers; l++) {
        const moira_plan_layer_t *layer = &ctx->plan->layers[l];
        int y = grid_top + l * ctx->cell_h;
        if (l % label_every == 0)
            fprintf(out,
                    "<text x=\"%d\" y=\"%d\" font-size=\"9\" text-anchor=\"end\">L%lld</text>\n",
                    LEFT_MARGIN - 4, y + ctx->cell_h - 2, (long long)layer->layer);
        for (int t = 0; t < topo->n_targets; t++) {
            size_t i = (size_t)l * topo->n_targets + t;
            char color[16];
            double fraction = ctx->max_tokens > 0 ? ctx->tokens[i] / ctx->max_tokens : 0;
            shade(fraction, color, sizeof(color));
            fprintf(out,
                    "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" "
                    "stroke=\"#fff\" stroke-width=\"0.5\"><title>layer %lld, ",
                    column_x(ctx, t), y, ctx->cell_w, ctx->cell_h, color, (long long)layer->layer);
            escaped(out, topo->targets[t].name);
            fprintf(out, ": %d replicas, %.0f tokens, %.1f us</title></rect>\n", ctx->replicas[i],
                    ctx->tokens[i], ctx->time_us[i]);
            if (ctx->replicas[i] > 0 && ctx->cell_w >= 12 && ctx->cell_h >= 9) {
                bool dark = fraction > 0.55;
                fprintf(out,
                        "<text x=\"%d\" y=\"%d\" font-size=\"%d\" text-anchor=\"middle\" "
                        "fill=\"%s\">%d</text>\n",
                        column_x(ctx, t) + ctx->cell_w / 2, y + ctx->cell_h - 2,
                        ctx->cell_h >= 12 ? 9 : 7, dark ? "#fff" : "#222", ctx->replicas[i]);
            }
        }
        int b = ctx->bottleneck[l];
        if (b >= 0) {
            fprintf(out,
                    "<rect class=\"bottleneck\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
                    "fill=\"none\" stroke=\"#e31a1c\" stroke-width=\"2\"><title>layer %lld: ",
                    column_x(ctx, b) + 1, y + 1, ctx->cell_w - 2, ctx->cell_h - 2,
                    (long long)layer->layer);
            escaped(out, topo->targets[b].name);
            fprintf(out, " sets the layer's time (%s)</title></rect>\n",
                    b == ctx->home &&
                            ctx->home_us[l] >= ctx->time_us[(size_t)l * topo->n_targets + b]
                        ? "the home's share"
                        : "its experts");
        }
        double fraction = ctx->max_layer_us > 0 ? layer->cost.predicted_us / ctx->max_layer_us : 0;
        fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#d95f02\"/>\n",
                right + 8, y + 1, (int)lround(fraction * 80), ctx->cell_h - 2);
        if (l % label_every == 0)
            fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"9\">%.0f us</text>\n", right + 92,
                    y + ctx->cell_h - 2, layer->cost.predicted_us);
    }
}

/* What the shades and colours mean. */
static void draw_legend(FILE *out, const svg_ctx_t *ctx, int y) {
    fprintf(out,
            "<text x=\"%d\" y=\"%d\" font-size=\"11\">cell: tokens the target receives in "
            "the layer (number = replicas it holds)</text>\n",
            LEFT_MARGIN, y + 12);
    for (int i = 0; i <= 20; i++) {
        char color[16];
        shade(i / 20.0, color, sizeof(color));
        fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"12\" fill=\"%s\"/>\n",
                LEFT_MARGIN + i * 10, y + 18, color);
    }
    fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"10\">0</text>\n", LEFT_MARGIN, y + 42);
    fprintf(out,
            "<text x=\"%d\" y=\"%d\" font-size=\"10\" text-anchor=\"end\">%.0f tokens"
            "</text>\n",
            LEFT_MARGIN + 210, y + 42, ctx->max_tokens);
    fprintf(out,
            "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"12\" fill=\"#2e8b57\"/>"
            "<text x=\"%d\" y=\"%d\" font-size=\"10\">device memory used</text>\n",
            LEFT_MARGIN + 240, y + 18, LEFT_MARGIN + 254, y + 28);
    fprintf(out,
            "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"12\" fill=\"#b8860b\"/>"
            "<text x=\"%d\" y=\"%d\" font-size=\"10\">CPU memory used</text>\n",
            LEFT_MARGIN + 370, y + 18, LEFT_MARGIN + 384, y + 28);
    fprintf(out,
            "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"12\" fill=\"#d95f02\"/>"
            "<text x=\"%d\" y=\"%d\" font-size=\"10\">layer predicted time</text>\n",
            LEFT_MARGIN + 490, y + 18, LEFT_MARGIN + 504, y + 28);
}

/* Writes the whole picture; called through the atomic file writer. */
static bool write_svg(FILE *out, void *context) {
    const svg_ctx_t *ctx = context;
    int grid_w = ctx->topology->n_targets * ctx->cell_w;
    int width = LEFT_MARGIN + grid_w + RIGHT_BAND;
    if (width < 720) width = 720;
    int grid_h = ctx->plan->n_layers * ctx->cell_h;
    int height = TOP_MARGIN + NAME_BAND + MEMORY_BAND + grid_h + BOTTOM_BAND;
    fprintf(out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n",
            width, height, width, height);
    draw_header(out, ctx);
    draw_columns(out, ctx);
    draw_grid(out, ctx);
    draw_home(out, ctx);
    draw_legend(out, ctx, TOP_MARGIN + NAME_BAND + MEMORY_BAND + grid_h + 6);
    fputs("</svg>\n", out);
    return !ferror(out);
}

/* The target that sets layer l's time: the slowest one, or the home when its share (which the
 * layer adds to the slowest target's time) is longer; -1 when nothing takes time. */
static int bottleneck_of(const svg_ctx_t *ctx, int l) {
    int n = ctx->topology->n_targets, slowest = -1;
    double slowest_us = 0;
    for (int t = 0; t < n; t++) {
        double us = ctx->time_us[(size_t)l * n + t];
        if (us > slowest_us) {
            slowest_us = us;
            slowest = t;
        }
    }
    return ctx->home >= 0 && ctx->home_us[l] > slowest_us ? ctx->home : slowest;
}

moira_status_t moira_plan_write_svg_stream(const moira_plan_t *plan,
                                           const moira_topology_t *topology,
                                           const moira_model_config_t *model, FILE *out) {
    svg_ctx_t ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.plan = plan;
    ctx.topology = topology;
    ctx.model = model;
    size_t cells = (size_t)(plan->n_layers > 0 ? plan->n_layers : 1) * topology->n_targets + 1;
    ctx.time_us = calloc(cells, sizeof(double));
    ctx.tokens = calloc(cells, sizeof(double));
    ctx.replicas = calloc(cells, sizeof(int));
    ctx.bottleneck = calloc((size_t)plan->n_layers + 1, sizeof(int));
    ctx.home_us = calloc((size_t)plan->n_layers + 1, sizeof(double));
    ctx.home = plan->home[0] ? moira_topology_find_target(topology, plan->home) : -1;
    double *tokens = calloc((size_t)topology->n_targets + 1, sizeof(double));
    int *active = calloc((size_t)topology->n_targets + 1, sizeof(int));
    moira_status_t status = MOIRA_OK_STATUS;
    if (!ctx.time_us || !ctx.tokens || !ctx.replicas || !ctx.bottleneck || !ctx.home_us ||
        !tokens || !active)
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "svg: out of memory");
    moira_cost_model_t cost;
    moira_cost_model_init(model, &cost);
    for (int l = 0; !status && l < plan->n_layers; l++) {
        const moira_plan_layer_t *layer = &plan->layers[l];
        memset(tokens, 0, (size_t)topology->n_targets * sizeof(double));
        memset(active, 0, (size_t)topology->n_targets * sizeof(int));
        for (int r = 0; r < layer->n_replicas; r++) {
            int t = layer->replica_target[r];
            tokens[t] += layer->replica_load[r];
            active[t] += layer->replica_load[r] > 0;
            ctx.replicas[(size_t)l * topology->n_targets + t]++;
        }
        for (int t = 0; t < topology->n_targets; t++) {
            double us = moira_cost_target_us(&cost, &topology->targets[t], tokens[t], active[t]);
            ctx.time_us[(size_t)l * topology->n_targets + t] = us;
            ctx.tokens[(size_t)l * topology->n_targets + t] = tokens[t];
            if (tokens[t] > ctx.max_tokens) ctx.max_tokens = tokens[t];
        }
        ctx.home_us[l] = ctx.home >= 0 ? layer->cost.home_us : 0;
        ctx.bottleneck[l] = bottleneck_of(&ctx, l);
        if (layer->cost.predicted_us > ctx.max_layer_us)
            ctx.max_layer_us = layer->cost.predicted_us;
    }
    int n = topology->n_targets > 0 ? topology->n_targets : 1;
    ctx.cell_w = 1200 / n;
    if (ctx.cell_w > 44) ctx.cell_w = 44;
    if (ctx.cell_w < 8) ctx.cell_w = 8;
    int rows = plan->n_layers > 0 ? plan->n_layers : 1;
    ctx.cell_h = 900 / rows;
    if (ctx.cell_h > 22) ctx.cell_h = 22;
    if (ctx.cell_h < 6) ctx.cell_h = 6;
    if (!status && !write_svg(out, &ctx))
        status = moira_status_make(MOIRA_CODE_IO, "cannot write the plan picture");
    free(ctx.bottleneck);
    free(ctx.home_us);
    free(ctx.time_us);
    free(ctx.tokens);
    free(ctx.replicas);
    free(tokens);
    free(active);
    return status;
}

typedef struct svg_args {
    const moira_plan_t *plan;
    const moira_topology_t *topology;
    const moira_model_config_t *model;
} svg_args_t;

/* Adapts moira_plan_write_svg_stream to the atomic file writer's callback. */
static bool write_svg_to(FILE *out, void *context) {
    const svg_args_t *args = context;
    moira_status_t status =
        moira_plan_write_svg_stream(args->plan, args->topology, args->model, out);
    moira_status_free(status);
    return status == MOIRA_OK_STATUS;
}

moira_status_t moira_plan_write_svg(const moira_plan_t *plan, const moira_topology_t *topology,
                                    const moira_model_config_t *model, const char *path) {
    svg_args_t args = {plan, topology, model};
    return moira_write_file_atomically(path, write_svg_to, &args);
}
