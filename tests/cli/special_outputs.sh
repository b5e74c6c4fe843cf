#!/usr/bin/env bash
# Outputs that are not plain new files (issue 20). Only a regular file is ever replaced:
# - a named pipe with a reader gets the bytes and stays a pipe; one nobody reads is refused at once;
# - a chain of symbolic links leads to the file that is written, and the links stay links;
# - /dev/stdout (here through a link of our own to it) and /proc/self/fd/1 put the bytes on stdout;
# - a character device (made here with mknod, as root; /dev/null itself when not root) stays one;
# - a folder is refused (exit 2) before anything is written, so `plan -o P --svg DIR` leaves no P;
# - two outputs on one file, or an output on an input, are refused (exit 2), the input unchanged;
# - a run that disagrees with the reference (exit 1) writes neither -o nor --record-profile;
# - SIGTERM while an output waits on a full pipe leaves no temporary behind.
# Nothing here writes to the system's /dev/null or /dev/stdout as root: a Moira that replaced
# special files would destroy them, so those are reached only through links and nodes in $work.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
source "$(dirname "$0")/lib/expect.bash"
umask 022

ok() { # ok DESCRIPTION -- test-command...
    local what="$1"
    shift 2
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $what"; fi
}
no_temporaries() { ! find "$work" -name '*.tmp.*' | grep -q .; }

op_args=(op gate --model "$golden/gate_v3.json" --inputs "$golden/gate_v3.inputs.safetensors")
plan_args=(plan --topology "$placement/eplb-topology.yaml" --model "$placement/eplb-model.yaml"
    --profile "$placement/eplb-profile.yaml" --slots 2 --redundant 4)
expect 0 "op into a regular file" -- "$moira" "${op_args[@]}" -o "$work/ref.safetensors"

# A named pipe: refused at once without a reader; with one (cat) it gets the same bytes.
mkfifo "$work/fifo"
expect 1 "op into a pipe nobody reads" -- timeout 20 "$moira" "${op_args[@]}" -o "$work/fifo"
expect_stderr "fifo: a named pipe with nobody reading from it" "pipe without a reader"
ok "the pipe is still a pipe" -- [ -p "$work/fifo" ]
timeout 20 cat "$work/fifo" >"$work/from_fifo" &
reader=$!
for _ in $(seq 100); do # until cat has the pipe open
    timeout 20 "$moira" "${op_args[@]}" -o "$work/fifo" >"$work/out" 2>"$work/err"
    code=$?
    grep -q "nobody reading" "$work/err" || break
    sleep 0.1
done
ok "op into a pipe with a reader: exit $code" -- [ "$code" -eq 0 ]
[ -p "$work/fifo" ] || kill "$reader" 2>/dev/null
wait "$reader"
ok "the reader got the output" -- cmp -s "$work/from_fifo" "$work/ref.safetensors"
ok "the pipe is still a pipe after the write" -- [ -p "$work/fifo" ]

# Links: the file at the end of the chain (not there yet, then replaced) is written; links stay.
mkdir "$work/sub"
ln -s sub/target.safetensors "$work/link2"
ln -s link2 "$work/link1"
for round in new replace; do
    expect 0 "op through two links ($round)" -- "$moira" "${op_args[@]}" -o "$work/link1"
    ok "link1 is still a link ($round)" -- [ -L "$work/link1" ]
    ok "link2 is still a link ($round)" -- [ -L "$work/link2" ]
    ok "the target got the output ($round)" -- \
        cmp -s "$work/sub/target.safetensors" "$work/ref.safetensors"
done

# Standard output, through /dev/stdout (by a link of our own) and /proc/self/fd/1, into a file
# and into a pipe.
ln -s /dev/stdout "$work/stdout"
expect 0 "op -o a link to /dev/stdout" -- "$moira" "${op_args[@]}" -o "$work/stdout"
ok "the bytes are on stdout" -- cmp -s "$work/out" "$work/ref.safetensors"
ok "the link is still a link" -- [ -L "$work/stdout" ]
"$moira" "${op_args[@]}" -o /proc/self/fd/1 2>"$work/err" | cat >"$work/piped"
ok "op -o /proc/self/fd/1 into a pipe: exit ${PIPESTATUS[0]}" -- [ "${PIPESTATUS[0]}" -eq 0 ]
ok "the bytes went through the pipe" -- cmp -s "$work/piped" "$work/ref.safetensors"

# A character device is written, never replaced.
if [ "$(id -u)" -eq 0 ] && mknod "$work/null" c 1 3 2>/dev/null; then
    expect 0 "op into a character device" -- "$moira" "${op_args[@]}" -o "$work/null"
    ok "the node is still a character device" -- [ -c "$work/null" ]
    expect 0 "plan and picture into a character device" -- "$moira" "${plan_args[@]}" \
        -o "$work/null" --svg "$work/null"
    ok "the node is still a character device after plan" -- [ -c "$work/null" ]
elif [ "$(id -u)" -ne 0 ]; then
    expect 0 "op -o /dev/null (not root)" -- "$moira" "${op_args[@]}" -o /dev/null
fi
ok "/dev/null is a character device" -- [ -c /dev/null ]

# A folder is refused before anything is written: no plan without its picture.
mkdir "$work/dir.svg"
expect 2 "plan --svg into a folder" -- "$moira" "${plan_args[@]}" -o "$work/p.yaml" \
    --svg "$work/dir.svg"
expect_stderr "dir.svg: is a folder" "the folder is named"
ok "no plan without its picture" -- [ ! -e "$work/p.yaml" ]
expect 0 "plan" -- "$moira" "${plan_args[@]}" -o "$work/p.yaml"
cp "$work/p.yaml" "$work/p.orig"
expect 2 "replan with --svg into a folder" -- "$moira" "${plan_args[@]}" -o "$work/p.yaml" \
    --svg "$work/dir.svg"
ok "the old plan is as it was" -- cmp -s "$work/p.yaml" "$work/p.orig"
expect 2 "op -o a folder" -- "$moira" "${op_args[@]}" -o "$work/sub"

# Collisions: refused with exit 2, nothing replaced.
expect 2 "plan --check P --svg P" -- "$moira" plan --topology "$placement/eplb-topology.yaml" \
    --check "$work/p.yaml" --svg "$work/p.yaml"
expect_stderr "--svg .*p.yaml is the file --check .*p.yaml reads" "the collision is named"
ok "the plan checked is unchanged" -- cmp -s "$work/p.yaml" "$work/p.orig"
expect 2 "plan -o X --svg ./X" -- "$moira" "${plan_args[@]}" -o "$work/x.yaml" \
    --svg "$work/./x.yaml"
expect_stderr "are the same file" "two outputs on one file"
ok "nothing written at X" -- [ ! -e "$work/x.yaml" ]
cp "$golden/gate_v3.inputs.safetensors" "$work/in.safetensors"
ln "$work/in.safetensors" "$work/in.hardlink"
expect 2 "op -o its own --inputs (a hard link to it)" -- "$moira" op gate \
    --model "$golden/gate_v3.json" --inputs "$work/in.safetensors" -o "$work/in.hardlink"
ok "the inputs are unchanged" -- cmp -s "$work/in.safetensors" "$golden/gate_v3.inputs.safetensors"
expect 2 "plan -o its own --profile" -- "$moira" "${plan_args[@]}" \
    -o "$placement/eplb-profile.yaml"
run_args=(run --model "$golden/layer_v3.json" --inputs "$golden/layer_v3.inputs.safetensors"
    --iters 1)
expect 2 "run -o and --record-profile on one file" -- "$moira" "${run_args[@]}" \
    -o "$work/r.out" --record-profile "$work/r.out"
ok "nothing written by the refused run" -- [ ! -e "$work/r.out" ]

if command -v python3 >/dev/null; then
    # A checkpoint whose shared expert is NaN: the run disagrees with the reference (exit 1).
    python3 - "$golden/layer_v3.inputs.safetensors" "$work/nan.safetensors" \
        "$work/big.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header, data = json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])
begin, end = header["mlp.shared_experts.down_proj.weight"]["data_offsets"]
data[begin:end] = struct.pack("<f", float("nan")) * ((end - begin) // 4)
names = {}
for layer in (0, 1):
    for name, entry in header.items():
        if name in ("__metadata__", "hidden_states"):
            continue
        entry = dict(entry)
        entry["data_offsets"] = [o + layer * len(data) for o in entry["data_offsets"]]
        names["model.layers.%d.%s" % (layer, name)] = entry
def write(path, names, payload):
    text = json.dumps(names).encode()
    text += b" " * (-len(text) % 8)
    open(path, "wb").write(struct.pack("<Q", len(text)) + text + payload)
write(sys.argv[2], names, bytes(data) * 2)
tokens = 1024  # 256 KiB of hidden_states: more than a pipe holds
write(sys.argv[3], {"hidden_states": {"dtype": "F32", "shape": [tokens, 64],
                                      "data_offsets": [0, tokens * 256]}},
      struct.pack("<f", 0.25) * (tokens * 64))
PY
    expect 1 "run that disagrees" -- "$moira" "${run_args[@]}" --weights "$work/nan.safetensors" \
        -o "$work/bad.safetensors" --record-profile "$work/bad.yaml"
    check "the run says it disagreed" "DISAGREED" "$work/out"
    expect_stderr "the check failed, so -o and --record-profile were not written" "why not written"
    ok "no output of a run that disagreed" -- [ ! -e "$work/bad.safetensors" ]
    ok "no profile of a run that disagreed" -- [ ! -e "$work/bad.yaml" ]

    # SIGTERM while the output waits on a pipe nobody empties: the profile's temporary (made
    # before the output is written) goes with the process.
    mkdir "$work/sig"
    mkfifo "$work/sig/out.pipe"
    exec 3<>"$work/sig/out.pipe" # a reader that never reads
    "$moira" run --model "$golden/layer_v3.json" --inputs "$work/big.safetensors" --iters 1 \
        -o "$work/sig/out.pipe" --record-profile "$work/sig/profile.yaml" \
        >"$work/sig.out" 2>"$work/sig.err" &
    pid=$!
    seen=0
    for _ in $(seq 600); do # until the temporary exists (the write is then blocked)
        if find "$work/sig" -name '*.tmp.*' | grep -q .; then seen=1 && break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    ok "a temporary exists while the output waits" -- [ "$seen" -eq 1 ]
    sleep 0.2
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
    code=$?
    exec 3<&-
    ok "SIGTERM ended the run: exit $code" -- [ "$code" -eq 143 ]
    ok "no temporary after SIGTERM" -- no_temporaries
    ok "no profile after SIGTERM" -- [ ! -e "$work/sig/profile.yaml" ]
    ok "the pipe is still a pipe after SIGTERM" -- [ -p "$work/sig/out.pipe" ]
else
    echo "special_outputs: no python3: the disagreeing run and the SIGTERM case are skipped"
fi
ok "no temporaries left anywhere" -- no_temporaries

echo "special_outputs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
