# Thin wrapper over CMake: `make run`, `make test`, `make bench`. See README.md.
BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=
DEB_PACKAGES = cmake gcc pkg-config ocl-icd-opencl-dev opencl-headers pocl-opencl-icd \
               libclblast-dev libhwloc-dev libyaml-dev libopenblas-dev

.PHONY: all deps build test run bench sanitize format clean

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

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: deps
	$(MAKE) build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

run: deps
	$(MAKE) build
	$(BUILD)/moira run

bench: deps
	$(MAKE) build
	$(BUILD)/moira bench plan
	$(BUILD)/moira bench moe
	$(BUILD)/moira bench mla

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer, in its own build folder.
sanitize: deps
	$(MAKE) test BUILD=build-asan CMAKE_FLAGS="-DMOIRA_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug"

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cl')

clean:
	rm -rf $(BUILD) build-asan
