#!/usr/bin/env bash
# Across hosts (issue 18): `mpirun -np 2` on this machine with a two-host topology over local
# devices (alpha: CPU memory; beta: the npu emulator and CPU memory). A two-rank run or greedy
# generation equals the single-process run of the same placement (one-host.yaml: the same
# experts on the same devices) bit for bit; the network bytes a run reports equal the bytes
# its rows must take (hand-computed below) and the cost model's prediction; a rank count that is
# not the topology's host count exits 2; a rank killed mid-run, or one that stops answering,
# ends every rank within 30 s with a message naming it.
set -u
moira="$1"
data="$2"
work=$(mktemp -d)
source "$(dirname "$0")/lib/expect.bash"
source "$(dirname "$0")/lib/model_refs.bash"
cluster="$data/cluster"
golden="$data/golden"
launched=()
trap 'for p in "${launched[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$work"' EXIT

if ! command -v mpirun >/dev/null; then
    echo "SKIP: mpirun is not installed (make deps installs openmpi-bin)"
    exit 77
fi
mpi=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
# Shared memory between the ranks without the kernel's cross-memory attach, which containers
# often forbid; the exchange is small and either path carries it.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# Under the sanitizers: Open MPI is built without frame pointers, so only the slow unwinder
# reaches the frames inside it that tests/lsan.supp names for the state it keeps after
# MPI_Finalize; Moira's own allocations stay checked.
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"

fail() {
    failed=$((failed + 1))
    echo "FAIL: $*"
}

# The pid of one rank of a job under mpirun: among the processes whose command line matches
# PATTERN, the one whose environment names that rank.
rank_pid() { # rank_pid PATTERN RANK
    local pid
    for pid in $(pgrep -f "$1"); do
        tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" &&
            { echo "$pid"; return; }
    done
}

# A plan over `topology` for a model with `layers` (MoE layer numbers) and `experts`: even experts
# in alpha's memory, odd ones and a second replica of expert 0 on npu0.
split_plan() { # split_plan TOPOLOGY MODEL "LAYERS" EXPERTS
    echo "moira_plan: 1"
    echo "topology: $1"
    echo "model: $2"
    echo "layers:"
    for l in $3; do
        local even odd
        even=$(seq -s ', ' 0 2 $(($4 - 1)))
        odd=$(seq -s ', ' 1 2 $(($4 - 1)))
        printf '  - layer: %s\n    devices:\n' "$l"
        printf '      alpha/numa0: {experts: [%s]}\n      npu0: {experts: [0, %s]}\n' "$even" "$odd"
    done
}

# --- moira run --inputs -o: two ranks write what one process writes --------------------------
split_plan two-host-local layer_v3 "0 1" 32 >"$work/v3-two.yaml"
split_plan one-host-local layer_v3 "0 1" 32 >"$work/v3-one.yaml"
v3=(run --model "$golden/layer_v3.json" --inputs "$golden/layer_v3.inputs.safetensors" --iters 1)
expect 0 "run, one process" -- "$moira" "${v3[@]}" --topology "$cluster/one-host.yaml" \
    --plan "$work/v3-one.yaml" -o "$work/one.safetensors"
expect 0 "run, two ranks" -- "${mpi[@]}" -np 2 "$moira" "${v3[@]}" \
    --topology "$cluster/two-host.yaml" --plan "$work/v3-two.yaml" -o "$work/two.safetensors"
check "the report names both hosts" "2 devices hold experts on 2 hosts" "$work/out"
check "network table" "^LAYER +NETWORK KB +PREDICTED KB +EXCHANGE ms" "$work/out"
check "the npu on rank 1 is in the device table" "^npu0 +npu:0 " "$work/out"
check "its check agreed" "^npu0 +npu:0 .* agreed$" "$work/out"
cmp -s "$work/one.safetensors" "$work/two.safetensors" && passed=$((passed + 1)) ||
    fail "two ranks' output differs from one process's"
check "and agreed with the fp64 reference" "^check +every layer vs the reference .* -> agreed" "$work/out"

# --- network bytes: every routed expert on beta, so every token crosses once per MoE layer ----
# moira-tiny: D = 256, k = 4. A dispatched row is D f32 + k replica numbers + k weights, a
# returned row D f32: (256 + 8) * 4 + 256 * 4 = 2080 bytes per token, 16 tokens: 33280 per layer;
# predicted time: those bytes at the topology's 10 GB/s plus its 20 us latency out and back.
expect 0 "run with every expert on beta" -- "${mpi[@]}" -np 2 "$moira" run --tokens 16 --iters 2 \
    --topology "$cluster/two-host.yaml" --plan "$cluster/remote-two-host.yaml" --json
cp "$work/out" "$work/remote.json"
python3 - "$work/remote.json" <<'PY' && passed=$((passed + 1)) || fail "network bytes"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ranks"] == 2, r["ranks"]
moe = [l for l in r["layers"] if l["kind"] == "moe"]
assert len(moe) == 3
for l in moe:
    assert l["network_bytes"] == 16 * 2080, (l["layer"], l["network_bytes"])
    assert l["predicted_network_bytes"] == l["network_bytes"], l
    # two-host.yaml's network: 10 GB/s and 20 us each way.
    want_ms = (16 * 2080 / (10 * 1e3) + 2 * 20) / 1e3
    assert abs(l["predicted_network_ms"] - want_ms) < 1e-9, (l["predicted_network_ms"], want_ms)
PY

# A peer that is slow but alive is waited for: rank 1's cpu:0 takes 700 ms per kernel launch
# (MOIRA_FAULT=slow), 2.1 s per MoE layer, longer than --network-timeout 2; its beacons keep
# rank 0 waiting.
slow=(run --tokens 8 --iters 1 --network-timeout 2 --topology "$cluster/two-host.yaml"
    --plan "$cluster/remote-two-host.yaml")
expect 0 "a peer slower than the timeout" -- "${mpi[@]}" -np 1 "$moira" "${slow[@]}" \
    : -np 1 env MOIRA_FAULT=slow:cpu:0:700 "$moira" "${slow[@]}"
check "the slow peer computed it" "^beta/numa0 +cpu:0 .* agreed$" "$work/out"

# --- data-parallel: every rank runs a batch of its own ------------------------------------
# Each rank's 16 tokens run attention on its own home; rows cross both ways; every rank's layers
# are checked against the fp64 reference (a rank serving its own tokens and the other rank's rows
# in one stage). With every expert on beta: rank 0's 16 tokens cross (16 x 2080 bytes per layer),
# rank 1's stay, and beta/numa0 serves 32 tokens per layer, 96 over the three MoE layers.
expect 0 "data-parallel over the split plan" -- "${mpi[@]}" -np 2 "$moira" run --data-parallel \
    --tokens 16 --iters 1 --topology "$cluster/two-host.yaml" --plan "$cluster/split-two-host.yaml"
check "data-parallel said" "^data +every rank ran a batch of its own \(data-parallel, 2 ranks\)" \
    "$work/out"
check "every rank's batch agreed" "^check +every layer vs the reference .* -> agreed" "$work/out"
expect 0 "data-parallel with every expert on beta" -- "${mpi[@]}" -np 2 "$moira" run \
    --data-parallel --tokens 16 --iters 2 --topology "$cluster/two-host.yaml" \
    --plan "$cluster/remote-two-host.yaml" --json
python3 - "$work/out" <<'PY' && passed=$((passed + 1)) || fail "data-parallel figures"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["data_parallel_ranks"] == 2 and r["agreed"], r
beta = [d for d in r["devices"] if d["name"] == "beta/numa0"][0]
assert beta["tokens"] == 96 and beta["assignments"] == 96 * 4, beta
for l in [l for l in r["layers"] if l["kind"] == "moe"]:
    assert l["network_bytes"] == 16 * 2080 == l["predicted_network_bytes"], l
PY
expect 2 "--data-parallel with --inputs" -- "$moira" run --data-parallel \
    --inputs "$golden/layer_v3.inputs.safetensors" -o "$work/x.safetensors"

# --- greedy generation: two ranks generate what one process generates ----------------------
"$bin/moira-test-checkpoint" --out "$work/bf16" --dtype bf16 --seed 3 --tokenizer "$tokenizer" \
    >/dev/null || { echo "FAIL: writing the checkpoint"; exit 1; }
split_plan two-host-local bf16 "1 2" 16 >"$work/gen-two.yaml"
split_plan one-host-local bf16 "1 2" 16 >"$work/gen-one.yaml"
gen=(generate --model "$work/bf16" --temperature 0 --max-tokens 12 --json --prompt "Moira spins")
expect 0 "generate, one process" -- "$moira" "${gen[@]}" --topology "$cluster/one-host.yaml" \
    --plan "$work/gen-one.yaml" --logits-out "$work/one-logits.safetensors"
cp "$work/out" "$work/one.json"
expect 0 "generate, two ranks" -- "${mpi[@]}" -np 2 "$moira" "${gen[@]}" \
    --topology "$cluster/two-host.yaml" --plan "$work/gen-two.yaml" \
    --logits-out "$work/two-logits.safetensors"
cp "$work/out" "$work/two.json"
python3 - "$work/one.json" "$work/two.json" <<'PY' && passed=$((passed + 1)) || fail "generated ids"
import json, sys
one, two = (json.load(open(p)) for p in sys.argv[1:])
assert len(one["ids"]) == 12 and one["ids"] == two["ids"], (one["ids"], two["ids"])
PY
cmp -s "$work/one-logits.safetensors" "$work/two-logits.safetensors" &&
    passed=$((passed + 1)) || fail "two ranks' logits differ from one process's"
# The recorded profile: the same loads as one process routed, (prompt + generated - 1) x k = 4
# assignments per token fed in each MoE layer, and both hosts' devices' speeds.
expect 0 "generate --record-profile, one process" -- "$moira" "${gen[@]}" \
    --topology "$cluster/one-host.yaml" --plan "$work/gen-one.yaml" --record-profile "$work/one.yaml"
expect 0 "generate --record-profile, two ranks" -- "${mpi[@]}" -np 2 "$moira" "${gen[@]}" \
    --topology "$cluster/two-host.yaml" --plan "$work/gen-two.yaml" --record-profile "$work/two.yaml"
python3 - "$work/one.yaml" "$work/two.yaml" "$work/one.json" <<'PY' && passed=$((passed + 1)) ||
import json, re, sys
def loads(path):
    text = open(path).read()
    return {int(m[0]): [float(x) for x in m[1].split(",")]
            for m in re.findall(r"\{layer: (\d+), load: \[([^\]]*)\]\}", text)}, text
(one, _), (two, text) = loads(sys.argv[1]), loads(sys.argv[2])
run = json.load(open(sys.argv[3]))
fed = len(run["prompt_ids"]) + len(run["ids"]) - 1
assert sorted(two) == [1, 2] and one == two, (one, two)
for layer, load in two.items():
    assert sum(load) == fed * 4, (layer, sum(load), fed)
assert re.search(r"device: alpha/numa0, busy_us: [0-9.e+]+, predicted_us", text), text
assert re.search(r"device: npu0, busy_us: [0-9.e+]+, predicted_us", text), text
PY
    fail "recorded profiles"

# --- serve: rank 0 answers HTTP, its steps run across both ranks ---------------------------
# The completion equals one process's greedy generation; the other rank waits through an idle
# spell longer than --network-timeout; SIGTERM to rank 0 stops the job with exit 0.
port_file="$work/serve.err"
: >"$port_file"
"${mpi[@]}" -np 2 "$moira" serve --model "$work/bf16" --topology "$cluster/two-host.yaml" \
    --plan "$work/gen-two.yaml" --port 0 --network-timeout 2 >"$work/serve.out" 2>"$port_file" &
serve_job=$!
launched+=("$serve_job")
port=""
for waited in $(seq 1 150); do
    port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$port_file" | head -1)
    [ -n "$port" ] && grep -q "ready" "$port_file" && break
    sleep 0.1
done
if [ -z "$port" ]; then
    fail "serve under mpirun never got ready"
    sed 's/^/  | /' "$port_file" | head -8
else
    sleep 3 # idle for longer than --network-timeout
    python3 - "$port" "$work/one.json" <<'PY' && passed=$((passed + 1)) || fail "served text"
import json, sys, urllib.request
port, one = sys.argv[1], json.load(open(sys.argv[2]))
body = json.dumps({"model": "bf16", "prompt": "Moira spins", "max_tokens": 12,
                   "temperature": 0}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                 {"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=60))
text = answer["choices"][0]["text"]
assert text == one["text"], (text, one["text"])
PY
    rank0=$(rank_pid "moira serve --model $work/bf16" 0)
    [ -n "$rank0" ] && kill -TERM "$rank0"
fi
for waited in $(seq 1 300); do
    kill -0 "$serve_job" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$serve_job" 2>/dev/null; then
    fail "serve under mpirun still runs 30 s after SIGTERM"
    kill -9 "$serve_job"
else
    wait "$serve_job" && passed=$((passed + 1)) || fail "serve under mpirun exited $? after SIGTERM"
fi

# --- bad starts: exit 2 ---------------------------------------------------------------------
# (One process.) The home's latent caches count against memory before any weight is read: 256
# sequences of 16M tokens of this model's caches need 1.9 TiB on cpu:0.
expect 2 "serve whose caches the host cannot hold" -- "$moira" serve --model "$work/bf16" \
    --topology "$cluster/one-host.yaml" --plan "$work/gen-one.yaml" --ctx 16777216 \
    --max-batch 256 --port 0
expect_stderr "GiB of bf16 weights and latent caches besides them on cpu:0.*nothing was loaded" \
    "caches counted"
expect 2 "generate under mpirun without a plan" -- "${mpi[@]}" -np 2 "$moira" "${gen[@]}"
expect_stderr "generate under mpirun needs --topology and --plan" "missing plan named"
expect 2 "three ranks for two hosts" -- "${mpi[@]}" -np 3 "$moira" run --tokens 4 --iters 1 \
    --topology "$cluster/two-host.yaml" --plan "$cluster/split-two-host.yaml"
expect_stderr "3 ranks were started for a topology of 2 hosts .*mpirun -np 2" "rank count named"
expect 2 "a two-host plan in one process" -- "$moira" run --tokens 4 --iters 1 \
    --topology "$cluster/two-host.yaml" --plan "$cluster/split-two-host.yaml"
expect_stderr "places experts on hosts \"alpha\" and \"beta\".*mpirun -np 2" "one process refuses"
# Ranks given different runs (MPMD: another batch size on rank 1) would misread each other's rows.
two=(run --iters 1 --topology "$cluster/two-host.yaml" --plan "$cluster/split-two-host.yaml")
expect 2 "ranks given different batch sizes" -- "${mpi[@]}" -np 1 "$moira" "${two[@]}" --tokens 8 \
    : -np 1 "$moira" "${two[@]}" --tokens 16
expect_stderr "rank 1 \(host beta\) runs another plan, topology, model, weights or batch size" \
    "the differing rank named"
expect 2 "ranks given different weights (seeds)" -- "${mpi[@]}" -np 1 "$moira" "${two[@]}" \
    --tokens 8 : -np 1 "$moira" "${two[@]}" --tokens 8 --seed 2
expect_stderr "rank 1 \(host beta\) runs another plan, topology, model, weights" \
    "the rank with other weights named"
sed 's#^home: .*#home: npu0#' "$cluster/split-two-host.yaml" >"$work/home-beta.yaml"
expect 2 "a home on another host than rank 0's" -- "${mpi[@]}" -np 2 "$moira" run --tokens 4 \
    --iters 1 --topology "$cluster/two-host.yaml" --plan "$work/home-beta.yaml"
expect_stderr "the plan's home \"npu0\" is on host \"beta\"; under mpirun rank 0" "home named"
expect 0 "moira --version under mpirun" -- "${mpi[@]}" -np 2 "$moira" --version
check "both ranks print the version" "^moira .*git" "$work/out"
expect 2 "a verb that runs on one host" -- "${mpi[@]}" -np 2 "$moira" devices
expect_stderr "runs on one host" "devices under mpirun"

# --- faults: a rank killed, a rank stalled ----------------------------------------------------
long_run="moira run --tokens 16 --iters 1000000"
# Starts a run that would go on for hours, waits until rank 1 is serving, applies SIGNAL to it,
# then gives the job 30 s to end.
fault() { # fault NAME SIGNAL PATTERN
    "${mpi[@]}" -np 2 "$moira" run --tokens 16 --iters 1000000 --network-timeout 5 \
        --topology "$cluster/two-host.yaml" --plan "$cluster/split-two-host.yaml" \
        >"$work/fault.out" 2>"$work/fault.err" &
    local job=$! target="" waited
    launched+=("$job")
    for waited in $(seq 1 100); do
        target=$(rank_pid "$long_run" 1)
        [ -n "$target" ] && [ -n "$(rank_pid "$long_run" 0)" ] && break
        sleep 0.1
    done
    [ -n "$target" ] || { fail "$1: rank 1 never started"; kill -9 "$job"; return; }
    sleep 3 # both ranks loaded (moira-tiny: a tenth of a second) and exchanging
    launched+=("$target")
    local start=$SECONDS
    kill -"$2" "$target"
    for waited in $(seq 1 300); do
        kill -0 "$job" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$job" 2>/dev/null; then
        fail "$1: the job still runs 30 s after rank 1 was sent SIG$2"
        pkill -9 -f "$long_run"
        return
    fi
    wait "$job"
    local code=$?
    [ "$code" -ne 0 ] && passed=$((passed + 1)) || fail "$1: mpirun exited 0"
    echo "$1: every rank ended $((SECONDS - start)) s after the signal, mpirun exit $code"
    grep -qE -- "$3" "$work/fault.err" && passed=$((passed + 1)) ||
        { fail "$1: stderr lacks /$3/"; sed 's/^/  | /' "$work/fault.err" | head -8; }
    # mpirun has returned; its ranks are gone or being reaped (give them 5 s).
    for waited in $(seq 1 50); do
        [ -z "$(pgrep -f "$long_run")" ] && break
        sleep 0.1
    done
    [ -z "$(pgrep -f "$long_run")" ] && passed=$((passed + 1)) ||
        { fail "$1: a rank outlived the job"; pkill -9 -f "$long_run"; }
}
fault "rank 1 killed" KILL "rank 1 .*(exited on signal 9|Killed)"
fault "rank 1 stalled" STOP "rank 0 \(alpha\): no answer from rank 1 \(beta\) within 5 s"

echo "cluster: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
