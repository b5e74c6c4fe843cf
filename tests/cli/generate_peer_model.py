#!/usr/bin/python3
"""Checks of bench/generate_peer.py (and its bench/peer_*.py modules) beyond its golden op cases,
driven by generate_peer.sh:

- loader: BF16, F16 and F8_E4M3 tensors (128x128 weight_scale_inv blocks, a partial block at the
  edges) in a two-shard checkpoint read back as values written here by hand;
- model: a one-layer checkpoint made of the golden layer_v3 case (embedding rows = its
  hidden_states, so ids 0..11 feed exactly its input) gives logits equal to an fp64 numpy
  reference built on the golden output (final RMSNorm, lm_head), and greedy generation from a
  short prompt walks the golden sequence through the key/value cache: lm_head is chosen so that
  the best next id after position t is t + 1.

  generate_peer_model.py REPO_ROOT GOLDEN_DIR WORK_DIR
Prints one line per check; exit 1 if any fails.
"""

import json
import os
import struct
import subprocess
import sys

import numpy as np

root, golden, work = sys.argv[1:4]
peer_path = os.path.join(root, "bench", "generate_peer.py")
sys.path.insert(0, os.path.join(root, "bench"))
sys.dont_write_bytecode = True  # no __pycache__ left in the source tree
import torch  # noqa: E402
from generate_peer import greedy  # noqa: E402
from peer_checkpoint import InputError, SafetensorsFile, TensorSource  # noqa: E402
from peer_golden import nmse  # noqa: E402
from peer_layers import KVCache  # noqa: E402
from peer_model import Model  # noqa: E402

failures = 0


def run_peer(*args):
    """The peer as a command: (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, peer_path] + [str(a) for a in args],
                          capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def refused(directory, words):
    """Whether loading the checkpoint fails with an input error saying `words` (printed)."""
    try:
        Model(directory, "auto")
    except InputError as error:
        print("  (%s)" % error)
        return words in str(error)
    return False


def check(ok, what):
    global failures
    failures += not ok
    print("%s: %s" % ("ok" if ok else "FAIL", what))


def write_safetensors(path, tensors):
    """tensors: name -> (safetensors dtype, shape, raw bytes)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_sharded(directory, tensors, config):
    """A checkpoint directory: tensors split over two shards and an index, and config.json."""
    os.makedirs(directory, exist_ok=True)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, members in shards.items():
        write_safetensors(os.path.join(directory, shard), {n: tensors[n] for n in members})
        weight_map.update({n: shard for n in members})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)


def f32(array):
    array = np.ascontiguousarray(array, dtype=np.float32)
    return ("F32", array.shape, array.tobytes())


def bf16(array):
    """Rounded to nearest even BF16 (no NaN here)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return ("BF16", array.shape, bits.astype("<u2").tobytes())


def read_f32(path):
    """name -> float64 array of an all-F32 (or I32) safetensors file, read here independently."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    out = {}
    for name, e in json.loads(data[8 : 8 + n]).items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        kind = {"F32": "<f4", "I32": "<i4", "BF16": None}[e["dtype"]]
        raw = data[8 + n + b : 8 + n + end]
        if kind is None:  # BF16: the upper half of an f32
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            out[name] = bits.view(np.float32).astype(np.float64).reshape(e["shape"])
        else:
            out[name] = np.frombuffer(raw, dtype=kind).astype(np.float64).reshape(e["shape"])
    return out


# ---------------------------------------------------------------------------------------------
# Loader: values fixed by hand


def loader_checks():
    # BF16 bit patterns and their values: 0x3F80 = 1, 0xC020 = -2.5, 0x0001 = 2^-133 (subnormal)
    bf16 = {0x3F80: 1.0, 0xC020: -2.5, 0x0001: 2.0**-133, 0x4049: 3.140625}
    # F8_E4M3 codes (bias 7): 0x38 = 1, 0x40 = 2, 0xB8 = -1, 0x3C = 1.5, 0x7E = 448 (the largest),
    # 0x08 = 2^-6 (smallest normal), 0x01 = 2^-9 (smallest subnormal), 0x87 = -7 * 2^-9, 0x00 = 0
    e4m3 = {0x38: 1.0, 0x40: 2.0, 0xB8: -1.0, 0x3C: 1.5, 0x7E: 448.0, 0x08: 2.0**-6,
            0x01: 2.0**-9, 0x87: -7 * 2.0**-9, 0x00: 0.0}
    codes = list(e4m3)
    rows, cols = 130, 200  # two block rows and two block columns, the last ones partial
    grid = np.array([[codes[(r * 7 + c) % len(codes)] for c in range(cols)] for r in range(rows)],
                    dtype=np.uint8)
    scale = np.array([[1.0, 2.0], [0.5, 4.0]], dtype=np.float32)
    want_fp8 = np.array([[e4m3[int(grid[r, c])] * scale[r // 128, c // 128] for c in range(cols)]
                         for r in range(rows)])
    tensors = {
        "a.weight": ("BF16", (4,), np.array(list(bf16), dtype="<u2").tobytes()),
        "b.weight": ("F16", (2,), np.array([1.5, -0.25], dtype="<f2").tobytes()),
        "c.weight": ("F8_E4M3", (rows, cols), grid.tobytes()),
        "c.weight_scale_inv": f32(scale),
    }
    directory = os.path.join(work, "loader")
    write_sharded(directory, tensors, {})
    source = TensorSource(directory)
    got = source.tensor("a.weight", torch.float64).numpy()
    check(np.array_equal(got, np.array(list(bf16.values()))), "BF16 bits read as their values")
    got = source.tensor("b.weight", torch.float64).numpy()
    check(np.array_equal(got, [1.5, -0.25]), "F16 read as its values")
    got = source.tensor("c.weight", torch.float64).numpy()
    check(np.array_equal(got, want_fp8),
          "F8_E4M3 130x200 times its 128x128 weight_scale_inv blocks (partial edge blocks)")
    # A scale of the wrong shape and a header offset past the end are input errors.
    tensors["c.weight_scale_inv"] = f32(np.ones((1, 2)))
    write_sharded(directory, tensors, {})
    try:
        TensorSource(directory).tensor("c.weight", torch.float32)
        check(False, "a weight_scale_inv of the wrong shape is refused")
    except InputError as error:
        check("weight_scale_inv" in str(error),
              "a weight_scale_inv of the wrong shape is refused: %s" % error)
    bad = os.path.join(work, "bad.safetensors")
    text = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    with open(bad, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"\0" * 8)
    try:
        SafetensorsFile(bad)
        check(False, "a tensor past the end of its file is refused")
    except InputError as error:
        check("outside the file" in str(error),
              "a tensor past the end of its file is refused: %s" % error)


# ---------------------------------------------------------------------------------------------
# Model: the golden decoder layer inside a one-layer checkpoint


def rmsnorm64(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def model_checks():
    inputs = read_f32(os.path.join(golden, "layer_v3.inputs.safetensors"))
    expected = read_f32(os.path.join(golden, "layer_v3.expected.safetensors"))["output"]
    with open(os.path.join(golden, "layer_v3.json")) as f:
        config = json.load(f)
    tokens, d = expected.shape
    vocab = tokens + 4
    rng = np.random.default_rng(7)
    config.update(model_type="deepseek_v3", num_hidden_layers=1, vocab_size=vocab)
    embed = rng.standard_normal((vocab, d))
    embed[:tokens] = inputs["hidden_states"]
    norm = 1.0 + 0.1 * rng.standard_normal(d)
    final = rmsnorm64(expected, norm, config["rms_norm_eps"])
    # lm_head row t + 1 points along position t's final hidden state: the best next id is t + 1.
    lm_head = 0.01 * rng.standard_normal((vocab, d))
    for t in range(tokens - 1):
        lm_head[t + 1] = final[t] / np.linalg.norm(final[t])
    logits = final @ lm_head.T
    best = logits.argmax(axis=1)
    ranked = np.sort(logits, axis=1)
    margin = ((ranked[:, -1] - ranked[:, -2]) / np.abs(ranked[:, -1]))[: tokens - 1].min()
    check(list(best[: tokens - 1]) == list(range(1, tokens)) and margin > 1e-3,
          "reference: greedy after position t is t + 1 (relative margin %.3f)" % margin)
    tensors = {"model.layers.0." + n: f32(v) for n, v in inputs.items() if n != "hidden_states"}
    tensors.update({"model.embed_tokens.weight": f32(embed), "model.norm.weight": f32(norm),
                    "lm_head.weight": f32(lm_head)})
    directory = os.path.join(work, "model")
    write_sharded(directory, tensors, config)

    with torch.inference_mode():
        model = Model(directory, "auto")
        check(model.dtype_name == "f32", "an F32 checkpoint runs in f32 by default")
        got = model.forward(torch.arange(tokens).unsqueeze(0), KVCache(), last_only=False)
        cache = KVCache()
        steps = [model.forward(torch.arange(3).unsqueeze(0), cache)[0, -1]]
        steps += [model.forward(torch.tensor([[t]]), cache)[0, -1] for t in range(3, tokens)]
    error = nmse(got[0], torch.from_numpy(logits))
    check(error <= 1e-6, "logits of all %d positions, nmse %.3g (limit 1e-6)" % (tokens, error))
    error = nmse(torch.stack(steps), torch.from_numpy(logits[2:]))
    check(error <= 1e-6, "logits after a 3-token prefill and %d steps through the cache, nmse %.3g "
          "(limit 1e-6)" % (tokens - 3, error))

    rc, out, err = run_peer(directory, "--check-ids", "0,1,2", "--max-tokens", tokens - 3, "--json")
    ids = json.loads(out)["ids"] if rc == 0 else err.strip()
    check(ids == list(range(3, tokens)),
          "--check-ids 0,1,2 generates 3..%d through the cache: %s" % (tokens - 1, ids))

    # The same checkpoint in BF16 runs in bf16; its logits stay within bf16's limit of the f32
    # reference (weights rounded too) and greedy still walks the golden sequence.
    directory16 = os.path.join(work, "model-bf16")
    arrays = {n: np.frombuffer(raw, dtype="<f4").reshape(shape)
              for n, (_, shape, raw) in tensors.items()}
    write_sharded(directory16, {n: bf16(a) for n, a in arrays.items()}, config)
    with torch.inference_mode():
        model = Model(directory16, "auto")
        got = model.forward(torch.arange(tokens).unsqueeze(0), KVCache(), last_only=False)
        ids, reason = greedy(model, [0, 1, 2], tokens - 3, True)
    error = nmse(got[0], torch.from_numpy(logits))
    check(model.dtype_name == "bf16" and error <= 2e-3,
          "BF16 checkpoint runs in %s, logits nmse %.3g (limit 2e-3)" % (model.dtype_name, error))
    check(ids == list(range(3, tokens)) and reason == "length",
          "bf16 greedy after 0,1,2 generates 3..%d: %s" % (tokens - 1, ids))

    rc, out, err = run_peer(directory, "--json", "--prefill", 12, "--decode", "1,2", "--steps", 3,
                            "--prompt-tokens", 4)
    rows = [json.loads(line) for line in out.splitlines()] if rc == 0 else []
    keys = ("phase", "batch", "prompt_tokens", "tokens_per_s")
    check([(r["phase"], r["batch"], r["prompt_tokens"]) for r in rows]
          == [("prefill", 1, 12), ("decode", 1, 4), ("decode", 2, 4)]
          and all(all(k in r for k in keys) and r["tokens_per_s"] > 0 for r in rows),
          "--prefill 12 --decode 1,2 --json rows: %s" % (out.strip() or err.strip()))

    # A weight whose shape the config does not give is named, exit 2.
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(dict(config, kv_lora_rank=16), f)
    check(refused(directory, "kv_a_proj_with_mqa.weight has shape [40, 64]"),
          "a weight of the wrong shape is refused")

    # A config.json that is not JSON names its line and column, exit 2.
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write('{\n  "model_type": "deepseek_v3",\n  "hidden_size": 64,,\n}\n')
    rc, out, err = run_peer(directory, "--prefill", 4)
    check(rc == 2 and "config.json:3:21:" in err,
          "a broken config.json: exit %d, %s" % (rc, err.strip()))
    config["model_type"] = "deepseek_v4"
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    check(refused(directory, '"deepseek_v4"'), "model_type deepseek_v4 is refused")


loader_checks()
model_checks()
sys.exit(1 if failures else 0)
