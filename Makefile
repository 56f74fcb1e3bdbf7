# vmexec: build, guest images, tests, fuzzing and benchmarks.
#   make run     deps, build and images as needed, then the examples in a guest with the shards attached
#   make test    the whole suite: test-unit, test-guests, test-cli, test-api, then test-other-arch
#   make test-unit    host-only tests (C vectors, Swift units, a machine double): no images, about a minute
#   make test-guests  real guests under QEMU (builds the images first)
#   make test-cli     the vmexec command on real guests (builds the images first)
#   make test-api     docs/openapi.yaml validated, then schemathesis against a live daemon
#   make test-other-arch  the real-guest and daemon suites on the other architecture (aarch64 beside x86_64)
#   make images  guest kernel, initramfs, base root file system and the SDK and libs shards for ARCH
#   make check   Swift warnings as errors, swift format lint (.swift-format), the init's C with -Werror
#   make fuzz    a bounded libFuzzer run over the init's frame parser
#   make bench   benchmarks against qemu-guest-agent (not part of make test)

ARCH ?= x86_64
IMG := images/build/$(ARCH)
SWIFT ?= swift
# Every debug build with warnings as errors (dependencies' warnings are SwiftPM's to
# suppress): make check's build is then the very build make test uses, not a second one.
SWIFT_BUILD = $(SWIFT) build -Xswiftc -warnings-as-errors
VMEXEC := .build/debug/vmexec
# Modules the guest needs are listed in images/guest-modules.txt.
GUEST_MODULES = $(shell grep -v '^\#' images/guest-modules.txt)
INIT_SRC := $(wildcard Sources/InitGuest/*.c Sources/InitGuest/*.h Sources/InitGuest/include/*.h)
CFLAGS_STRICT := -std=c11 -Wall -Wextra -Werror
FUZZ_SECONDS ?= 60
# The libs shard: numpy from PyPI's wheel for the guest's CPython (3.11, bookworm's).
NUMPY_VERSION ?= 1.26.4
WHEELS := images/build/cache/wheels/$(ARCH)
SDK_SHARD := $(IMG)/sdk-python.shard
NODE_SHARD := $(IMG)/sdk-node.shard
LIBS_SHARD := $(IMG)/libs-numpy-$(NUMPY_VERSION).shard
MPL_VERSION := $(shell sed -n 's/^matplotlib==//p' images/matplotlib-requirements.txt)
MPL_SHARD := $(IMG)/libs-matplotlib-$(MPL_VERSION).shard

ifeq ($(ARCH),x86_64)
INIT_CC ?= musl-gcc
else
INIT_CC ?= $(ARCH)-linux-gnu-gcc
endif

.PHONY: all deps build build-tests images images-other-arch run test test-unit test-guests test-cli test-api test-other-arch test-c check format fuzz bench bench-images clean clean-images

all: build images

deps:
	@images/deps.sh $(ARCH)

build:
	$(SWIFT_BUILD) --product vmexec

# Every target, the test bundles and the vmexec binary the CLI suites run.
build-tests:
	$(SWIFT_BUILD) --build-tests

# ---- guest images (make-style: nothing is rebuilt that is up to date) ----

images: deps $(IMG)/kernel.version $(IMG)/initramfs.cpio $(IMG)/rootfs.sqfs $(SDK_SHARD) $(NODE_SHARD) $(LIBS_SHARD) \
  $(MPL_SHARD)

$(IMG)/kernel.version: images/kernel.sh images/extract-vmlinux.py
	@mkdir -p $(IMG)
	images/kernel.sh $(ARCH) $(IMG)

$(IMG)/vmexec-init: $(INIT_SRC)
	@mkdir -p $(IMG)
	$(INIT_CC) $(CFLAGS_STRICT) -Os -static -ISources/InitGuest/include Sources/InitGuest/*.c -o $@

$(IMG)/noop: images/noop.c
	@mkdir -p $(IMG)
	$(INIT_CC) $(CFLAGS_STRICT) -Os -static $< -o $@

# The warm interpreter's client (images/zygote-client.c), shipped in the SDK shard.
$(IMG)/zygote-client: images/zygote-client.c
	@mkdir -p $(IMG)
	$(INIT_CC) $(CFLAGS_STRICT) -Os -static $< -o $@

$(IMG)/initramfs.cpio: $(IMG)/vmexec-init $(IMG)/kernel.version images/initramfs.sh images/modorder.py images/guest-modules.txt
	images/initramfs.sh $(IMG) $(IMG)/vmexec-init $@ $(GUEST_MODULES)

# One debootstrap gives the base (no Python) and, installed into copies, the
# SDK layers' trees: CPython's and Node.js's.
$(IMG)/rootfs.sqfs $(IMG)/sdk.tree.version $(IMG)/node.tree.version &: images/rootfs.sh images/treediff.py $(IMG)/noop
	images/rootfs.sh $(ARCH) $(IMG)/rootfs.sqfs $(IMG)/noop "" $(IMG)/sdk.tree $(IMG)/node.tree

# Shards are built by vmexec itself (libsquashfs), as a user would build them,
# and again when the shard code changes.
SHARD_CODE := $(wildcard Sources/SquashMounts/*.swift Sources/PythonShards/*.swift)

# Bytecode in every Python shard: a read-only shard cannot take __pycache__, so
# without it every import compiles its module's source, every time. Under TCG
# that was most of `import numpy` (4.2 s; 1.7 s with bytecode, 0.8 s once the
# guest's page cache has the files) and half a second of the runner's start.
# The SDK's CPython version only (bytecode is per major.minor); unchecked-hash:
# no mtime checks at import. Compiling reads the sources, it runs nothing of them.
SDK_PYTHON := 3.11
define compile_python
	if [ "$$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$(SDK_PYTHON)" ]; then \
	  python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash $(1) > /dev/null; \
	else echo "note: host python3 is not the SDK's $(SDK_PYTHON): $(1) is compiled at each import"; fi
endef

RUNNER := $(wildcard images/runner/vmexec_runner/*.py)
RUNNER_DIR := $(IMG)/sdk.tree/usr/lib/python3/dist-packages/vmexec_runner

$(SDK_SHARD): $(IMG)/sdk.tree.version $(SHARD_CODE) $(RUNNER) $(IMG)/zygote-client
	$(SWIFT_BUILD) --product vmexec
	rm -rf $(RUNNER_DIR) $(IMG)/sdk.tree/usr/lib/python3/dist-packages/vmexec_runner.py
	install -D -m 0644 -t $(RUNNER_DIR) $(RUNNER)
	install -D -m 0755 $(IMG)/zygote-client $(IMG)/sdk.tree/usr/lib/vmexec/zygote-client
	$(call compile_python,$(RUNNER_DIR))
	$(VMEXEC) shard create $(IMG)/sdk.tree -o $@ --name cpython --version $$(cat $<) --kind sdk --layer 10 \
	  --arch $(ARCH) --provides python3 --provides python3.11 \
	  --provides glibc==$$(sqfscat $(IMG)/rootfs.sqfs /var/lib/dpkg/status | awk '/^Package: libc6$$/{f=1} f&&/^Version:/{split($$2,v,"-"); print v[1]; exit}')

$(NODE_SHARD): $(IMG)/node.tree.version $(SHARD_CODE) images/runner/node/vmexec_node_runner.js
	$(SWIFT_BUILD) --product vmexec
	install -D -m 0644 images/runner/node/vmexec_node_runner.js $(IMG)/node.tree/usr/share/vmexec/vmexec_node_runner.js
	$(VMEXEC) shard create $(IMG)/node.tree -o $@ --name nodejs --version $$(cat $<) --kind sdk --layer 11 \
	  --arch $(ARCH) --provides node --provides nodejs$$(cut -d. -f1 $<)

# Libs shards are made as a field engineer makes them: `pip download` on a connected
# machine, then `vmexec shard from-wheels` for the SDK shard (tags, RECORDs and
# requirements checked on the host; nothing of the wheels runs; bytecode compiled in).
$(LIBS_SHARD): $(SHARD_CODE) $(SDK_SHARD)
	$(SWIFT_BUILD) --product vmexec
	@mkdir -p $(WHEELS)/numpy
	python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
	  --platform manylinux2014_$(ARCH) --platform manylinux_2_28_$(ARCH) --python-version 3.11 --implementation cp --abi cp311 \
	  -d $(WHEELS)/numpy numpy==$(NUMPY_VERSION)
	$(VMEXEC) shard from-wheels $(WHEELS)/numpy -o $@ --name numpy --version $(NUMPY_VERSION) \
	  --sdk $(SDK_SHARD) --preload numpy

# Several wheels in one shard; numpy is the numpy shard's (--external).
$(MPL_SHARD): $(SHARD_CODE) $(SDK_SHARD) images/matplotlib-requirements.txt
	$(SWIFT_BUILD) --product vmexec
	@mkdir -p $(WHEELS)/matplotlib
	python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
	  --platform manylinux2014_$(ARCH) --platform manylinux_2_28_$(ARCH) --python-version 3.11 --implementation cp --abi cp311 \
	  -d $(WHEELS)/matplotlib -r images/matplotlib-requirements.txt
	$(VMEXEC) shard from-wheels $(WHEELS)/matplotlib -o $@ --name matplotlib --version $(MPL_VERSION) \
	  --sdk $(SDK_SHARD) --external numpy --preload matplotlib.pyplot

# ---- run and test ----

run: deps build images
	$(VMEXEC) run --arch $(ARCH) --images $(IMG) --shard $(SDK_SHARD) -- python3 - < examples/hello.py
	$(VMEXEC) run --arch $(ARCH) --images $(IMG) --shard $(SDK_SHARD) --shard $(LIBS_SHARD) -- python3 - < examples/numpy_demo.py

test: test-unit test-guests test-cli test-api test-other-arch

# The other architecture vmexec boots: aarch64 beside x86_64, and the other way round.
# Its images are built on this host (a cross compiler, debootstrap through qemu-user).
OTHER_ARCH := $(if $(filter aarch64,$(ARCH)),x86_64,aarch64)
OTHER_IMG := images/build/$(OTHER_ARCH)
images-other-arch:
	$(MAKE) images ARCH=$(OTHER_ARCH)

# Host-only: needs the build dependencies, no guest images.
UNIT_TARGETS := SerialChannelTests|SquashMountsTests|ShardLibraryTests|PersistOverlayTests|VMExecutorUnitTests|VMExecServiceTests|VMExecServerUnitTests|VMExecClientTests
test-unit: deps test-c build-tests
	Tests/deadline.sh 300 $(SWIFT) test --skip-build --filter '$(UNIT_TARGETS)'

# The guest and CLI suites run one guest at a time (each is serialized), and
# apart from each other: two TCG guests at once on 2 cores measure contention.
# A hung test must fail the run, not hold CI: Tests/deadline.sh prints every
# thread's stack past the deadline, then kills the whole process group.
GUEST_ENV := VMEXEC_ARCH=$(ARCH) VMEXEC_IMAGES=$(CURDIR)/$(IMG) VMEXEC_CACHE=$(CURDIR)/.build/vmexec-cache
test-guests: deps images build-tests
	$(GUEST_ENV) Tests/deadline.sh 1200 $(SWIFT) test --skip-build --filter VMExecutorTests
	$(GUEST_ENV) Tests/deadline.sh 600 $(SWIFT) test --skip-build --filter VMExecServerTests

# The multiarch test (one C program in both architectures' guests) needs both images.
test-cli: deps images images-other-arch build-tests
	$(GUEST_ENV) Tests/deadline.sh 900 $(SWIFT) test --skip-build --filter VMExecCLITests

# The same real-guest and daemon suites in the other architecture's guests: another QEMU binary,
# kernel and init build. Slower under TCG (aarch64 on x86_64: about as long as x86_64's).
# The libvirt suites pass there too (run them with make test ARCH=aarch64); CI skips them
# in the other architecture to keep the whole run under its time budget, and with them the
# runners' suites whose code is the same Python and JavaScript on both (Node.js, Python's
# rich outputs and execution control: 100 s there). OTHER_ARCH_SKIP= runs everything.
OTHER_ARCH_SKIP ?= --skip 'LibvirtGuestTests|NodeRunnerGuestTests|PythonOutputsGuestTests|PythonControlGuestTests'
OTHER_ARCH_SKIP_API ?= --skip HostsAPITests
test-other-arch: images-other-arch build-tests
	VMEXEC_ARCH=$(OTHER_ARCH) VMEXEC_IMAGES=$(CURDIR)/$(OTHER_IMG) VMEXEC_CACHE=$(CURDIR)/.build/vmexec-cache \
	  Tests/deadline.sh 1500 $(SWIFT) test --skip-build --filter VMExecutorTests $(OTHER_ARCH_SKIP)
	VMEXEC_ARCH=$(OTHER_ARCH) VMEXEC_IMAGES=$(CURDIR)/$(OTHER_IMG) VMEXEC_CACHE=$(CURDIR)/.build/vmexec-cache \
	  Tests/deadline.sh 600 $(SWIFT) test --skip-build --filter VMExecServerTests $(OTHER_ARCH_SKIP_API)

# The HTTP API: the spec validated (openapi-spec-validator), then schemathesis
# (both from PyPI, in a venv under .build) against a live daemon over TCP.
VENV := .build/venv
SCHEMATHESIS_VERSION ?= 4.32.5
SPEC_VALIDATOR_VERSION ?= 0.7.2
$(VENV)/bin/schemathesis:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check schemathesis==$(SCHEMATHESIS_VERSION) \
	  openapi-spec-validator==$(SPEC_VALIDATOR_VERSION)

test-api: deps images build-tests $(VENV)/bin/schemathesis
	$(VENV)/bin/openapi-spec-validator docs/openapi.yaml
	$(GUEST_ENV) Tests/deadline.sh 600 Tests/API/schemathesis.sh

# The init's parser against the golden vectors, under ASan and UBSan.
test-c: .build/c/vectors_test
	.build/c/vectors_test Tests/Vectors/frames.vec

.build/c/vectors_test: Sources/InitGuest/proto.c Sources/InitGuest/include/vx_proto.h $(wildcard Tests/InitGuestTests/*)
	@mkdir -p .build/c
	cc $(CFLAGS_STRICT) -g -fsanitize=address,undefined -fno-sanitize-recover=all -ISources/InitGuest/include \
	  Sources/InitGuest/proto.c Tests/InitGuestTests/describe.c Tests/InitGuestTests/vectors_test.c -o $@

# Warnings are errors (a separate build folder: flags differ from the test
# build's), the sources as swift format lays them out, the init as strict C.
SWIFT_SOURCES := Package.swift Sources Tests
check: deps
	$(SWIFT_BUILD) --build-tests
	$(SWIFT) format lint --strict --recursive $(SWIFT_SOURCES)
	$(INIT_CC) $(CFLAGS_STRICT) -fsyntax-only -ISources/InitGuest/include Sources/InitGuest/*.c
	$(INIT_CC) $(CFLAGS_STRICT) -fsyntax-only images/zygote-client.c images/noop.c
	python3 -W error -c 'import ast, pathlib, sys; [ast.parse(pathlib.Path(f).read_text(), f) for f in sys.argv[1:]]' $(RUNNER)

# Lays the sources out as make check wants them.
format:
	$(SWIFT) format format --in-place --recursive $(SWIFT_SOURCES)

# A bounded libFuzzer run, seeded with the golden vectors.
fuzz:
	@mkdir -p .fuzz/corpus
	clang $(CFLAGS_STRICT) -g -O1 -fsanitize=fuzzer,address,undefined -fuse-ld=lld -ISources/InitGuest/include \
	  Sources/InitGuest/proto.c Tests/InitGuestTests/describe.c Tests/InitGuestTests/fuzz_frames.c -o .fuzz/fuzz_frames
	python3 -c "import sys;[open(f'.fuzz/corpus/{l.split(\"|\")[0].strip()}','wb').write(bytes.fromhex(l.split('|')[1].strip())) for l in open('Tests/Vectors/frames.vec') if l.strip() and not l.startswith('#')]"
	.fuzz/fuzz_frames -max_total_time=$(FUZZ_SECONDS) -max_len=70000 .fuzz/corpus

clean:
	rm -rf .build .fuzz

clean-images:
	rm -rf images/build

# ---- benchmarks (not part of make test) ----

# The bench variant of the root file system carries qemu-guest-agent, the peer.
$(IMG)/rootfs-bench.sqfs: images/rootfs.sh $(IMG)/noop
	images/rootfs.sh $(ARCH) $@ $(IMG)/noop python3,qemu-guest-agent

bench-images: images $(IMG)/rootfs-bench.sqfs

bench: deps bench-images
	$(SWIFT) build -c release --product vmexec-bench
	$(SWIFT) build -c release --product vmexec
	VMEXEC_ARCH=$(ARCH) .build/release/vmexec-bench $(IMG) $(CURDIR)/$(IMG)/rootfs-bench.sqfs
