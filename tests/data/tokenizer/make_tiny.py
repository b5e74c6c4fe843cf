#!/usr/bin/env python3
"""Writes tests/data/tokenizer/tiny/: a byte-level BPE tokenizer small enough to work out by hand.

Token id b (0-255) is byte b in GPT-2's byte-level spelling; ids 256-264 are the merges below, in
rank order; 265-267 are added tokens. tests/unit/test_tokenizer.c holds ids worked out by hand from
this table, so it must not change without them. Run: python3 make_tiny.py (writes tiny/).
"""
import json
import os


def bytes_to_unicode():
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    shifted = 0
    table = {}
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


spell = bytes_to_unicode()
vocab = {spell[b]: b for b in range(256)}
merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"),
          ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld")]
for rank, (a, b) in enumerate(merges):
    vocab[a + b] = 256 + rank
added = [
    {"id": 265, "content": "<s>", "special": True, "normalized": False},
    {"id": 266, "content": "</s>", "special": True, "normalized": False},
    {"id": 267, "content": "<tool>", "special": False, "normalized": True, "lstrip": True},
    {"id": 268, "content": "<w>", "special": False, "normalized": True, "single_word": True},
]
for token in added:
    token.setdefault("lstrip", False)
    token.setdefault("single_word", False)
    token["rstrip"] = False
tokenizer = {
    "version": "1.0",
    "added_tokens": added,
    "normalizer": None,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ]},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                       "use_regex": True},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
              "vocab": vocab, "merges": [a + " " + b for a, b in merges]},
}
config = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": {"__type": "AddedToken", "content": "<s>"},
    "eos_token": "</s>",
    "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                     "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}",
}
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny")
os.makedirs(here, exist_ok=True)
with open(os.path.join(here, "tokenizer.json"), "w", encoding="utf-8") as f:
    json.dump(tokenizer, f, ensure_ascii=False, indent=1)
with open(os.path.join(here, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, ensure_ascii=False, indent=1)
