/* The OpenCL benchmark peer: the same expert GEMMs as Moira's grouped MoE FFN, as a plain loop of
 * CLBlast SGEMMs (one per projection per expert), on the same OpenCL device.
 *
 * The peer talks to OpenCL and CLBlast directly and shares nothing with Moira's backend: it finds
 * the device by the backend's naming rule (opencl:N is the N-th device over all platforms, in ICD
 * order), so the two are measured on the same hardware through independent code. */
#ifndef MOIRA_BENCH_CLBLAST_PEER_H
#define MOIRA_BENCH_CLBLAST_PEER_H

#include <stdint.h>

#include "runtime/status.h"

typedef struct moira_clblast_peer moira_clblast_peer_t;

/* Opens OpenCL device number `device_index`. Caller closes with moira_clblast_peer_close. */
moira_status_t moira_clblast_peer_open(int device_index, moira_clblast_peer_t **out_peer);
void moira_clblast_peer_close(moira_clblast_peer_t *peer);

/* Prepares the per-expert loop: for every expert e with rows[e] > 0, three SGEMMs over its rows
 * of a pre-gathered activation matrix: gate = x_e W1_e^T, up = x_e W3_e^T ([rows, I], K = D)
 * and y_e = gate W2_e^T ([rows, D], K = I). Weights are f32, filled on the device. `rows` is
 * copied. One problem per peer at a time; moira_clblast_peer_close frees it. */
moira_status_t moira_clblast_peer_moe_prepare(moira_clblast_peer_t *peer, const int32_t *rows,
                                              int n_experts, int64_t hidden, int64_t inter);

/* Runs the prepared loop once to completion; its wall time in `out_seconds`. */
moira_status_t moira_clblast_peer_moe_run(moira_clblast_peer_t *peer, double *out_seconds);

/* Times the per-head loop of MLA's absorbed decode projections, the same GEMMs as Moira's
 * MLA_ABSORB_Q and MLA_ABSORB_OUT: for every head h, q_lat_h [T, L] = q_nope_h [T, nope] W_UK_h
 * and out_h [T, v] = o_lat_h [T, L] W_UV_h^T, W_UK_h and W_UV_h being head h's k and v rows of
 * kv_b_proj [H*(nope+v), L] (f32, filled on the device). Best seconds per iteration. */
moira_status_t moira_clblast_peer_mla_absorb(moira_clblast_peer_t *peer, int64_t tokens,
                                             int64_t heads, int64_t nope, int64_t rope,
                                             int64_t v_dim, int64_t latent, int iterations,
                                             double *out_seconds);

#endif
