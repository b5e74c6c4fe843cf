#!/usr/bin/env bash
# `moira serve` end to end, on a DeepSeek-V3-shaped bf16 checkpoint with the real DeepSeek-V3
# tokenizer:
# - the official `openai` npm client (tests/node/serve_client.mjs) gets, for greedy requests,
#   exactly what `moira generate` prints for the same prompt, alone, streamed, and with 8
#   requests of different lengths at once (batching must not change a token); the prefix cache
#   spares a repeated long system prompt's prefill;
# - the raw SSE framing (curl): data: lines, the finish chunk, the usage chunk, data: [DONE];
# - bad requests are 400 with an OpenAI error naming the field, a full queue 429, an unknown
#   route 404; a client that leaves mid-stream frees its sequence; SIGTERM lets a running
#   request finish and exits 0; bad command lines and model folders exit 2.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
source "$(dirname "$0")/lib/expect.bash"
source "$(dirname "$0")/lib/model_refs.bash"
export NODE_PATH="$refs/npm/node_modules"
if [ ! -d "$NODE_PATH/openai" ]; then
    echo "FAIL: the openai npm package is missing under $refs: run make deps"
    exit 1
fi
command -v curl >/dev/null || { echo "skip: curl is not installed"; exit 77; }
"$bin/moira-test-checkpoint" --out "$work/model" --dtype bf16 --seed 5 \
    --tokenizer "$tokenizer" >/dev/null || { echo "FAIL: writing the checkpoint"; exit 1; }

pid=""
port=""
cleanup() { [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# start NAME [serve options...]: starts the server on a free port and waits until it is ready.
start() {
    local name="$1"
    shift
    "$moira" serve --model "$work/model" --port 0 "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pid=$!
    for _ in $(seq 600); do
        port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$work/$name.err" | sed 's/.*://')
        [ -n "$port" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "localhost:$port/health")" = 200 ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "FAIL: $name: the server did not become ready"
    sed 's/^/  | /' "$work/$name.err" | tail -5
    exit 1
}

# stop: SIGTERM, and the exit code must be 0.
stop() {
    kill -TERM "$pid"
    wait "$pid"
    local code=$?
    pid=""
    if [ "$code" -eq 0 ]; then passed=$((passed + 1)); else fail "SIGTERM: exit $code, expected 0"; fi
}

# What `moira generate` prints for each prompt: the expected answers.
prompts=("The first law of thermodynamics says that" "Hi" "Once upon a time, in a kingdom by the sea, there lived"
         "1, 2, 3, 4," "Translate to French: good morning" "def fibonacci(n):" "A" "The quick brown fox jumps over the lazy dog because")
system=$(for i in $(seq 60); do printf 'Rule %d: answer briefly, cite sources, and never invent facts. ' "$i"; done)
python3 - "$system" >"$work/chats.json" <<'PY'
import json, sys
system = sys.argv[1]
print(json.dumps({
    "chat": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three primes."}],
    "first": [{"role": "system", "content": system}, {"role": "user", "content": "What is water?"}],
    "second": [{"role": "system", "content": system}, {"role": "user", "content": "Why is the sky blue?"}]}))
PY
for k in chat first second; do
    python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))[sys.argv[2]]))' \
        "$work/chats.json" "$k" >"$work/$k.json"
done
i=0
for p in "${prompts[@]}"; do
    n=$((3 + i * 2))
    "$moira" generate --model "$work/model" --prompt "$p" --max-tokens "$n" --temperature 0 \
        --json >"$work/gen$i.json" 2>"$work/err" || { echo "FAIL: generate $i"; cat "$work/err"; exit 1; }
    i=$((i + 1))
done
for k in chat first second; do
    "$moira" generate --model "$work/model" --messages "$work/$k.json" --max-tokens 6 \
        --temperature 0 --json >"$work/gen_$k.json" 2>"$work/err" || { echo "FAIL: generate $k"; cat "$work/err"; exit 1; }
done
python3 - "$work" "${prompts[@]}" >"$work/expected.json" <<'PY'
import json, sys
work, prompts = sys.argv[1], sys.argv[2:]
def answer(path, **extra):
    g = json.load(open(path))
    return dict(extra, text=g["text"], finish_reason=g["finish_reason"],
                prompt_tokens=len(g["prompt_ids"]), completion_tokens=len(g["ids"]))
conv = lambda k: json.load(open(f"{work}/{k}.json"))
first = answer(f"{work}/gen_first.json", messages=conv("first"), max_tokens=6)
print(json.dumps({
    "prompts": [answer(f"{work}/gen{i}.json", prompt=p, max_tokens=3 + 2 * i) for i, p in enumerate(prompts)],
    "chats": [answer(f"{work}/gen_chat.json", messages=conv("chat"), max_tokens=6)],
    "prefix": {"first": first, "second": answer(f"{work}/gen_second.json", messages=conv("second"), max_tokens=6),
               "system_tokens": first["prompt_tokens"] - 30}}))
PY

# The OpenAI client: 4 sequences at a time, so the 8 concurrent requests also queue.
start client --max-batch 4
if node "$root/tests/node/serve_client.mjs" "http://127.0.0.1:$port" model "$work/expected.json" >"$work/client" 2>&1; then
    passed=$((passed + 1))
else
    fail "the openai client"
fi
grep -E '^(FAIL|prefix)' "$work/client" | sed 's/^/  /'
grep -q '^ok' "$work/client" || sed 's/^/  | /' "$work/client" | tail -8

# The expert load the requests routed: every MoE layer counts k experts per token the engine ran
# (prompt tokens not spared by the prefix cache, and each generated token but the last of each
# request), and `moira plan --profile` reads it.
curl -s "localhost:$port/v1/moira/expert-load" >"$work/load.yaml"
curl -s "localhost:$port/metrics" >"$work/metrics"
python3 - "$work/load.yaml" "$work/metrics" "$work/model/config.json" >"$work/load.check" 2>&1 <<'PY'
import json, re, sys
text, metrics, config = open(sys.argv[1]).read(), open(sys.argv[2]).read(), json.load(open(sys.argv[3]))
m = lambda name: float(re.search("^" + re.escape(name) + r" (\S+)$", metrics, re.M).group(1))
ran = (m("moira_prompt_tokens_total") - m("moira_prompt_tokens_cached_total")
       + m("moira_generation_tokens_total") - m('moira_requests_total{outcome="ok"}'))
layers = re.findall(r"\{layer: (\d+), load: \[([^\]]*)\]\}", text)
moe = [l for l in range(config["num_hidden_layers"]) if l >= config["first_k_dense_replace"]]
assert [int(l) for l, _ in layers] == moe, (layers, moe)
for l, load in layers:
    counts = [float(x) for x in load.split(",")]
    assert len(counts) == config["n_routed_experts"]
    assert sum(counts) == ran * config["num_experts_per_tok"], (l, sum(counts), ran)
print("ok", ran)
PY
check "expert load: k per token run, in every MoE layer" '^ok [1-9]' "$work/load.check"
expect 0 "moira plan reads the observed expert load" -- "$moira" plan \
    --topology "$root/configs/topologies/local-cpu.yaml" --model "$work/model/config.json" \
    --profile "$work/load.yaml"

# Raw SSE framing.
body='{"model": "model", "prompt": "Hi", "max_tokens": 3, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}'
curl -sN "localhost:$port/v1/completions" -d "$body" >"$work/sse"
python3 - "$work/sse" >"$work/sse.check" 2>&1 <<'PY'
import json, sys
raw = open(sys.argv[1]).read()
assert raw.endswith("data: [DONE]\n\n"), "the stream does not end with data: [DONE]"
events = raw.split("\n\n")[:-1]
assert all(e.startswith("data: ") and "\n" not in e for e in events), "an event is not one data: line"
chunks = [json.loads(e[6:]) for e in events[:-1]]
assert all(c["object"] == "text_completion" for c in chunks)
finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "length", finish
assert not chunks[-1]["choices"] and chunks[-1]["usage"]["completion_tokens"] == 3, chunks[-1]
assert all(c["usage"] is None for c in chunks[:-1]), "usage before the last chunk"
print("ok")
PY
check "SSE framing" '^ok$' "$work/sse.check"

# Bad requests: 400 with an OpenAI error naming the field.
bad_request() { # bad_request DESCRIPTION PARAM BODY [PATH]
    local code
    code=$(curl -s -o "$work/resp" -w '%{http_code}' "localhost:$port${4:-/v1/completions}" -d "$3")
    if [ "$code" = 400 ] && python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["error"]; assert e["type"]=="invalid_request_error" and e["message"] and (e["param"] or "")==sys.argv[2]' "$work/resp" "$2" 2>/dev/null; then
        passed=$((passed + 1))
    else
        fail "$1: HTTP $code, $(head -c 300 "$work/resp")"
    fi
}
bad_request "malformed JSON" "" '{"prompt": "x",'
bad_request "not an object" "" '[1, 2]'
bad_request "temperature of the wrong type" temperature '{"prompt": "x", "temperature": "hot"}'
bad_request "max_tokens 0" max_tokens '{"prompt": "x", "max_tokens": 0}'
bad_request "max_tokens beyond the context" max_tokens '{"prompt": "x", "max_tokens": 100000}'
bad_request "an unknown model" model '{"model": "gpt-4", "prompt": "x"}'
bad_request "no prompt" prompt '{"max_tokens": 2}'
bad_request "a token id outside the vocabulary" prompt '{"prompt": [1, 999999]}'
bad_request "n = 2" n '{"prompt": "x", "n": 2}'
bad_request "five stop strings" stop '{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}'
bad_request "empty messages" messages '{"messages": []}' /v1/chat/completions
bad_request "a message without a role" messages '{"messages": [{"content": "hi"}]}' /v1/chat/completions
bad_request "stream not a boolean" stream '{"prompt": "x", "stream": "yes"}'
head -c 5000000 /dev/zero | tr '\0' 'a' >"$work/big"
code=$(curl -s -o "$work/resp" -w '%{http_code}' "localhost:$port/v1/completions" --data-binary @"$work/big")
[ "$code" = 400 ] && grep -q "larger than" "$work/resp" && passed=$((passed + 1)) || fail "a 5 MB body: HTTP $code"
code=$(curl -s -o "$work/resp" -w '%{http_code}' -H 'Transfer-Encoding: chunked' "localhost:$port/v1/completions" --data-binary @"$work/big")
[ "$code" = 400 ] && passed=$((passed + 1)) || fail "a 5 MB chunked body: HTTP $code"
# A 5 MB body sent whole, without waiting for 100 Continue (as Python's and Node's clients do):
# still a 400, not a broken connection.
python3 - "$port" >"$work/big.check" 2>&1 <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
c.request("POST", "/v1/completions", body=b"a" * (5 << 20), headers={"Content-Type": "application/json"})
r = c.getresponse()
print(r.status, json.loads(r.read())["error"]["type"])
PY
check "a 5 MB body sent whole is a 400" '^400 invalid_request_error$' "$work/big.check"
code=$(curl -s -o /dev/null -w '%{http_code}' "localhost:$port/v1/nothing")
[ "$code" = 404 ] && passed=$((passed + 1)) || fail "an unknown route: HTTP $code"
code=$(curl -s -o /dev/null -w '%{http_code}' "localhost:$port/v1/completions")
[ "$code" = 405 ] && passed=$((passed + 1)) || fail "GET /v1/completions: HTTP $code"

# Connections that send nothing, or half a request, do not hold up anyone else: with 30 of them
# open, a request is still answered at once.
idle=()
for i in $(seq 30); do
    exec {fd}<>"/dev/tcp/127.0.0.1/$port" && idle+=("$fd")
    [ "$i" -le 5 ] && printf 'POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"pro' >&"$fd"
done
code=$(curl -s -m 20 -o "$work/resp" -w '%{http_code}' "localhost:$port/v1/completions" \
    -d '{"prompt": "Hi", "max_tokens": 2, "temperature": 0}')
[ "$code" = 200 ] && passed=$((passed + 1)) || fail "a request beside 30 idle connections: HTTP $code"
for fd in "${idle[@]}"; do exec {fd}>&-; done

# A client that leaves mid-stream: its sequence is freed (running back to 0, counted cancelled).
long='{"prompt": "Tell me a long story", "max_tokens": 3000, "temperature": 0, "stream": true}'
timeout 1 curl -sN "localhost:$port/v1/completions" -d "$long" >/dev/null
for _ in $(seq 50); do
    curl -s "localhost:$port/metrics" >"$work/metrics"
    grep -q '^moira_requests_running 0$' "$work/metrics" && break
    sleep 0.1
done
check "a disconnected stream leaves the batch" '^moira_requests_running 0$' "$work/metrics"
check "and is counted cancelled" '^moira_requests_total\{outcome="cancelled"\} [1-9]' "$work/metrics"
check "metrics: time to first token" '^moira_time_to_first_token_seconds_count [1-9]' "$work/metrics"
check "metrics: inter-token latency" '^moira_inter_token_latency_seconds_bucket\{le="\+Inf"\} [1-9]' "$work/metrics"
check "metrics: generated tokens" '^moira_generation_tokens_total [1-9]' "$work/metrics"
stop

# More latent caches than sequences generating: one sequence at a time, three caches. A
# conversation's prefix survives an unrelated request in between, and the next conversation with
# the same system prompt starts from it.
start caches --max-batch 1 --cache-slots 3
chat_body() { python3 -c 'import json,sys; print(json.dumps({"messages": json.load(open(sys.argv[1])), "max_tokens": 2, "temperature": 0}))' "$1"; }
curl -s "localhost:$port/v1/chat/completions" -d "$(chat_body "$work/first.json")" >/dev/null
curl -s "localhost:$port/v1/completions" -d '{"prompt": "Something else entirely", "max_tokens": 2}' >/dev/null
curl -s "localhost:$port/v1/chat/completions" -d "$(chat_body "$work/second.json")" >"$work/resp"
python3 -c 'import json,sys; u=json.load(open(sys.argv[1]))["usage"]; print("cached", u["prompt_tokens_details"]["cached_tokens"], "of", u["prompt_tokens"])' "$work/resp" >"$work/cached" 2>&1
python3 - "$work/cached" "$work/expected.json" >"$work/cached.check" 2>&1 <<'PY'
import json, sys
words = open(sys.argv[1]).read().split()
want = json.load(open(sys.argv[2]))["prefix"]["system_tokens"]
assert words[0] == "cached" and int(words[1]) >= want, (words, want)
print("ok")
PY
check "a kept cache outlives the request between" '^ok$' "$work/cached.check"
stop
expect 2 "fewer caches than sequences" -- "$moira" serve --model "$work/model" --max-batch 4 --cache-slots 2

# Overload: one sequence, one queued request; more are 429. SIGTERM while one runs and one waits:
# the running one finishes (200), the waiting one is refused (503), and the server exits 0.
start overload --max-batch 1 --max-queue 1 --shutdown-grace 120
slow='{"prompt": "Count", "max_tokens": 1500, "temperature": 0, "ignore_eos": true}'
# wait_metric PATTERN: until /metrics shows it (at most 15 s).
wait_metric() {
    for _ in $(seq 300); do
        curl -s "localhost:$port/metrics" | grep -q "$1" && return 0
        sleep 0.05
    done
    return 1
}
for i in 1 2 3 4; do
    curl -s -o /dev/null -w '%{http_code}\n' "localhost:$port/v1/completions" -d "$slow" >"$work/code$i" &
    [ "$i" -eq 1 ] && wait_metric '^moira_requests_running 1$'
    [ "$i" -eq 2 ] && wait_metric '^moira_requests_queued 1$'
done
for _ in $(seq 300); do
    [ "$(cat "$work"/code* 2>/dev/null | wc -l)" -ge 2 ] && break
    sleep 0.05
done
kill -TERM "$pid"
wait "$pid"
code=$?
pid=""
[ "$code" -eq 0 ] && passed=$((passed + 1)) || fail "SIGTERM with requests running: exit $code"
wait
codes=$(cat "$work"/code* | sort | tr '\n' ' ')
[ "$codes" = "200 429 429 503 " ] && passed=$((passed + 1)) ||
    fail "429 for a full queue, then SIGTERM: the running request finishes, the queued one is 503: got $codes"
check "the server says it stopped" 'stopped after' "$work/overload.err"

# --max-batch holds with more caches than sequences: three requests, one at a time.
start limit --max-batch 1 --cache-slots 3 --shutdown-grace 0 --receive-timeout 2
# A client that dribbles its request a byte at a time is cut at the receive deadline (2 s), though
# each byte restarts the idle timeout.
python3 - "$port" >"$work/dribble" 2>&1 <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
start, request = time.monotonic(), b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 100
s.settimeout(0.5)
for byte in request:
    try:
        s.sendall(bytes([byte]))
        if s.recv(1) == b"":
            break
    except socket.timeout:
        continue
    except OSError:
        break
print("cut after %.1f s" % (time.monotonic() - start))
PY
python3 -c 'import sys; t = float(open(sys.argv[1]).read().split()[2]); sys.exit(0 if 1.5 <= t <= 6 else 1)' "$work/dribble" &&
    passed=$((passed + 1)) || fail "a dribbling client is cut at the receive deadline: $(cat "$work/dribble")"
for i in 1 2 3; do
    curl -s -o /dev/null "localhost:$port/v1/completions" -d "$slow" &
done
wait_metric '^moira_requests_running 1$'
check "and the others wait" '^moira_requests_queued 2$' <(curl -s "localhost:$port/metrics")
most=0
for _ in $(seq 40); do
    n=$(curl -s "localhost:$port/metrics" | sed -n 's/^moira_requests_running //p')
    [ "${n:-0}" -gt "$most" ] && most=$n
    sleep 0.05
done
[ "$most" -eq 1 ] && passed=$((passed + 1)) || fail "--max-batch 1 --cache-slots 3 ran $most at once"
stop
wait

# The layers where a plan puts them (routed experts over CPU memory, opencl:0 and npu:0): the
# answer is generate's with the same plan, and the expert load comes from the executor's routing.
if ! "$moira" devices 2>/dev/null | grep -q '^opencl:0'; then
    echo "skip: no opencl:0, so no server over a plan"
else
    sed -n '/^moira_plan: 1/,/^YAML$/p' "$root/tests/cli/generate.sh" | grep -v '^YAML$' >"$work/mixed.yaml"
    placed=(--topology "$data/exec/topology.yaml" --plan "$work/mixed.yaml")
    "$moira" generate --model "$work/model" --prompt "Hello there" --max-tokens 5 --temperature 0 \
        --json "${placed[@]}" >"$work/gen_placed.json" 2>"$work/err"
    start placed --max-batch 2 "${placed[@]}"
    curl -s "localhost:$port/v1/completions" \
        -d '{"prompt": "Hello there", "max_tokens": 5, "temperature": 0}' >"$work/placed.json"
    curl -s "localhost:$port/v1/moira/expert-load" >"$work/placed_load.yaml"
    curl -s "localhost:$port/metrics" >"$work/placed_metrics"
    check "metrics: an expert device's busy fraction" \
        '^moira_device_busy_fraction\{device="opencl:0",role="experts"\} 0\.0*[1-9]' "$work/placed_metrics"
    check "metrics: the engine's device" '^moira_device_busy_fraction\{device="cpu:0",role="engine"\} 0\.0*[1-9]' "$work/placed_metrics"
    python3 - "$work/gen_placed.json" "$work/placed.json" "$work/placed_load.yaml" \
        "$work/model/config.json" >"$work/placed.check" 2>&1 <<'PY'
import json, re, sys
want, got = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
k = json.load(open(sys.argv[4]))["num_experts_per_tok"]
assert got["choices"][0]["text"] == want["text"], (got, want["text"])
ran = len(want["prompt_ids"]) + len(want["ids"]) - 1
sums = [sum(float(x) for x in load.split(",")) for load in re.findall(r"load: \[([^\]]*)\]", open(sys.argv[3]).read())]
assert sums and all(s == ran * k for s in sums), (sums, ran)
# Each expert device's speed per step, which plan --profile costs it with.
assert re.search(r"speeds:\n- \{device: [^,]+, busy_us: [0-9.e+]+, predicted_us: [0-9.e+]+\}",
                 open(sys.argv[3]).read()), open(sys.argv[3]).read()
print("ok")
PY
    check "a placed model answers as generate does, and counts its expert load" '^ok$' "$work/placed.check"
    stop
fi

# Bad command lines and model folders: exit 2 before anything listens.
expect 2 "no --model" -- "$moira" serve --port 0
expect 2 "an unknown option" -- "$moira" serve --model "$work/model" --frobnicate
expect 2 "a port out of range" -- "$moira" serve --model "$work/model" --port 70000
expect 2 "not a model directory" -- "$moira" serve --model "$work/nothing" --port 0
expect_stderr "nothing" "the missing folder is named"
expect 2 "a host that is not an address" -- "$moira" serve --model "$work/model" --host nowhere --port 0

echo "serve: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
