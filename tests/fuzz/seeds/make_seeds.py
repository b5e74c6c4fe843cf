#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the safetensors fuzz targets (committed; run again only to
change them): small files that reach every dtype, fp8 block scales in F32 and BF16, MXFP4 and
int8 weights with their scales, misaligned
data, scalars, empty tensors, metadata and escaped names, and index files for the two fixture
shards fuzz_safetensors_index.c writes. Standard library only."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I32": 4, "I64": 8, "U8": 1, "I8": 1,
         "F8_E8M0": 1}


def safetensors(tensors, metadata=None, pad=0, ensure_ascii=True):
    """tensors: list of (name, dtype, shape); data is a byte pattern. `pad` shifts the data
    section so offsets are misaligned."""
    header, blobs, offset = {}, [], pad
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs.append(b"\x00" * pad)
    for name, dtype, shape in tensors:
        n = SIZES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        blobs.append(bytes((i * 7 + 3) & 0x3F for i in range(n)))
        offset += n
    text = json.dumps(header, ensure_ascii=ensure_ascii, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write(sub, name, data):
    os.makedirs(os.path.join(HERE, sub), exist_ok=True)
    with open(os.path.join(HERE, sub, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


h = "safetensors_header"
write(h, "every-dtype.safetensors", safetensors(
    [("f32", "F32", [2, 3]), ("f16", "F16", [4]), ("bf16", "BF16", [2, 2]),
     ("i32", "I32", [3]), ("i64", "I64", [1, 2]), ("f8", "F8_E4M3", [2, 2])],
    metadata={"format": "pt"}))
write(h, "fp8-f32-scales.safetensors", safetensors(
    [("w.weight", "F8_E4M3", [130, 3]), ("w.weight_scale_inv", "F32", [2, 1])]))
write(h, "fp8-bf16-scales.safetensors", safetensors(
    [("w.weight", "F8_E4M3", [3, 260]), ("w.weight_scale_inv", "BF16", [1, 3])]))
write(h, "mxfp4-int8.safetensors", safetensors(  # quantised weights: U8 + E8M0, I8 + F32 rows
    [("a.weight", "U8", [2, 16]), ("a.scale", "F8_E8M0", [2, 1]), ("b.weight", "I8", [2, 4]),
     ("b.weight_scale", "F32", [2]), ("c.weight", "I8", [1, 32]), ("c.scale", "U8", [1, 2])]))
write(h, "misaligned.safetensors", safetensors([("x", "F32", [3]), ("y", "I64", [2])], pad=3))
write(h, "scalar-and-empty.safetensors", safetensors(
    [("scalar", "F32", []), ("empty", "F16", [0, 4]), ("rank4", "BF16", [1, 2, 1, 2])]))
write(h, "names.safetensors", safetensors(
    [("model.layers.0.mlp.gate.weight", "F32", [1, 2]), ("quote\"back\\slash\ttab", "F32", [1]),
     ("\u00e9t\u00e9 \U0001F600", "F16", [1])], metadata={"k": "v", "e": ""}))
write(h, "names-utf8.safetensors", safetensors([("\u00e9t\u00e9", "F32", [1])],
                                               ensure_ascii=False))
write(h, "empty-header.safetensors", struct.pack("<Q", 2) + b"{}")

shard1 = "model-00001-of-00002.safetensors"
shard2 = "model-00002-of-00002.safetensors"
weight_map = {
    "model.layers.0.mlp.gate.weight": shard1,
    "model.layers.0.mlp.experts.0.up_proj.weight": shard1,
    "model.layers.0.mlp.experts.0.up_proj.weight_scale_inv": shard1,
    "model.layers.1.input_layernorm.weight": shard2,
    "positions": shard2,
}
i = "safetensors_index"
write(i, "full.json", json.dumps({"metadata": {"total_size": 1234}, "weight_map": weight_map},
                                 indent=2))
write(i, "one-shard.json", json.dumps({"weight_map": {"positions": shard2}}))
