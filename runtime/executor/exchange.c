/* An MoE layer across hosts: the rows that go to other hosts' experts and the partial sums that
 * come back (DeepSeek's expert-parallel shape). Every rank routes its own tokens; a token with
 * experts on another host is sent there once, with the replicas it goes to and their weights
 * (placement/network_cost.h has the row layout). The receiving host serves those rows on its
 * targets beside its own, sums its targets' outputs per row, and sends each row's sum back to
 * the rank that owns the token, which adds it to the residual stream.
 *
 * All of it is laid out once for the largest batch: one block of `capacity` rows per rank in
 * every buffer, so an exchange allocates nothing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "placement/network_cost.h"
#include "runtime/executor/executor_internal.h"

moira_status_t moira_exec_exchange_open(moira_executor_t *e) {
    exec_exchange_t *x = &e->exchange;
    x->n_hosts = x->cluster ? moira_cluster_size(x->cluster) : 1;
    if (!x->cluster) return MOIRA_OK_STATUS;
    /* From here on a rank that stops answering is named by its host. */
    x->host_names = calloc((size_t)x->n_hosts, sizeof(*x->host_names));
    if (!x->host_names) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    for (int h = 0; h < x->n_hosts; h++)
        x->host_names[h] = e->topology->hosts[h].name;
    moira_cluster_name_hosts(x->cluster, x->host_names, x->n_hosts);
    int64_t d = e->model->hidden_size, k = e->model->num_experts_per_tok;
    size_t hosts = (size_t)x->n_hosts, rows = hosts * (size_t)x->capacity;
    x->row_bytes = moira_network_dispatch_row_bytes(d, k);
    /* MPI counts and displacements are int: every rank's block must start below 2 GiB. */
    int64_t most = INT32_MAX / ((int64_t)x->n_hosts * x->row_bytes);
    if (x->capacity > most)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "a batch of %lld tokens is more than one exchange between %d "
                                 "ranks carries (at most %lld tokens of %lld bytes); use a "
                                 "smaller batch",
                                 (long long)x->capacity, x->n_hosts, (long long)most,
                                 (long long)x->row_bytes);
    x->send = malloc(rows * (size_t)x->row_bytes);
    x->recv = malloc(rows * (size_t)x->row_bytes);
    x->back_send = malloc(rows * (size_t)d * sizeof(float));
    x->back_recv = malloc(rows * (size_t)d * sizeof(float));
    x->send_token = malloc(rows * sizeof(int32_t));
    int64_t **arrays[] = {&x->send_rows,        &x->recv_rows,     &x->recv_first,
                          &x->bytes_out,        &x->bytes_in,      &x->offsets,
                          &x->back_bytes_out,   &x->back_bytes_in, &x->back_send_offsets,
                          &x->back_recv_offsets};
    bool ok = x->send && x->recv && x->back_send && x->back_recv && x->send_token;
    for (size_t i = 0; i < sizeof(arrays) / sizeof(arrays[0]); i++) {
        *arrays[i] = calloc(hosts, sizeof(int64_t));
        ok = ok && *arrays[i];
    }
    if (!ok) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "executor: out of memory");
    for (int h = 0; h < x->n_hosts; h++) {
        x->offsets[h] = h * x->capacity * x->row_bytes;
        x->back_recv_offsets[h] = h * x->capacity * d * (int64_t)sizeof(float);
    }
    return MOIRA_OK_STATUS;
}

void moira_exec_exchange_close(moira_executor_t *e) {
    exec_exchange_t *x = &e->exchange;
    if (x->host_names) moira_cluster_name_hosts(x->cluster, NULL, 0);
    free(x->host_names);
    free(x->send);
    free(x->recv);
    free(x->back_send);
    free(x->back_recv);
    free(x->send_token);
    free(x->send_rows);
    free(x->recv_rows);
    free(x->recv_first);
    free(x->bytes_out);
    free(x->bytes_in);
    free(x->offsets);
    free(x->back_bytes_out);
    free(x->back_bytes_in);
    free(x->back_send_offsets);
    free(x->back_recv_offsets);
}

/* The parts of dispatched row `row` of host `host`'s block. */
static char *row_at(const exec_exchange_t *x, char *base, int host, int64_t row) {
    return base + (size_t)x->offsets[host] + (size_t)(row * x->row_bytes);
}

static int32_t *row_replicas(char *row, int64_t d) {
    return (int32_t *)(row + d * (int64_t)sizeof(float));
}

static float *row_weights(char *row, int64_t d, int64_t k) {
    return (float *)(row + (d + k) * (int64_t)sizeof(float));
}

/* Token order makes a token's rows consecutive, so its row on a host is the last one or new. */
void moira_exec_route_remote(moira_executor_t *e, int host, int32_t token, int64_t j,
                             int32_t replica, float weight) {
    exec_exchange_t *x = &e->exchange;
    int64_t d = e->model->hidden_size, k = e->model->num_experts_per_tok;
    int32_t *tokens = x->send_token + (size_t)host * (size_t)x->capacity;
    int64_t row = x->send_rows[host];
    if (row == 0 || tokens[row - 1] != token) {
        tokens[row] = token;
        char *fresh = row_at(x, x->send, host, row);
        for (int64_t i = 0; i < k; i++) {
            row_replicas(fresh, d)[i] = -1;
            row_weights(fresh, d, k)[i] = 0;
        }
        x->send_rows[host] = ++row;
    }
    char *at = row_at(x, x->send, host, row - 1);
    row_replicas(at, d)[j] = replica;
    row_weights(at, d, k)[j] = weight;
}

/* Each row's activations go in last, once every assignment of the batch has been routed. */
void moira_exec_dispatch(moira_executor_t *e, moira_exec_layer_stats_t *stats) {
    exec_exchange_t *x = &e->exchange;
    int64_t d = e->model->hidden_size;
    double start = moira_now_seconds();
    for (int h = 0; h < x->n_hosts; h++) {
        const int32_t *own = x->send_token + (size_t)h * (size_t)x->capacity;
        for (int64_t row = 0; row < x->send_rows[h]; row++)
            memcpy(row_at(x, x->send, h, row), e->normed + (int64_t)own[row] * d,
                   (size_t)d * sizeof(float));
        x->bytes_out[h] = x->send_rows[h] * x->row_bytes;
        stats->network_bytes += (double)x->bytes_out[h];
    }
    moira_cluster_exchange_start(x->cluster, x->send, x->bytes_out, x->offsets, x->recv,
                                 x->bytes_in, x->offsets, x->capacity * x->row_bytes, x->row_bytes,
                                 "an MoE layer's dispatch", &x->pending);
    x->foreign = 0;
    for (int h = 0; h < x->n_hosts; h++) {
        x->recv_rows[h] = x->bytes_in[h] / x->row_bytes;
        x->recv_first[h] = x->foreign;
        x->foreign += x->recv_rows[h];
    }
    stats->exchange_s += moira_now_seconds() - start;
}

/* The received rows become rows tokens, tokens+1, ... of this host's batch: their activations
 * follow the own tokens' in e->normed, and each assignment goes to the local replica the sender
 * chose (every rank reads the same plan, so the numbers agree). */
void moira_exec_receive(moira_executor_t *e, exec_layer_t *layer, int64_t tokens,
                        moira_exec_layer_stats_t *stats) {
    exec_exchange_t *x = &e->exchange;
    int64_t d = e->model->hidden_size, k = e->model->num_experts_per_tok;
    double start = moira_now_seconds();
    moira_cluster_exchange_wait(x->cluster, &x->pending);
    stats->exchange_s += moira_now_seconds() - start;
    for (int h = 0; h < x->n_hosts; h++)
        for (int64_t i = 0; i < x->recv_rows[h]; i++) {
            char *row = row_at(x, x->recv, h, i);
            int64_t local = tokens + x->recv_first[h] + i;
            memcpy(e->normed + local * d, row, (size_t)d * sizeof(float));
            const int32_t *replicas = row_replicas(row, d);
            const float *weights = row_weights(row, d, k);
            for (int64_t j = 0; j < k; j++) {
                int32_t r = replicas[j];
                if (r < 0) continue;
                if (r >= layer->plan->n_replicas || layer->replica_exec[r] < 0)
                    moira_cluster_abort(x->cluster, 1,
                                        "layer %lld: a row from rank %d names replica %d, which "
                                        "this host does not hold (do the ranks read different "
                                        "plans?)",
                                        (long long)layer->index, h, r);
                moira_exec_assign(e, layer, (int32_t)local, j, r, weights[j]);
                layer->received_rows[r] += 1;
            }
        }
}

/* After the targets ran: the sums of received rows go back to their owners, and the sums other
 * hosts computed for this rank's tokens come in and join the residual stream. */
void moira_exec_give_back(moira_executor_t *e, moira_exec_layer_stats_t *stats) {
    exec_exchange_t *x = &e->exchange;
    int64_t d = e->model->hidden_size;
    int64_t row_bytes = moira_network_return_row_bytes(d);
    double start = moira_now_seconds();
    for (int h = 0; h < x->n_hosts; h++) {
        x->back_bytes_out[h] = x->recv_rows[h] * row_bytes;
        x->back_send_offsets[h] = x->recv_first[h] * row_bytes;
        stats->network_bytes += (double)x->back_bytes_out[h];
    }
    moira_cluster_exchange_start(x->cluster, x->back_send, x->back_bytes_out, x->back_send_offsets,
                                 x->back_recv, x->back_bytes_in, x->back_recv_offsets,
                                 x->capacity * row_bytes, row_bytes, "an MoE layer's combine",
                                 &x->pending);
    moira_cluster_exchange_wait(x->cluster, &x->pending);
    stats->exchange_s += moira_now_seconds() - start;
    for (int h = 0; h < x->n_hosts; h++)
        if (x->back_bytes_in[h] != x->send_rows[h] * row_bytes)
            moira_cluster_abort(x->cluster, 1,
                                "rank %d returned %lld bytes of partial sums for %lld rows sent", h,
                                (long long)x->back_bytes_in[h], (long long)x->send_rows[h]);
    for (int h = 0; h < x->n_hosts; h++) {
        const int32_t *own = x->send_token + (size_t)h * (size_t)x->capacity;
        const float *sums = x->back_recv + (size_t)h * (size_t)x->capacity * (size_t)d;
        for (int64_t row = 0; row < x->send_rows[h]; row++) {
            float *dst = e->act + (int64_t)own[row] * d;
            for (int64_t c = 0; c < d; c++)
                dst[c] += sums[row * d + c];
        }
    }
}
