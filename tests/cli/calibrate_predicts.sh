#!/usr/bin/env bash
# After `moira calibrate`, the planner's predictions come near what `moira run` measures (issue 15:
# before calibration cpu:0 ran 5-70x its prediction): moira-tiny over the calibrated topology at 1,
# 32 and 512 tokens, each device's busy time, each MoE layer's expert time and its whole time (the
# home's share included) against the prediction. The issue's target is +-35% on a quiet machine
# (bench/RESULTS.md has the exact ratios); here the margin is 3x either way, so that a loaded
# 2-core CI box does not fail it, and the test skips (77) when the load average says other work
# holds the cores, since timings there measure the other work.
set -u
moira="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/lib/expect.bash"

MARGIN=3
load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
cores=$(nproc 2>/dev/null || echo 1)
if python3 -c "import sys; sys.exit(0 if $load > 0.5 * $cores else 1)"; then
    echo "SKIP: load average $load on $cores cores: timings would measure other work"
    exit 77
fi

expect 0 "calibrate" -- "$moira" calibrate -o "$work/cal.yaml" --iters 5
for tokens in 1 32 512; do
    expect 0 "run $tokens tokens" -- "$moira" run --topology "$work/cal.yaml" --tokens "$tokens" --iters 10 --json
    python3 - "$work/out" "$tokens" "$MARGIN" <<'EOF' && passed=$((passed + 1)) || failed=$((failed + 1))
import json, sys
run = json.load(open(sys.argv[1]))
tokens, margin, bad = sys.argv[2], float(sys.argv[3]), []
rows = [(d["name"], d["busy_ms"], d["predicted_ms"]) for d in run["devices"]]
moe = [l for l in run["layers"] if l["kind"] == "moe"]
rows += [("layer %d experts" % l["layer"], l["experts_ms"], l["predicted_ms"]) for l in moe]
rows += [("layer %d with its home" % l["layer"], l["wall_ms"], l["plan_predicted_ms"]) for l in moe]
for name, measured, predicted in rows:
    ratio = measured / predicted if predicted > 0 else float("inf")
    print("%s tokens, %s: measured %.3f ms, predicted %.3f ms, ratio %.2f"
          % (tokens, name, measured, predicted, ratio))
    if not (1 / margin <= ratio <= margin):
        bad.append(name)
if bad:
    print("FAIL: %s tokens: beyond %gx: %s" % (tokens, margin, ", ".join(bad)))
sys.exit(1 if bad else 0)
EOF
done

echo "calibrate_predicts: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
