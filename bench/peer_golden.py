"""The PyTorch eager peer's own check (bench/generate_peer.py --golden): one op of the peer on a
golden case (PyTorch fp64 known answers, tests/data/golden/README.md) against its expected
output."""

import math
import os

import numpy as np
import torch

from peer_checkpoint import InputError, SafetensorsFile, TensorSource, read_json
from peer_config import Config, Rope
from peer_layers import KVCache, attention, decoder_layer, moe, route
from peer_model import DTYPES, load_layer


LIMITS = {"f32": 1e-6, "f64": 1e-6, "bf16": 2e-3}
# Expected selection scores closer than this at the k-th place may swap experts.
TIE = {"f32": 1e-5, "f64": 1e-5, "bf16": 2e-2}


def nmse(got, want):
    """sum((got - want)^2) / sum(want^2) in f64; inf on a NaN/Inf mismatch."""
    got, want = got.to(torch.float64), want.to(torch.float64)
    if not torch.equal(torch.isfinite(got), torch.isfinite(want)):
        return math.inf
    finite = torch.isfinite(want)
    got, want = got[finite], want[finite]
    return float(((got - want) ** 2).sum() / max(float((want**2).sum()), 1e-300))


def golden_gate(config, w, x, expected, dtype_name):
    """The router's top-k sets against the golden ones (a swap allowed where the k-th and next
    selection scores are within TIE), and the matching weights' NMSE."""
    idx, weight = route(config, w, x.reshape(-1, x.shape[-1]))
    want_idx = torch.from_numpy(expected.array("topk_idx").astype(np.int64))
    want_w = torch.from_numpy(expected.array("topk_weight"))
    selection = torch.from_numpy(expected.array("selection_scores")).to(torch.float64)
    k = idx.shape[1]
    swapped, got_rows, want_rows = 0, [], []
    for t in range(idx.shape[0]):
        if set(idx[t].tolist()) != set(want_idx[t].tolist()):
            ranked = selection[t].sort(descending=True).values
            if k < ranked.numel() and ranked[k - 1] - ranked[k] < TIE[dtype_name]:
                swapped += 1
                continue
            return math.inf, "token %d chose %s, golden %s" % (
                t, sorted(idx[t].tolist()), sorted(want_idx[t].tolist()))
        got_rows.append(weight[t][idx[t].argsort()])
        want_rows.append(want_w[t][want_idx[t].argsort()])
    note = "; %d near-tie swaps" % swapped if swapped else ""
    if not got_rows:
        return 0.0, "every token a near-tie swap"
    return nmse(torch.stack(got_rows), torch.stack(want_rows)), "top-k sets equal" + note


def golden_case(prefix, dtype_name, decode):
    """Runs one golden case (gate, moe, mla or layer by its name's first word) and returns
    (nmse, note). With decode, mla and layer run one token at a time through the cache."""
    op = os.path.basename(prefix).split("_")[0]
    config_path = prefix + ".json"
    config = Config(read_json(config_path), config_path, need_model_type=False)
    inputs = TensorSource(prefix + ".inputs.safetensors")
    expected = SafetensorsFile(prefix + ".expected.safetensors")
    dtype = DTYPES[dtype_name]
    x = inputs.tensor("hidden_states", dtype).unsqueeze(0)
    parts = {"gate": ("router",), "moe": ("router", "ffn"), "mla": ("attention",),
             "layer": ("attention", "norms", "router", "ffn")}
    if op not in parts:
        raise InputError("%s: golden case of unknown op %s" % (prefix, op))
    is_moe = inputs.has("mlp.gate.weight")
    w = load_layer(config, inputs, "", dtype, is_moe, parts[op])
    if op == "gate":
        return golden_gate(config, w, x, expected, dtype_name)
    rope = Rope(config, dtype)

    def run(chunk, cache, start):
        if op == "moe":
            return moe(config, w, chunk)
        if op == "mla":
            return attention(config, w, chunk, rope, cache, 0, start)
        return decoder_layer(config, w, chunk, rope, cache, 0, start, is_moe)

    if decode and op in ("mla", "layer"):
        cache = KVCache()
        out = torch.cat([run(x[:, t : t + 1], cache, t) for t in range(x.shape[1])], dim=1)
        note = "one token at a time through the cache"
    else:
        out = run(x, None, 0)
        note = "all tokens at once"
    want = torch.from_numpy(expected.array("output"))
    return nmse(out[0], want), note


def run_golden(prefixes, dtype_name):
    """Every golden case, prefill and (mla, layer) decode; exit status 1 if any is off."""
    dtype_name = "f32" if dtype_name == "auto" else dtype_name
    failed = 0
    for prefix in prefixes:
        op = os.path.basename(prefix).split("_")[0]
        modes = [False, True] if op in ("mla", "layer") else [False]
        for decode in modes:
            error, note = golden_case(prefix, dtype_name, decode)
            ok = error <= LIMITS[dtype_name]
            failed += not ok
            print("%-4s %-16s %-4s nmse %.3g (limit %g, %s)" % (
                "ok" if ok else "FAIL", os.path.basename(prefix), dtype_name, error,
                LIMITS[dtype_name], note))
    return 1 if failed else 0
