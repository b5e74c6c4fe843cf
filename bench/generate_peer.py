#!/usr/bin/python3
"""PyTorch eager peer of `moira bench generate` (bench/RESULTS.md).

Runs a Hugging Face-layout DeepSeek-V2/V3 checkpoint the way PyTorch eager users run it: the
modules of Hugging Face's modeling_deepseek.py written out op by op (RMSNorm, MLA with a full
key/value cache per layer, the MoE gate, experts looped one by one as moe_infer does, shared
experts, dense first layers, final norm, lm_head), weights in bf16 (f32 when the checkpoint is
f32), torch.inference_mode(), torch.set_num_threads(--threads).

  generate_peer.py MODEL_DIR --prefill N [--repeat R] [--json]
  generate_peer.py MODEL_DIR --decode B[,B...] --steps S [--prompt-tokens P] [--json]
  generate_peer.py MODEL_DIR --prefill 512 --decode 1,8 --json      (what bench/generate.sh runs)
  generate_peer.py MODEL_DIR --check-ids 1,2,3 --max-tokens N [--json]
  generate_peer.py --golden tests/data/golden/layer_v3 [...]      (checks the ops, exit 1 if off)

Run it with Debian's /usr/bin/python3 (python3-torch, python3-numpy); nothing else is used.
Bad input exits 2 with a message naming the file (and line:column for JSON); a golden case off
its limit exits 1.
"""

import argparse
import json
import math
import os
import sys
import time

try:
    import numpy  # noqa: F401  (imported here only to name it when it is missing)
    import torch
except ImportError as error:
    sys.stderr.write(
        "generate_peer: %s: needs Debian's python3-torch and python3-numpy; run it with "
        "/usr/bin/python3 (make bench installs them)\n" % error
    )
    sys.exit(2)

sys.dont_write_bytecode = True  # no __pycache__ left in bench/ by the imports below
from peer_checkpoint import InputError  # noqa: E402  (after the check above)
from peer_golden import run_golden  # noqa: E402
from peer_layers import KVCache  # noqa: E402
from peer_model import Model  # noqa: E402


def greedy(model, prompt, max_tokens, stop_at_eos):
    """Greedy generation of one sequence through the cache: (generated ids, finish reason)."""
    cache = KVCache()
    logits = model.forward(torch.tensor([prompt]), cache)
    out = []
    while True:
        out.append(int(torch.argmax(logits[0, -1])))
        if stop_at_eos and out[-1] in model.eos:
            return out, "stop"
        if len(out) >= max_tokens:
            return out, "length"
        logits = model.forward(torch.tensor([out[-1:]]), cache)


def random_ids(model, batch, count, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.vocab, (batch, count), generator=generator)


def bench_prefill(model, tokens, repeat, seed):
    """Best time of `repeat` forwards over one random prompt of `tokens` ids (after a short
    untimed warm-up forward): tokens/s and seconds."""
    ids = random_ids(model, 1, tokens, seed)
    model.forward(ids[:, : min(tokens, 8)], KVCache())
    best = math.inf
    for _ in range(repeat):
        began = time.perf_counter()
        model.forward(ids, KVCache())
        best = min(best, time.perf_counter() - began)
    return tokens / best, best


def bench_decode(model, batch, steps, prompt_tokens, seed):
    """`batch` random prompts of `prompt_tokens` prefilled together, one untimed decode step,
    then `steps` timed greedy decode steps of all sequences: total decode tokens/s, seconds."""
    cache = KVCache()
    ids = random_ids(model, batch, prompt_tokens, seed)
    logits = model.forward(ids, cache)
    token = torch.argmax(logits[:, -1], dim=-1, keepdim=True)
    logits = model.forward(token, cache)
    began = time.perf_counter()
    for _ in range(steps):
        token = torch.argmax(logits[:, -1], dim=-1, keepdim=True)
        logits = model.forward(token, cache)
    seconds = time.perf_counter() - began
    return batch * steps / seconds, seconds


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="generate_peer.py",
        description="PyTorch eager peer of moira bench generate (DeepSeek-V2/V3, HF layout). "
        "--prefill and --decode may be given together (one load, one row each).",
    )
    p.add_argument("model", nargs="?", help="Hugging Face checkpoint directory")
    p.add_argument("--prefill", type=int, metavar="N", help="time a forward over N tokens")
    p.add_argument("--decode", metavar="B[,B...]",
                   help="time decode of B sequences at once (one row per batch size)")
    p.add_argument("--check-ids", metavar="IDS", help="greedy generation after these ids")
    p.add_argument("--golden", nargs="+", metavar="CASE",
                   help="golden case paths without extension (tests/data/golden/layer_v3)")
    p.add_argument("--steps", type=int, default=32, help="timed decode steps (default 32)")
    p.add_argument("--prompt-tokens", type=int, default=16,
                   help="prompt length before decode (default 16)")
    p.add_argument("--max-tokens", type=int, default=16, help="ids --check-ids generates")
    p.add_argument("--ignore-eos", action="store_true", help="--check-ids runs past EOS")
    p.add_argument("--repeat", type=int, default=1, help="prefill rounds; the best counts")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--dtype", choices=["auto", "bf16", "f32", "f64"], default="auto",
                   help="weights and activations (auto: f32 checkpoints f32, others bf16; "
                   "golden cases f32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    p.add_argument("--json", action="store_true", help="print JSON: one object per line")
    args = p.parse_args(argv)
    modes = [args.golden is not None, args.check_ids is not None,
             args.prefill is not None or args.decode is not None]
    if sum(modes) != 1:
        p.error("give one of --golden, --check-ids, or --prefill and/or --decode")
    if args.golden is None and not args.model:
        p.error("a model directory is needed (except with --golden)")
    if args.decode is not None:
        try:
            args.decode = [int(b) for b in args.decode.split(",")]
        except ValueError:
            p.error("--decode %s: not a comma-separated list of batch sizes" % args.decode)
        if min(args.decode) < 1:
            p.error("--decode: batch sizes must be at least 1")
    for name in ("prefill", "steps", "prompt_tokens", "max_tokens", "repeat", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error("--%s must be at least 1" % name.replace("_", "-"))
    return args


def parse_ids(text, vocab):
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError("--check-ids %s: not a comma-separated list of integers" % text)
    for i in ids:
        if not 0 <= i < vocab:
            raise InputError(
                "--check-ids: id %d is outside the vocabulary (0..%d)" % (i, vocab - 1)
            )
    return ids


def report(args, model, row, rate, seconds):
    """Prints one benchmark row, as JSON or as a sentence."""
    row = dict({"peer": "pytorch-eager", "torch": torch.__version__, "dtype": model.dtype_name,
                "threads": args.threads,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}, **row)
    row.update(tokens_per_s=round(rate, 3), seconds=round(seconds, 4))
    if args.json:
        print(json.dumps(row), flush=True)
    else:
        print("%s batch %d prompt %d: %.2f tokens/s (%.3f s, PyTorch %s eager, %s, %d threads)"
              % (row["phase"], row["batch"], row["prompt_tokens"], rate, seconds,
                 torch.__version__, model.dtype_name, args.threads), flush=True)


def main(argv):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        if args.golden:
            return run_golden(args.golden, args.dtype)
        model = Model(args.model, args.dtype)
        if args.check_ids is not None:
            prompt = parse_ids(args.check_ids, model.vocab)
            ids, reason = greedy(model, prompt, args.max_tokens, not args.ignore_eos)
            if args.json:
                print(json.dumps({"prompt_ids": prompt, "ids": ids, "finish_reason": reason}))
            else:
                print(" ".join(str(i) for i in ids))
            return 0
        if args.prefill is not None:
            rate, seconds = bench_prefill(model, args.prefill, args.repeat, args.seed)
            report(args, model, {"phase": "prefill", "batch": 1, "prompt_tokens": args.prefill},
                   rate, seconds)
        for batch in args.decode or []:
            rate, seconds = bench_decode(model, batch, args.steps, args.prompt_tokens, args.seed)
            report(args, model, {"phase": "decode", "batch": batch,
                                 "prompt_tokens": args.prompt_tokens, "steps": args.steps},
                   rate, seconds)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except InputError as error:
        sys.stderr.write("generate_peer: %s\n" % error)
        sys.exit(2)
