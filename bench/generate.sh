#!/usr/bin/env bash
# Whole-model generation speed of PyTorch eager on a Hugging Face DeepSeek checkpoint, the peer
# `moira bench generate` is measured against (bench/RESULTS.md): prefill tokens/s over a
# 512-token prompt, and decode tokens/s at batch 1 and at 8 sequences (llama-bench's pp512 and
# tg rows). One load of the model, one JSON object per line:
#   {"phase": "prefill"|"decode", "batch": B, "prompt_tokens": N, "tokens_per_s": X, ...}
#   bench/generate.sh MODEL_DIR [PEER OPTIONS...]
# PEER OPTIONS go to bench/generate_peer.py after the defaults, so they override them: --threads N
# (default 2), --dtype f32|bf16, --steps S (decode steps timed, default 32), --prompt-tokens P
# (the prompt before decode, default 16), --repeat R (prefill rounds, the best counts), --prefill N,
# --decode B[,B...]. Needs Debian's python3-torch and python3-numpy (`make bench` installs them):
# exit 2 naming them when they are absent, as for any bad input.
# PyTorch's OpenMP threads spin while they wait: on a machine other work shares, that costs the
# peer up to 5x at decode (2 threads on 2 busy cores); OMP_WAIT_POLICY=PASSIVE in the environment
# avoids it, and each row says which policy it ran under.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=/usr/bin/python3
if [ ! -x "$python" ]; then
    echo "bench/generate.sh: needs $python with python3-torch and python3-numpy (make bench)" >&2
    exit 2
fi
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bench/generate.sh MODEL_DIR [PEER OPTIONS...]" >&2
    exit 2
fi
model="$1"
shift
if [ ! -f "$model/config.json" ]; then
    echo "bench/generate.sh: $model: no config.json (a Hugging Face checkpoint directory)" >&2
    exit 2
fi
exec "$python" "$here/generate_peer.py" "$model" --prefill 512 --decode 1,8 --json "$@"
