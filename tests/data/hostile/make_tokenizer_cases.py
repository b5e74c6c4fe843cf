#!/usr/bin/env python3
"""Writes the tokenizer cases of the hostile set (tok-*/ model directories, chat-*.json message
files) from tests/data/tokenizer/tiny, each broken in one way. Run: python3 make_tokenizer_cases.py.
"""
import json
import os
import shutil

here = os.path.dirname(os.path.abspath(__file__))
tiny = os.path.join(here, "..", "tokenizer", "tiny")
with open(os.path.join(tiny, "tokenizer.json"), encoding="utf-8") as f:
    tokenizer_text = f.read()
base = json.loads(tokenizer_text)
with open(os.path.join(tiny, "tokenizer_config.json"), encoding="utf-8") as f:
    base_config = json.load(f)


def case(name, tokenizer=None, config=None, tokenizer_text=None, config_text=None):
    folder = os.path.join(here, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    if tokenizer_text is None:
        tokenizer_text = json.dumps(tokenizer if tokenizer is not None else base, ensure_ascii=False,
                                    indent=1)
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tokenizer_text)
    if config_text is None and config is not False:
        config_text = json.dumps(config if config is not None else base_config, ensure_ascii=False,
                                 indent=1)
    if config_text is not None:
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            f.write(config_text)


def changed(edit):
    copy = json.loads(json.dumps(base))
    edit(copy)
    return copy


# Cut in the middle of the vocabulary.
case("tok-truncated", tokenizer_text=tokenizer_text[: len(tokenizer_text) // 2])
case("tok-unknown-merge", changed(lambda t: t["model"]["merges"].append("he zz")))
case("tok-merge-shape", changed(lambda t: t["model"]["merges"].insert(2, "hello")))
case("tok-bad-regex",
     changed(lambda t: t["pre_tokenizer"]["pretokenizers"][0]["pattern"].update({"Regex": "[a-"})))
case("tok-negative-id", changed(lambda t: t["model"]["vocab"].update({"h": -5})))
case("tok-huge-id", changed(lambda t: t["added_tokens"][0].update({"id": 4000000000})))
case("tok-unigram", changed(lambda t: t["model"].update({"type": "Unigram"})))
case("tok-nfkc", changed(lambda t: t.update({"normalizer": {"type": "NFKC"}})))
case("tok-missing-config", config=False)
case("tok-config-array", config_text="[]")
case("tok-unknown-bos", config=dict(base_config, bos_token="<nope>"))
case("tok-bad-template", config=dict(base_config, chat_template="{% if messages %}unclosed"))

messages = {
    "chat-not-a-list.json": '{"role": "user", "content": "hi"}',
    "chat-no-role.json": '[{"content": "hi"}]',
    "chat-bad-json.json": '[{"role": "user", "content": "hi"}\n',
}
for name, text in messages.items():
    with open(os.path.join(here, name), "w", encoding="utf-8") as f:
        f.write(text)
