#!/usr/bin/env bash
# `moira compare A B` against hand-computed answers. The files are written here by Python's
# standard library (struct + json), not by Moira's writer, with values whose NMSE is exact
# arithmetic: a = [1, 2, 3, 4] against b = [1, 2, 3, 5] is 1/30 (sum(a^2) = 30, one difference
# of 1); against [1, 2, 3, 4.03125] it is (1/32)^2 / 30 = 1/30720. Also: bf16 and f16 files get
# their dtype's limit, [1, T, D] pairs with [T, D], names only in one file, NaN/Inf mismatches,
# exact integers, --json read back by Python's json module, bad usage and bad files (exit 2), and
# Moira's gate output against the PyTorch golden answer.
set -u
source "$(dirname "$0")/lib/harness.bash" "$@"
source "$(dirname "$0")/lib/expect.bash"
command -v python3 >/dev/null || { echo "compare: python3 is not installed"; exit 77; }

python3 - "$work" <<'EOF'
import json, struct, sys

work = sys.argv[1]

def write(name, tensors, header_text=None):
    """A safetensors file: 8-byte little-endian header length, JSON header, data."""
    header, data = {}, b""
    for tname, dtype, shape, raw in tensors:
        header[tname] = {"dtype": dtype, "shape": shape,
                         "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = (header_text or json.dumps(header)).encode()
    with open(f"{work}/{name}.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)

def f32(*v): return struct.pack(f"<{len(v)}f", *v)
def f64(*v): return struct.pack(f"<{len(v)}d", *v)
def f16(*v): return struct.pack(f"<{len(v)}e", *v)
def i32(*v): return struct.pack(f"<{len(v)}i", *v)
def i64(*v): return struct.pack(f"<{len(v)}q", *v)
def u64(*v): return struct.pack(f"<{len(v)}Q", *v)
def bf16(*v):  # the top half of the f32 bits: exact for these values
    return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", x))[0])[2:] for x in v)

nan, inf = float("nan"), float("inf")
write("a", [("x", "F32", [4], f32(1, 2, 3, 4))])
write("off", [("x", "F32", [4], f32(1, 2, 3, 5))])
write("a64", [("pad", "F32", [1], f32(0)), ("x", "F64", [4], f64(1, 2, 3, 4))])  # misaligned
write("bf16_near", [("x", "BF16", [4], bf16(1, 2, 3, 4.03125))])
write("bf16_far", [("x", "BF16", [4], bf16(1, 2, 3, 5))])
write("f16_near", [("x", "F16", [4], f16(1, 2, 3, 4.03125))])
write("xi", [("x", "I32", [4], i32(1, 2, 3, 4))])
write("names", [("x", "F32", [4], f32(1, 2, 3, 4)), ("z", "F32", [1], f32(7))])
write("h1td", [("h", "F32", [1, 2, 3], f32(1, 2, 3, 4, 5, 6))])
write("h2t1d", [("h", "F32", [2, 1, 3], f32(1, 2, 3, 4, 5, 6))])
write("htd", [("h", "F32", [2, 3], f32(1, 2, 3, 4, 5, 7))])  # sum(a^2) = 91: NMSE 1/91
write("hdt", [("h", "F32", [3, 2], f32(1, 2, 3, 4, 5, 6))])
write("n", [("n", "F32", [4], f32(1, nan, 3, inf))])
write("n_same", [("n", "F32", [4], f32(1, nan, 3, inf))])
write("n_nan_lost", [("n", "F32", [4], f32(1, 2, 3, inf))])
write("n_inf_sign", [("n", "F32", [4], f32(1, nan, 3, -inf))])
write("i64", [("i", "I64", [3], i64(1, 2, 3)), ("m", "I64", [1], i64(-1))])
write("i32", [("i", "I32", [3], i32(1, 2, 3)), ("m", "U64", [1], u64(2**64 - 1))])
write("i32_off", [("i", "I32", [3], i32(1, 2, 4)), ("m", "I64", [1], i64(-1))])
write("mixed_a", [("x", "F32", [4], f32(1, 2, 3, 4)), ("h", "F32", [1, 2, 3], f32(1, 2, 3, 4, 5, 6)),
                  ("i", "I64", [3], i64(1, 2, 3)), ("only_a", "F32", [1], f32(1))])
write("mixed_b", [("only_b", "F32", [1], f32(1)), ("i", "I32", [3], i32(1, 2, 3)),
                  ("h", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6)), ("x", "F32", [4], f32(1, 2, 3, 5))])
# fp8 e4m3 bytes 0x38 0x40 0x30 0x3c are 1, 2, 0.5, 1.5; the block scale 2 makes them 2, 4, 1, 3.
write("fp8", [("w.weight", "F8_E4M3", [2, 2], bytes([0x38, 0x40, 0x30, 0x3C])),
              ("w.weight_scale_inv", "F32", [1, 1], f32(2))])
write("fp8_f32", [("w.weight", "F32", [2, 2], f32(2, 4, 1, 3)),
                  ("w.weight_scale_inv", "F32", [1, 1], f32(2))])
# "x" twice: once as a tensor Moira reads and once as one it keeps aside.
write("twice", [], '{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                   '"x": {"dtype": "F64", "shape": [1], "data_offsets": [4, 12]}}')
with open(f"{work}/twice.safetensors", "ab") as f:
    f.write(f32(1) + f64(1))
EOF
[ -e "$work/twice.safetensors" ] || { echo "compare: could not write the test files"; exit 1; }
f() { echo "$work/$1.safetensors"; }

# json_check DESCRIPTION EXPRESSION: EXPRESSION holds for r (the --json output just printed) and
# t (its tensors by name).
json_check() {
    if python3 -c 'import json, sys
r = json.load(open(sys.argv[1])); t = {x["name"]: x for x in r["tensors"]}
sys.exit(0 if eval(sys.argv[2]) else 1)' "$work/out" "$2"; then
        passed=$((passed + 1))
    else
        fail "$1: not ($2)"
        sed 's/^/  | /' "$work/out" | head -8
    fi
}
near() { echo "abs($1 - ($2)) <= 1e-6 * abs($2)"; }

# The same values agree; 1/30 is far above f32's limit (1e-6) and is what --limit is held to.
expect 0 "a file against itself" -- "$moira" compare "$(f a)" "$(f a)"
check "a file against itself agrees" "ok +x .*nmse 0 +max_abs 0" "$work/out"
expect 1 "[1,2,3,4] vs [1,2,3,5]" -- "$moira" compare "$(f a)" "$(f off)"
check "NMSE 1/30 and max_abs 1 printed" "FAIL +x +nmse 0\.03333 +max_abs 1 +limit 1e-06" "$work/out"
check "the summary says they differ" "DIFFER" "$work/out"
expect 0 "--limit 0.034 admits 1/30" -- "$moira" compare "$(f a)" "$(f off)" --limit 0.034
expect 1 "--limit 0.033 does not" -- "$moira" compare --limit 0.033 "$(f a)" "$(f off)"
expect 1 "F64 reference (stored misaligned) against F32" -- "$moira" compare "$(f a64)" "$(f off)"
check "F64 against F32 is 1/30 too" "FAIL +x +nmse 0\.03333 .*F64 \[4\] vs F32 \[4\]" "$work/out"
expect 1 "F64 against F32 of the same values, and a name only in A" -- \
    "$moira" compare "$(f a64)" "$(f a)" --limit 0
check "F64 x agrees with F32 x exactly" "^ok +x +nmse 0 +max_abs 0 +limit 0 +F64" "$work/out"
check "pad is only in A" "^only in A: pad$" "$work/out"

# bf16 and f16 get their dtype's limit unless --limit says otherwise.
expect 0 "bf16 off by 1/32: NMSE 1/30720 within bf16's 2e-3" -- \
    "$moira" compare "$(f a)" "$(f bf16_near)" --json
json_check "bf16 NMSE" "$(near 't["x"]["nmse"]' 1/30720) and t['x']['limit'] == 2e-3"
json_check "bf16 dtypes" "t['x']['dtype_a'] == 'F32' and t['x']['dtype_b'] == 'BF16'"
expect 1 "the same bf16 file at --limit 1e-6" -- \
    "$moira" compare "$(f a)" "$(f bf16_near)" --limit 1e-6
expect 1 "bf16 off by 1: 1/30 above bf16's limit" -- "$moira" compare "$(f a)" "$(f bf16_far)"
# With the f16 file as A (the reference), the denominator is its own: 1 + 4 + 9 + 4.03125^2.
expect 0 "f16 off by 1/32 within f16's 1e-4" -- "$moira" compare "$(f f16_near)" "$(f a)" --json
json_check "f16 limit" "$(near 't["x"]["nmse"]' '1 / 1024 / (14 + 4.03125**2)') and \
t['x']['limit'] == 1e-4"
expect 0 "fp8 with its block scale against F32" -- "$moira" compare "$(f fp8)" "$(f fp8_f32)" --json
json_check "fp8 scaled, fp8's limit" "t['w.weight']['nmse'] == 0 and t['w.weight']['limit'] == 2e-2"

# Shapes: a batch-1 dump [1, T, D] (or [B, T, D]) holds the rows of [T, D]; [D, T] does not.
expect 1 "[1,2,3] vs [2,3], one element 6 -> 7" -- "$moira" compare "$(f h1td)" "$(f htd)"
check "NMSE 1/91 over the shapes" "FAIL +h +nmse 0\.01099 .*F32 \[1, 2, 3\] vs F32 \[2, 3\]" \
    "$work/out"
expect 0 "[1,2,3] vs [2,3] at --limit 0.011" -- \
    "$moira" compare "$(f h1td)" "$(f htd)" --limit 0.011
expect 0 "[2,1,3] vs [2,3] at --limit 0.011" -- \
    "$moira" compare "$(f h2t1d)" "$(f htd)" --limit 0.011
expect 1 "[3,2] vs [2,3]" -- "$moira" compare "$(f hdt)" "$(f htd)" --limit 1
check "a real shape mismatch is named" "FAIL +h .*: shapes differ" "$work/out"

# Names only in one file fail the comparison and are listed.
expect 1 "z only in B" -- "$moira" compare "$(f a)" "$(f names)"
check "z listed" "^only in B: z$" "$work/out"
check "x still compared" "^ok +x " "$work/out"

# NaN against NaN and Inf against the same Inf agree; any other NaN/Inf pairing fails whatever
# the limit.
expect 0 "NaN and Inf in the same places" -- "$moira" compare "$(f n)" "$(f n_same)"
expect 1 "a NaN against 2" -- "$moira" compare "$(f n)" "$(f n_nan_lost)" --limit 1e9
check "the NaN mismatch is located" "1 NaN/Inf mismatch, the first at \[1\]: A nan, B 2" \
    "$work/out"
expect 1 "Inf against -Inf" -- "$moira" compare "$(f n)" "$(f n_inf_sign)" --limit 1e9

# Integers compare exactly, across widths; a large --limit changes nothing.
expect 1 "I64 against I32, and I64 -1 against U64 2^64-1" -- \
    "$moira" compare "$(f i64)" "$(f i32)" --limit 1e9 --json
json_check "exact integers" "t['i']['limit'] == 0 and t['i']['ok'] and t['i']['dtype_b'] == 'I32'"
json_check "-1 is not 2^64-1" \
    "not t['m']['ok'] and t['m']['problem'].endswith('A -1, B 18446744073709551615')"
expect 1 "I32 [1,2,4] against I64 [1,2,3]" -- "$moira" compare "$(f i64)" "$(f i32_off)" \
    --limit 1e9
check "the differing integer is named" "1 of 3 elements differ, the first at \[2\]: A 3, B 4" \
    "$work/out"
expect 1 "F32 against I32" -- "$moira" compare "$(f a)" "$(f xi)"
check "integers against floats is named" "one holds integers" "$work/out"

# --json: one object, read back by Python.
expect 1 "--json over a mixed pair" -- "$moira" compare "$(f mixed_a)" "$(f mixed_b)" --json
json_check "x: NMSE 1/30, max_abs 1" \
    "$(near 't["x"]["nmse"]' 1/30) and t['x']['max_abs'] == 1 and t['x']['limit'] == 1e-6"
json_check "x failed" "t['x']['ok'] is False and t['x']['shape_a'] == [4] == t['x']['shape_b']"
json_check "h paired across shapes" \
    "t['h']['ok'] and t['h']['shape_a'] == [1, 2, 3] and t['h']['shape_b'] == [2, 3]"
json_check "i exact" "t['i']['ok'] and t['i']['nmse'] == 0 and t['i']['dtype_a'] == 'I64'"
json_check "only in one file" "r['only_in_a'] == ['only_a'] and r['only_in_b'] == ['only_b']"
json_check "overall" "r['ok'] is False and [x['name'] for x in r['tensors']] == ['x', 'h', 'i']"
expect 1 "--json with a name only in B" -- "$moira" compare "$(f a)" "$(f a64)" --json --limit 0
json_check "only_in_b lists pad" "r['only_in_b'] == ['pad'] and r['ok'] is False"

# Bad usage and bad files: exit 2, the file named, nothing on stdout.
head -c $(($(stat -c %s "$(f mixed_a)") - 3)) "$(f mixed_a)" >"$work/truncated.safetensors"
expect 2 "a truncated file" -- "$moira" compare "$(f a)" "$work/truncated.safetensors"
expect_stderr "truncated\.safetensors" "the truncated file is named"
[ ! -s "$work/out" ] && passed=$((passed + 1)) || fail "a truncated file printed a partial report"
expect 2 "a missing file" -- "$moira" compare "$work/missing.safetensors" "$(f a)"
expect_stderr "missing\.safetensors" "the missing file is named"
expect 2 "a name twice in one file" -- "$moira" compare "$(f twice)" "$(f a)"
expect_stderr "twice\.safetensors.*tensor \"x\" appears twice" "the duplicate is named"
expect 2 "one file" -- "$moira" compare "$(f a)"
expect 2 "three files" -- "$moira" compare "$(f a)" "$(f a)" "$(f a)"
expect 2 "--limit abc" -- "$moira" compare "$(f a)" "$(f a)" --limit abc
expect 2 "--limit -1" -- "$moira" compare "$(f a)" "$(f a)" --limit -1
expect 2 "--limit without a value" -- "$moira" compare "$(f a)" "$(f a)" --limit
expect 2 "unknown option" -- "$moira" compare "$(f a)" "$(f a)" --bogus
expect 0 "--help" -- "$moira" compare --help
check "--help shows the usage" "usage: moira compare A.safetensors B.safetensors" "$work/out"

# What users do: Moira's gate against the PyTorch golden answer (topk_idx I32 exactly,
# topk_weight and selection_scores F32 within 1e-6).
expect 0 "gate_v3 on cpu:0" -- "$moira" op gate --backend cpu:0 --model "$golden/gate_v3.json" \
    --inputs "$golden/gate_v3.inputs.safetensors" -o "$work/gate.safetensors"
expect 0 "gate_v3 output against the golden answer" -- "$moira" compare \
    "$golden/gate_v3.expected.safetensors" "$work/gate.safetensors" --json
json_check "golden gate" "t['topk_idx']['ok'] and t['topk_idx']['limit'] == 0 and \
t['topk_weight']['ok'] and t['topk_weight']['nmse'] < 1e-6 and r['ok']"

echo "compare: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
