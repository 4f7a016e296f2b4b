# localproxy: the one entry point. Every target runs on a fresh Debian 12 machine as root.
#   make deps      install Debian packages and the Python test peers (.venv/)
#   make build     host build (full Swift, SwiftPM)
#   make test      Swift tests + Python peer tests (installs deps first when missing)
#   make embedded  the device binary in Embedded Swift: ARCH=x86_64|aarch64|armv7 LINK=dynamic|static|fullstatic
#   make cross     both ARM device binaries (make deps-cross installs the cross packages)
#   make footprint armv7 static and fully static builds against their size budgets
#   make demo      the whole tunnel on this machine: emulator, AWS CLI, both proxies, SSH
#   make bench     throughput harness: our builds (and BASELINE_LOCALPROXY=path) side by side
#   make bench-tools  the harness's relay and cipher-ceiling tools (.build-bench/)

SHELL        := /bin/bash
SWIFT        ?= swift
SWIFTC       ?= $(shell command -v swiftc)
# The toolchain root (holds usr/bin/clang and usr/lib/swift/embedded).
TC           := $(abspath $(dir $(realpath $(SWIFTC)))/../..)
VENV         := .venv
PY           := $(VENV)/bin/python
APT_PACKAGES := libuv1-dev libmbedtls-dev curl ca-certificates openssl openssh-server openssh-client libssl-dev
PEERS        := Tests/Peers

# Embedded build of the device binary.
#   ARCH = x86_64 | aarch64 | armv7      LINK = dynamic | static | fullstatic
# static (default): libuv and mbedTLS linked in, glibc dynamic; fullstatic: everything static.
# There is no Embedded stdlib for *-linux-gnu ARM triples: ARM builds use the bare-metal triples
# with the Linux headers given to the C importer (design/BUILD.md), and clang links for Linux.
ARCH         ?= x86_64
LINK         ?= static
EMB_DIR      := .build-embedded/$(ARCH)-$(LINK)
LINUX_DEFS   := -Xcc -D__linux__ -Xcc -D__linux -Xcc -Dlinux -Xcc -D__gnu_linux__ -Xcc -D__unix__ -Xcc -D__unix -Xcc -Dunix
XINC         := .build-embedded/include
ifeq ($(ARCH),x86_64)
  EMB_TARGET := x86_64-unknown-linux-gnu
  GNU_TRIPLE := x86_64-linux-gnu
  EMB_XFLAGS :=
  LINK_ARCH  := --target=x86_64-linux-gnu
  C_ARCH     := --target=x86_64-linux-gnu
  RUNNER     :=
else ifeq ($(ARCH),aarch64)
  EMB_TARGET := aarch64-none-none-elf
  GNU_TRIPLE := aarch64-linux-gnu
  EMB_XFLAGS := $(LINUX_DEFS) -Xcc -isystem -Xcc /usr/$(GNU_TRIPLE)/include -Xcc -isystem -Xcc $(XINC)
  LINK_ARCH  := --target=aarch64-linux-gnu
  C_ARCH     := --target=aarch64-linux-gnu
  RUNNER     := qemu-aarch64-static -cpu cortex-a53 -L /usr/$(GNU_TRIPLE)
else ifeq ($(ARCH),armv7)
  EMB_TARGET := armv7-none-none-eabi
  GNU_TRIPLE := arm-linux-gnueabihf
  # Debian's armhf libuv is built with 64-bit file offsets; its headers must be read the same way.
  ARCH_CDEFS := -D_FILE_OFFSET_BITS=64
  # -mthumb: the Swift code is generated as Thumb-2 too (armv7 static: 931 KB to 795 KB alone).
  EMB_XFLAGS := -Xcc -mthumb -Xcc -mfloat-abi=hard -Xcc -mfpu=vfpv3-d16 -Xcc -D_FILE_OFFSET_BITS=64 $(LINUX_DEFS) -Xcc -isystem -Xcc /usr/$(GNU_TRIPLE)/include -Xcc -isystem -Xcc $(XINC)
  LINK_ARCH  := --target=arm-linux-gnueabihf -march=armv7-a -mfpu=vfpv3-d16 -mfloat-abi=hard
  # Thumb-2, as Debian's armhf is built: about a third smaller than ARM code.
  C_ARCH     := --target=arm-linux-gnueabihf -march=armv7-a -mthumb -mfpu=vfpv3-d16 -mfloat-abi=hard
  RUNNER     := qemu-arm-static -cpu cortex-a7 -L /usr/$(GNU_TRIPLE)
else
  $(error ARCH must be x86_64, aarch64 or armv7)
endif
# static and fullstatic link a minimal mbedTLS 3.6 LTS (cross/mbedtls/mbedtls_config.h: TLS 1.2
# and 1.3 client) built from Debian 13's (trixie) source package, since Debian 12's 2.28 is out
# of upstream support; its headers replace the system ones for the Swift importer. The dynamic
# build and the host SwiftPM build keep the system's mbedTLS (2.28 on Debian 12).
MBEDTLS_VERSION := 3.6.6
MBEDTLS_SUITE   := trixie
MBEDTLS_TARBALL := mbedtls_$(MBEDTLS_VERSION).orig.tar.bz2
MBEDTLS_SHA256  := 8fb65fae8dcae5840f793c0a334860a411f884cc537ea290ce1c52bb64ca007a
MBEDTLS_CONFIG  := cross/mbedtls/mbedtls_config.h
DOWNLOADS       := .build-embedded/downloads
MBEDTLS_DIR     := .build-embedded/mbedtls-$(ARCH)
MBEDTLS_ARCHIVES := $(addprefix $(MBEDTLS_DIR)/library/,libmbedtls.a libmbedx509.a libmbedcrypto.a)
ifeq ($(LINK),dynamic)
  EMB_CLIBS  := -luv -lmbedtls -lmbedx509 -lmbedcrypto -lpthread -ldl -lm
  LINK_MODE  :=
  EMB_MBEDTLS :=
  EMB_MBEDTLS_INC :=
else ifeq ($(LINK),static)
  EMB_CLIBS  := -l:libuv_a.a -l:libmbedtls.a -l:libmbedx509.a -l:libmbedcrypto.a -lpthread -ldl -lm
  LINK_MODE  :=
  EMB_MBEDTLS := $(MBEDTLS_ARCHIVES)
  EMB_MBEDTLS_INC := -isystem $(MBEDTLS_DIR)/include
else ifeq ($(LINK),fullstatic)
  EMB_CLIBS  := -l:libuv_a.a -l:libmbedtls.a -l:libmbedx509.a -l:libmbedcrypto.a -lpthread -ldl -lm
  LINK_MODE  := -static
  EMB_MBEDTLS := $(MBEDTLS_ARCHIVES)
  EMB_MBEDTLS_INC := -isystem $(MBEDTLS_DIR)/include
  # A static glibc cannot load NSS modules, so getaddrinfo is left out and host names go
  # through the built-in resolver (/etc/hosts, then /etc/resolv.conf's nameservers).
  EMB_DEFS   := -D LP_BUILTIN_DNS
else
  $(error LINK must be dynamic, static or fullstatic)
endif
# Each build has its own clang module cache: the shared one does not key CLibUV/CMbedTLS on the
# include paths, so a static build would import the system mbedTLS's layouts (found by check-abi).
# One section per function, so that --gc-sections can drop what is not called: without it each
# module's code is one section and every generic specialisation stays (armv7: 1.6 MB vs 0.9 MB).
EMB_FLAGS    := -target $(EMB_TARGET) -enable-experimental-feature Embedded -wmo -Osize -parse-as-library \
                -Xfrontend -function-sections $(addprefix -Xcc ,$(EMB_MBEDTLS_INC)) \
                -module-cache-path $(EMB_DIR)/ModuleCache $(EMB_DEFS) \
                $(EMB_XFLAGS) -I Sources/CLibUV -I Sources/CMbedTLS -I $(EMB_DIR)
EMB_LINK     := clang $(LINK_ARCH) -fuse-ld=lld -Wl,--gc-sections $(LINK_MODE)
EMB_LIBS     := $(TC)/usr/lib/swift/embedded/$(EMB_TARGET)/libswiftUnicodeDataTables.a \
                $(if $(EMB_MBEDTLS),-L$(MBEDTLS_DIR)/library) -L/usr/lib/$(GNU_TRIPLE) $(EMB_CLIBS)
# C code built for the device (the minimal mbedTLS): small, one section per function, hardened.
DEVICE_CFLAGS := $(C_ARCH) -Os -ffunction-sections -fdata-sections -fPIC -fstack-protector-strong -D_FORTIFY_SOURCE=2
# Device modules in dependency order; each later one may import the earlier ones.
DEVICE_MODULES := TunnelCore TunnelTLS TunnelIO LocalProxy
EMB_OBJECTS    := $(addprefix $(EMB_DIR)/,$(addsuffix .o,$(DEVICE_MODULES)))
CROSS_PACKAGES := gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross \
                  libuv1-dev:arm64 libuv1-dev:armhf libmbedtls-dev:arm64 libmbedtls-dev:armhf qemu-user-static

.PHONY: all deps deps-apt deps-cross venv build test test-swift test-peers embedded mbedtls cross footprint footprint-check test-cross demo clean bench bench-tools

all: build

deps: deps-apt venv

# Installs only what is missing, so repeated runs are quick and need no network.
# A package counts as present for the native architecture (with arm64/armhf added for cross
# builds, a bare name is ambiguous to dpkg). An index that fails to download (a mirror in sync)
# does not stop the install: the install itself fails if a package really cannot be had.
deps-apt:
	@arch=$$(dpkg --print-architecture); missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg -s $$p:$$arch >/dev/null 2>&1 || dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq || echo "apt-get update reported errors; installing with the indexes it has"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: $(PEERS)/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r $(PEERS)/requirements.txt
	@# The demo and the emulator tests drive the AWS CLI; install it into the venv when the
	@# machine has none.
	@command -v aws >/dev/null || $(VENV)/bin/pip install -q --disable-pip-version-check awscli
	touch $@

build: deps-apt
	$(SWIFT) build

BIN_PATH = $$($(SWIFT) build --show-bin-path)
PEER_ENV = WIRE_PROBE=$(BIN_PATH)/wire-probe LOCALPROXY=$(BIN_PATH)/localproxy TUNNEL_SERVICE=$(BIN_PATH)/tunnel-service \
           BENCH_TOOLS=$(CURDIR)/$(BENCH_DIR)

test: deps bench-tools
	$(SWIFT) build --product wire-probe
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	$(SWIFT) test
	$(PEER_ENV) $(VENV)/bin/pytest -q $(PEERS)

test-swift: deps-apt
	$(SWIFT) test

test-peers: deps bench-tools
	$(SWIFT) build --product wire-probe
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	$(PEER_ENV) $(VENV)/bin/pytest -q $(PEERS)

# Every module the device binary links, compiled in Embedded Swift, so that the Embedded subset
# (typed throws, no existentials of non-class protocols, no reflection...) is enforced on each
# commit; then the device binary (with a stripped copy) and the byte-vector self-test, both run
# (under qemu-user for ARM).
embedded: deps-apt $(EMB_MBEDTLS)
	@mkdir -p $(EMB_DIR) $(XINC)
	@# Only these headers of /usr/include are shown to ARM builds, so host glibc headers stay out.
	@for h in uv.h uv mbedtls psa; do ln -sfn /usr/include/$$h $(XINC)/$$h; done
	@# swiftc leaves an existing object file in place (seen with 6.3.1), so stale objects would
	@# be linked: remove them first.
	@rm -f $(EMB_DIR)/*.o
	@for m in $(DEVICE_MODULES); do \
	  echo "embedded $(ARCH): $$m"; \
	  $(SWIFTC) $(EMB_FLAGS) -module-name $$m -emit-module -emit-module-path $(EMB_DIR)/$$m.swiftmodule \
	    Sources/$$m/*.swift -c -o $(EMB_DIR)/$$m.o || exit 1; \
	done
	@echo "embedded $(ARCH): localproxy (link $(LINK))"
	@$(SWIFTC) $(EMB_FLAGS) -module-name localproxy Sources/localproxy/*.swift -c -o $(EMB_DIR)/localproxy-main.o
	@$(TC)/usr/bin/$(EMB_LINK) -Wl,-Map=$(EMB_DIR)/localproxy.map $(EMB_DIR)/localproxy-main.o $(EMB_OBJECTS) $(EMB_LIBS) -o $(EMB_DIR)/localproxy
	@$(TC)/usr/bin/llvm-objcopy --strip-all $(EMB_DIR)/localproxy $(EMB_DIR)/localproxy.stripped
	@$(RUNNER) $(EMB_DIR)/localproxy --version
	@ls -l $(EMB_DIR)/localproxy $(EMB_DIR)/localproxy.stripped
	@echo "embedded $(ARCH): core-selftest (link and run)"
	@$(SWIFTC) $(EMB_FLAGS) -module-name core_selftest Sources/core-selftest/*.swift -c -o $(EMB_DIR)/core-selftest.o
	@$(TC)/usr/bin/$(EMB_LINK) $(EMB_DIR)/core-selftest.o $(EMB_OBJECTS) $(EMB_LIBS) -o $(EMB_DIR)/core-selftest
	@$(RUNNER) $(EMB_DIR)/core-selftest

# The minimal mbedTLS: the upstream tarball of Debian's source package (of MBEDTLS_SUITE, a
# newer Debian release than this machine's), fetched through this machine's own apt sources
# (scripts/debian-source.sh derives deb-src entries for that suite in a private apt state;
# nothing names a host), checked against its SHA-256, unpacked under .build-embedded and
# configured by $(MBEDTLS_CONFIG), copied over the tarball's include/mbedtls/mbedtls_config.h.
# Nothing of it is committed. The tarball carries its generated sources (error.c, the PSA driver
# wrappers...), so neither Python nor Perl runs here.
$(DOWNLOADS)/$(MBEDTLS_TARBALL):
	scripts/debian-source.sh mbedtls $(MBEDTLS_TARBALL) $(MBEDTLS_SHA256) $(DOWNLOADS) $(MBEDTLS_SUITE)

$(MBEDTLS_ARCHIVES) &: $(DOWNLOADS)/$(MBEDTLS_TARBALL) $(MBEDTLS_CONFIG)
	rm -rf $(MBEDTLS_DIR) && mkdir -p $(MBEDTLS_DIR)
	tar xjf $< -C $(MBEDTLS_DIR) --strip-components=1
	cp $(MBEDTLS_CONFIG) $(MBEDTLS_DIR)/include/mbedtls/mbedtls_config.h
	$(MAKE) -s -C $(MBEDTLS_DIR)/library CC=$(TC)/usr/bin/clang AR=$(TC)/usr/bin/llvm-ar \
	  CFLAGS="$(DEVICE_CFLAGS)" libmbedcrypto.a libmbedx509.a libmbedtls.a

mbedtls: $(MBEDTLS_ARCHIVES)

# Debian's cross toolchains, ARM builds of libuv and mbedTLS (multiarch), and qemu-user.
deps-cross: deps-apt
	@dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
	@dpkg --print-foreign-architectures | grep -qx armhf || dpkg --add-architecture armhf
	@missing=""; for p in $(CROSS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing cross packages:$$missing"; \
	  apt-get update -qq || echo "apt-get update reported errors; installing with the indexes it has"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Both ARM device binaries in the default link mode.
cross: deps-cross
	$(MAKE) embedded ARCH=aarch64
	$(MAKE) embedded ARCH=armv7

# Size budgets of issue 5 (bytes of the stripped binary; 600 KB read as 600,000 bytes):
# armv7 with libuv and mbedTLS static, and armv7 fully static. `footprint` builds both and
# checks; `footprint-check` checks what is built. Both print every device binary built so far
# and where the armv7 bytes come from, and fail over budget (docs/FOOTPRINT.md).
BUDGET_ARMV7_STATIC     := 600000
BUDGET_ARMV7_FULLSTATIC := 1100000
footprint: deps-cross
	$(MAKE) embedded ARCH=armv7 LINK=static
	$(MAKE) embedded ARCH=armv7 LINK=fullstatic
	$(MAKE) footprint-check

footprint-check:
	python3 scripts/footprint.py \
	  --budget .build-embedded/armv7-static/localproxy.stripped=$(BUDGET_ARMV7_STATIC) \
	  --budget .build-embedded/armv7-fullstatic/localproxy.stripped=$(BUDGET_ARMV7_FULLSTATIC) \
	  --map .build-embedded/armv7-static/localproxy.map --map .build-embedded/armv7-fullstatic/localproxy.map \
	  $$(ls .build-embedded/*-*/localproxy.stripped)

# The ARM device binaries as the destination proxy of the end-to-end tests, under qemu-user:
# V3 connections, transfers with equal sha256, reconnects, a slow local consumer, TLS interop
# with openssl s_server; and the armv7 fully static binary (built-in resolver) against a real
# nameserver and the same destination tests.
CROSS_TESTS := simultaneous_v3 or big_transfer or dropping_tcp or slow_local_consumer or close_frame_from_service or signal_closes
CROSS_ENV    = LOCALPROXY=$(CURDIR)/scripts/qemu-localproxy LP_E2E_BIG_MIB=32
test-cross: cross venv bench-tools
	$(MAKE) embedded ARCH=armv7 LINK=fullstatic
	for arch in aarch64 armv7; do \
	  LP_CROSS_ARCH=$$arch $(CROSS_ENV) $(VENV)/bin/pytest -q $(PEERS)/test_destination.py -k "$(CROSS_TESTS)" || exit 1; \
	  LP_CROSS_ARCH=$$arch $(CROSS_ENV) $(VENV)/bin/pytest -q $(PEERS)/test_tls_interop.py || exit 1; \
	done
	LP_CROSS_ARCH=armv7 LP_CROSS_LINK=fullstatic $(CROSS_ENV) \
	  $(VENV)/bin/pytest -q $(PEERS)/test_dns_resolver.py $(PEERS)/test_destination.py -k "dns or $(CROSS_TESTS)"
	@# The throughput harness with an emulated ARM build as both proxies (its figures are
	@# labelled emulated): correctness of the harness under qemu, not speed.
	LP_CROSS_ARCH=armv7 LOCALPROXY=$(CURDIR)/scripts/qemu-localproxy BENCH_TOOLS=$(CURDIR)/$(BENCH_DIR) \
	  $(VENV)/bin/pytest -q $(PEERS)/test_bench.py::test_a_tiny_run_reports_every_figure

# Cross-build pieces kept beside their sources (ABI guard, Swift SDK bundle...).
-include $(wildcard cross/*.mk)

# The throughput harness (scripts/bench/bench.py, docs/BENCHMARKS.md): load -> source proxy ->
# opaque TLS WebSocket relay -> destination proxy -> sink, for our host release build and our
# Embedded static build (and BASELINE_LOCALPROXY, any other local proxy binary, in the same
# run), with the plain-TCP and record-cipher ceilings. Results go to bench-results/.
BENCH_DIR         := .build-bench
BENCH_BYTES       ?= 256MiB
BENCH_DIRECTIONS  ?= up,down
BENCH_CONNECTIONS ?= 1,8,64
BENCH_RUNS        ?= 3
BENCH_PATTERN     ?= random
BENCH_ARGS        ?=
BASELINE_LOCALPROXY ?=
BENCH_EMBEDDED    := .build-embedded/x86_64-static/localproxy
BENCH_CC          := $(TC)/usr/bin/clang -O2 -Wall -Wextra

bench-tools: $(BENCH_DIR)/wsrelay $(BENCH_DIR)/aead-ceiling-system

$(BENCH_DIR)/wsrelay: scripts/bench/wsrelay.c | deps-apt
	@mkdir -p $(BENCH_DIR)
	$(BENCH_CC) -o $@ $< -lssl -lcrypto

# The cipher ceiling against Debian's shared mbedTLS (what the host build links)...
$(BENCH_DIR)/aead-ceiling-system: scripts/bench/aead-ceiling.c | deps-apt
	@mkdir -p $(BENCH_DIR)
	$(BENCH_CC) -o $@ $< -lmbedcrypto

# ...and against the minimal mbedTLS of the static device build, with the device's C flags.
$(BENCH_DIR)/aead-ceiling-$(ARCH)-static: scripts/bench/aead-ceiling.c $(MBEDTLS_ARCHIVES)
	@mkdir -p $(BENCH_DIR)
	$(TC)/usr/bin/clang $(DEVICE_CFLAGS) -Wall -Wextra -isystem $(MBEDTLS_DIR)/include -o $@ $< \
	  $(MBEDTLS_DIR)/library/libmbedcrypto.a

bench: deps bench-tools
	$(SWIFT) build -c release --product localproxy
	$(MAKE) embedded ARCH=x86_64 LINK=static
	$(MAKE) $(BENCH_DIR)/aead-ceiling-x86_64-static ARCH=x86_64
	$(PY) scripts/bench/bench.py run --relay $(BENCH_DIR)/wsrelay \
	  --proxy ours-host=$$($(SWIFT) build -c release --show-bin-path)/localproxy \
	  --aead ours-host=$(BENCH_DIR)/aead-ceiling-system \
	  --proxy ours-embedded=$(BENCH_EMBEDDED) --aead ours-embedded=$(BENCH_DIR)/aead-ceiling-x86_64-static \
	  $(if $(BASELINE_LOCALPROXY),--proxy baseline=$(BASELINE_LOCALPROXY) --baseline baseline) \
	  --bytes $(BENCH_BYTES) --directions $(BENCH_DIRECTIONS) --connections $(BENCH_CONNECTIONS) \
	  --runs $(BENCH_RUNS) --pattern $(BENCH_PATTERN) $(BENCH_ARGS)

# The main job: a whole tunnel on this machine (emulator, AWS CLI, both proxies, SSH).
demo: deps
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	scripts/demo.sh

clean:
	rm -rf .build .build-embedded $(BENCH_DIR)
