# Shared by the CLI tests that write Hugging Face model folders (sourced after harness.bash): the
# repository root, the test tools beside `moira`, and the DeepSeek-V3 tokenizer files `make deps`
# installs under .deps (or $MOIRA_REFS). Missing files fail the test: `make test` installs them.
# After sourcing: $root, $refs, $bin, $tokenizer.
root=$(cd "$data/../.." && pwd)
refs="${MOIRA_REFS:-$root/.deps}"
bin=$(dirname "$moira")
tokenizer="$refs/deepseek-v3"
if [ ! -f "$tokenizer/tokenizer.json" ]; then
    echo "FAIL: the DeepSeek-V3 tokenizer files are missing under $refs: run make deps"
    exit 1
fi
