#!/usr/bin/env python3
"""Writes the seed inputs of fuzz_program_cache (committed; run again only to change them): cache
files in the format of runtime/program_cache.h, valid ones and each kind of damage its check
refuses. Standard library only."""
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "program_cache")
KEY = 0x684BF694C85F486E  # FIXED_KEY of fuzz_program_cache.c
OTHER_KEY = 0x0123456789ABCDEF


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def cache_file(payload, key=KEY, version=1, reserved=0, length=None, checksum=None, magic=b"MOIRAPC\n"):
    length = len(payload) if length is None else length
    checksum = fnv1a64(payload) if checksum is None else checksum
    return magic + struct.pack("<IIQQQ", version, reserved, key, length, checksum) + payload


PAYLOAD = b"poclbin\x00" + bytes(range(256)) * 2
SEEDS = {
    "valid.bin": cache_file(PAYLOAD),
    "valid-other-key.bin": cache_file(PAYLOAD, key=OTHER_KEY),
    "valid-empty-payload.bin": cache_file(b""),
    "truncated.bin": cache_file(PAYLOAD)[:300],
    "longer-than-header-says.bin": cache_file(PAYLOAD) + b"\x00",
    "length-huge.bin": cache_file(PAYLOAD, length=0xFFFFFFFFFFFFFFFF),
    "bad-checksum.bin": cache_file(PAYLOAD, checksum=fnv1a64(PAYLOAD) ^ 1),
    "version-2.bin": cache_file(PAYLOAD, version=2),
    "reserved-set.bin": cache_file(PAYLOAD, reserved=1),
    "headerless-old-format.bin": PAYLOAD,
    "header-only-short.bin": cache_file(PAYLOAD)[:39],
}

os.makedirs(HERE, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
