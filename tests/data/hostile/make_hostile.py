#!/usr/bin/env python3
"""Writes the binary members of the hostile-input set (safetensors files and a sharded checkpoint);
the YAML and JSON members are written by hand. Committed output; run again only to change them.
Each file is broken in one way; MANIFEST says which command reads it and what it must say."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I32": 4, "I64": 8}


def header_bytes(header):
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text


def tensors(entries, data_size=None):
    """entries: (name, dtype, shape, data_offsets or None). Data is zeros unless given."""
    header, offset = {}, 0
    for name, dtype, shape, offsets in entries:
        n = SIZES.get(dtype, 4)
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": offsets if offsets else [offset, offset + n]}
        offset += n
    return header_bytes(header) + b"\x00" * (offset if data_size is None else data_size)


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


# hidden_states for gate_v3 (D = 64) as a start; each file breaks one thing.
hs = [("hidden_states", "F32", [2, 64], None)]
write("st-too-short.safetensors", b"\x10\x00\x00")
write("st-header-past-end.safetensors", struct.pack("<Q", 1 << 40) + b"{}")
write("st-truncated-data.safetensors", tensors(hs, data_size=100))
write("st-offsets-past-end.safetensors",
      tensors([("hidden_states", "F32", [2, 64], [0, 512 + (1 << 40)])], data_size=512))
write("st-overflowing-shape.safetensors",
      tensors([("hidden_states", "F32", [1 << 62, 1 << 62], [0, 16])], data_size=16))
write("st-negative-dimension.safetensors",
      tensors([("hidden_states", "F32", [-2, 64], [0, 512])], data_size=512))
write("st-offsets-reversed.safetensors",
      tensors([("hidden_states", "F32", [2, 64], [512, 0])], data_size=512))
write("st-size-mismatch.safetensors",
      tensors([("hidden_states", "F32", [2, 64], [0, 500])], data_size=512))
write("st-unknown-dtype.safetensors", tensors([("hidden_states", "F64", [2, 64], [0, 1024])],
                                               data_size=1024))
write("st-wrong-dtype-for-op.safetensors", tensors([("hidden_states", "I32", [2, 64], None)]))
write("st-wrong-shape-for-op.safetensors", tensors([("hidden_states", "F32", [2, 65], None)]))
dup = header_bytes({"hidden_states": {"dtype": "F32", "shape": [2, 64], "data_offsets": [0, 512]}})
text = dup[8:].decode()
text = text[:-1] + ',"hidden_states":{"dtype":"F32","shape":[1,64],"data_offsets":[0,256]}}'
write("st-duplicate-names.safetensors", struct.pack("<Q", len(text)) + text.encode() + bytes(512))
bad = b'{"hidden_states": {"dtype": "F32", "shape": [2, 64], "data_offsets": [0, 512]'
write("st-bad-json.safetensors", struct.pack("<Q", len(bad)) + bad + bytes(512))
nan = bytearray(struct.pack("<f", 0.5) * 128)
nan[4 * 70:4 * 71] = struct.pack("<f", float("nan"))
write("st-nan-inputs.safetensors", tensors(hs, data_size=0) + bytes(nan))
# fp8 weight whose block scales cover the wrong grid (4x1 for a 130x4 weight needs 2x1).
write("st-fp8-scale-mismatch.safetensors",
      tensors([("w.weight", "F8_E4M3", [130, 4], None),
               ("w.weight_scale_inv", "F32", [4, 1], None)] + hs))

# A sharded checkpoint whose index points outside its folder.
os.makedirs(os.path.join(HERE, "ckpt-path-traversal"), exist_ok=True)
with open(os.path.join(HERE, "ckpt-path-traversal", "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": {"mlp.gate.weight": "../st-too-short.safetensors"}}, f, indent=2)
    f.write("\n")
os.makedirs(os.path.join(HERE, "ckpt-missing-shard"), exist_ok=True)
with open(os.path.join(HERE, "ckpt-missing-shard", "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": {"mlp.gate.weight": "model-00001-of-00009.safetensors"}}, f, indent=2)
    f.write("\n")
# 200 tensors aliasing one misaligned range (the format gives each tensor its own bytes; aliasing
# made Moira copy the range once per alias: 40000 aliases of 1 MiB got the process OOM-killed).
aliases = {"hidden_states": {"dtype": "F32", "shape": [2, 64], "data_offsets": [0, 512]}}
for i in range(200):
    aliases["alias_%03d" % i] = {"dtype": "F32", "shape": [2, 64], "data_offsets": [1, 513]}
write("st-aliased-tensors.safetensors", header_bytes(aliases) + bytes(520))
# A position past 2^24: devices form RoPE angles in f32 and would silently disagree with cpu.
far = header_bytes({"hidden_states": {"dtype": "F32", "shape": [2, 64], "data_offsets": [0, 512]},
                    "positions": {"dtype": "I32", "shape": [2], "data_offsets": [512, 520]}})
write("st-position-too-far.safetensors", far + bytes(512) + struct.pack("<ii", 0, 100000000))
