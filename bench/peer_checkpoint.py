"""Checkpoint reading for the PyTorch eager peer (bench/generate_peer.py): safetensors files parsed
by hand (struct + json + numpy over a memory map), a Hugging Face model directory's shards, and
DeepSeek-V3's fp8 weights dequantised with their 128x128 weight_scale_inv blocks."""

import json
import math
import mmap
import os
import struct

import numpy as np
import torch


class InputError(Exception):
    """A file, config or option the peer cannot run: reported on one line, exit 2."""


def read_json(path):
    """A JSON file holding an object, as a dict; a syntax error names path:line:column."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as error:
        raise InputError("%s: cannot read: %s" % (path, error.strerror))
    except UnicodeDecodeError as error:
        raise InputError("%s: not UTF-8 at byte %d" % (path, error.start))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError("%s:%d:%d: %s" % (path, error.lineno, error.colno, error.msg))
    if not isinstance(value, dict):
        raise InputError("%s:1:1: not a JSON object" % path)
    return value


def e4m3_table():
    """The 256 values of float8 e4m3fn (bias 7, no infinities, S.1111.111 is NaN), because
    DeepSeek-V3 ships its weights in that format and numpy has no such type."""
    codes = np.arange(256, dtype=np.int64)
    exponent = (codes >> 3) & 0xF
    mantissa = (codes & 7).astype(np.float64)
    magnitude = np.where(
        exponent == 0,
        mantissa / 8.0 * 2.0**-6,
        (1.0 + mantissa / 8.0) * np.exp2(exponent.astype(np.float64) - 7.0),
    )
    magnitude[(codes & 0x7F) == 0x7F] = np.nan
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.float32)


E4M3 = e4m3_table()

# safetensors dtype -> (numpy type the bytes are read as, bytes per element)
STORED = {
    "F64": (np.float64, 8),
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    "BF16": (np.int16, 2),
    "F8_E4M3": (np.uint8, 1),
    "I64": (np.int64, 8),
    "I32": (np.int32, 4),
}


class SafetensorsFile:
    """One safetensors file, memory-mapped; the header is checked when opened (every entry's
    offsets inside the file and matching its shape), the bytes are read when a tensor is asked
    for. A dtype the peer does not read is refused only when that tensor is asked for."""

    def __init__(self, path):
        self.path = path
        try:
            f = open(path, "rb")
        except OSError as error:
            raise InputError("%s: cannot open: %s" % (path, error.strerror))
        with f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise InputError("%s: shorter than the 8-byte header length" % path)
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise InputError(
                    "%s: header length %d runs past the end of the file (%d bytes)"
                    % (path, length, size)
                )
            try:
                header = json.loads(f.read(length).decode("utf-8"))
            except UnicodeDecodeError as error:
                raise InputError("%s: header is not UTF-8 at byte %d" % (path, 8 + error.start))
            except json.JSONDecodeError as error:
                raise InputError(
                    "%s: header (from byte 8) line %d column %d: %s"
                    % (path, error.lineno, error.colno, error.msg)
                )
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if not isinstance(header, dict):
            raise InputError("%s: header is not a JSON object" % path)
        self.entries = {}
        for name, entry in header.items():
            if name != "__metadata__":
                self.entries[name] = self._checked(name, entry, 8 + length, size)

    def _checked(self, name, entry, data_start, size):
        """(dtype, shape, first byte) of one header entry, after checking it."""
        where = "%s: tensor %s" % (self.path, name)
        if not isinstance(entry, dict):
            raise InputError("%s: entry is not an object" % where)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        ints = lambda v: isinstance(v, list) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v
        )
        if not isinstance(dtype, str) or not ints(shape) or not ints(offsets) or len(offsets) != 2:
            raise InputError("%s: needs dtype, shape and data_offsets [begin, end]" % where)
        begin, end = offsets
        if begin > end or data_start + end > size:
            raise InputError("%s: data_offsets [%d, %d] outside the file" % (where, begin, end))
        if dtype in STORED and (end - begin) != math.prod(shape) * STORED[dtype][1]:
            raise InputError(
                "%s: %d bytes for shape %s of %s" % (where, end - begin, shape, dtype)
            )
        return dtype, tuple(shape), data_start + begin

    def dtype(self, name):
        return self.entries[name][0]

    def array(self, name):
        """A tensor's elements as a numpy array of its stored type (BF16 as int16 bits, F8 as
        uint8 codes), copied out of the mapping."""
        dtype, shape, first = self.entries[name]
        if dtype not in STORED:
            raise InputError(
                "%s: tensor %s has dtype %s, which the peer does not read"
                % (self.path, name, dtype)
            )
        kind, width = STORED[dtype]
        count = math.prod(shape)
        return np.frombuffer(self.map, dtype=kind, count=count, offset=first).reshape(shape).copy()


class TensorSource:
    """Tensors by name from a model directory (model.safetensors, or model.safetensors.index.json
    and its shards) or from one file; shards are opened on first use."""

    def __init__(self, where):
        self.files = {}
        self.place = {}
        if os.path.isfile(where):
            self._open(where)
            self.place = {name: where for name in self.files[where].entries}
            self.block = (128, 128)
            return
        index = os.path.join(where, "model.safetensors.index.json")
        single = os.path.join(where, "model.safetensors")
        if os.path.isfile(index):
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise InputError("%s: has no weight_map object" % index)
            for name, shard in weight_map.items():
                if not isinstance(shard, str) or "/" in shard or shard in ("", ".", ".."):
                    raise InputError("%s: weight_map[%s] is not a file name" % (index, name))
                self.place[name] = os.path.join(where, shard)
        elif os.path.isfile(single):
            self._open(single)
            self.place = {name: single for name in self.files[single].entries}
        else:
            raise InputError(
                "%s: has neither model.safetensors nor model.safetensors.index.json" % where
            )
        self.block = (128, 128)
        config = os.path.join(where, "config.json")
        if os.path.isfile(config):
            quant = read_json(config).get("quantization_config") or {}
            block = quant.get("weight_block_size", [128, 128]) if isinstance(quant, dict) else None
            if not (isinstance(block, list) and len(block) == 2
                    and all(isinstance(n, int) and n > 0 for n in block)):
                raise InputError("%s: quantization_config.weight_block_size is not [rows, cols]"
                                 % config)
            self.block = tuple(block)

    def _open(self, path):
        if path not in self.files:
            self.files[path] = SafetensorsFile(path)
        return self.files[path]

    def has(self, name):
        return name in self.place

    def _file(self, name):
        if name not in self.place:
            raise InputError("the checkpoint has no tensor %s" % name)
        f = self._open(self.place[name])
        if name not in f.entries:
            raise InputError("%s: has no tensor %s (the index names it there)" % (f.path, name))
        return f

    def shape(self, name):
        return self._file(name).entries[name][1]

    def dtype(self, name):
        return self._file(name).dtype(name)

    def tensor(self, name, dtype):
        """The tensor as torch `dtype`: BF16 bits viewed as torch.bfloat16 (exact), F8_E4M3
        dequantised with its weight_scale_inv blocks, the rest converted."""
        f = self._file(name)
        stored = f.dtype(name)
        raw = f.array(name)
        if stored == "BF16":
            return torch.from_numpy(raw).view(torch.bfloat16).to(dtype)
        if stored == "F8_E4M3":
            return torch.from_numpy(self._dequantised(name, raw)).to(dtype)
        return torch.from_numpy(raw).to(dtype)

    def _dequantised(self, name, codes):
        """An fp8 weight times its f32 scale per block (DeepSeek-V3: 128x128), as f32."""
        scale_name = name[: -len("weight")] + "weight_scale_inv"
        if codes.ndim != 2 or not name.endswith("weight") or not self.has(scale_name):
            raise InputError("tensor %s is F8_E4M3 without a 2-D %s" % (name, scale_name))
        scale = self._file(scale_name).array(scale_name).astype(np.float32)
        rows, cols = codes.shape
        br, bc = self.block
        want = (-(-rows // br), -(-cols // bc))
        if scale.shape != want:
            raise InputError(
                "tensor %s: %s has shape %s, %s blocks of %dx%d need %s"
                % (name, scale_name, list(scale.shape), list(codes.shape), br, bc, list(want))
            )
        full = np.repeat(np.repeat(scale, br, axis=0), bc, axis=1)[:rows, :cols]
        return E4M3[codes] * full
