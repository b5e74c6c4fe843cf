#!/usr/bin/env bash
# The PyTorch eager peer of `moira bench generate` (bench/generate_peer.py) against independent
# answers: every golden case (PyTorch fp64 known answers, tests/data/golden) in f32, mla and layer
# also one token at a time through its key/value cache; then its checkpoint loader (BF16, F16,
# fp8 blocks, shards) on hand-written values and its whole model on a one-layer checkpoint built
# from the golden layer (tests/cli/generate_peer_model.py). The peer is a benchmark tool, not part
# of Moira: skips (77) where Debian's python3-torch or python3-numpy is absent (make bench
# installs them).
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
root=$(cd "$data/../.." && pwd)
python=/usr/bin/python3
if ! "$python" -c 'import torch, numpy' 2>/dev/null; then
    echo "skip: $python cannot import torch and numpy (apt-get install python3-torch python3-numpy)"
    exit 77
fi

cases=()
for json in "$golden"/*.json; do
    cases+=("${json%.json}")
done
if "$python" "$root/bench/generate_peer.py" --golden "${cases[@]}" >"$work/golden.log" 2>&1; then
    passed=$((passed + 1))
else
    fail "golden cases"
fi
cat "$work/golden.log"

if "$python" "$(dirname "$0")/generate_peer_model.py" "$root" "$golden" "$work" \
    >"$work/model.log" 2>&1; then
    passed=$((passed + 1))
else
    fail "loader and model checks"
fi
cat "$work/model.log"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
