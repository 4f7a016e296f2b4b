# localproxy: the one entry point. Every target runs on a fresh Debian 12 machine as root.
# Each public target is listed here (Tests/Peers/test_makefile.py keeps this list complete);
# docs/BUILDING.md explains the builds.
#
# Setting up
#   make deps      install Debian packages and the Python test peers (.venv/): make deps-apt and make venv
#   make deps-apt  the Debian packages alone;  make venv  the Python venv alone
#   make deps-cross  the cross-compilers, ARM libraries and qemu-user for the ARM builds
# Building
#   make all, make build  host build (full Swift, SwiftPM)
#   make embedded  the device binary in Embedded Swift: ARCH=x86_64|aarch64|armv7 LINK=dynamic|static|fullstatic
#   make cross     both ARM device binaries
#   make libuv, make mbedtls  the device builds' libuv and minimal mbedTLS for ARCH (from Debian's sources)
#   make swift-sdk, make sdk-build ARCH=..., make sdk-build-all  the Swift SDK bundle of cross/ and SwiftPM builds with it
#   make clean     remove every build directory
# Testing
#   make test      Swift tests + Python peer tests (installs deps first when missing): make test-swift and make test-peers
#   make test-embedded  TLS, record-cipher and agent (MQTT) peer tests with the Embedded x86_64 static build
#   make test-cross  the ARM builds under qemu: AEAD paths, destination and agent end to end, TLS interop
#   make test-asan  Swift tests + peer tests with the host build under ASan (+UBSan on the C shims)
#   make test-valgrind  whole-tunnel peer tests with the Embedded x86_64 static build under valgrind
#   make test-faults  fault-injection matrix: whole tunnels with a fault proxy on every leg (Tests/Peers/test_faults.py)
#   make test-packaging  the packaging tests alone: init scripts against the emulator, unit and script linters, the amd64 .deb
#   make fuzz      libFuzzer on every parser, FUZZ_SECONDS each; make fuzz-replay: seeds + regressions
#   make soak MINUTES=N  connections opening and closing through faults and forced reconnects; checksums, RSS, fds
#   make check-abi ARCH=..., make check-abi-all  the C ABI guard of the device builds (cross/abi.mk)
#   make footprint armv7 static and fully static builds against their size budgets; make footprint-check: what is built
# Running and measuring
#   make demo      the whole tunnel on this machine: emulator, AWS CLI, both proxies, SSH
#                  (MQTT=1: the device side in agent mode, its tokens from a local mosquitto)
#   make bench     throughput harness: our builds (and BASELINE_LOCALPROXY=path) side by side
#   make bench-tools  the harness's relay and cipher-ceiling tools (.build-bench/)
#   make aead-counts  instructions per MB of each AEAD on armv7 and aarch64 under qemu (docs/CRYPTO.md)
# Packaging
#   make install   the device layout (docs/GATEWAY.md): DESTDIR=, PREFIX= (/usr), BIN= (default: the Embedded static build of this machine)
#   make deb       the Debian package of ARCH=amd64|arm64|armhf in .build-deb/ (builds the Embedded static binary if needed)
#   make deb-check dpkg-deb and lintian checks of the .debs of DEB_CHECK_ARCHES (amd64 arm64 armhf)
# Internal (called by the targets above): aead-counts-arch

SHELL        := /bin/bash
SWIFT        ?= swift
SWIFTC       ?= $(shell command -v swiftc)
# The toolchain root (holds usr/bin/clang and usr/lib/swift/embedded).
TC           := $(abspath $(dir $(realpath $(SWIFTC)))/../..)
VENV         := .venv
PY           := $(VENV)/bin/python
# patch and xz-utils: the static builds apply Debian's patches to libuv (a .debian.tar.xz); m4
# builds Nettle and perl generates OpenSSL's armv7 assembly (cross/aead/).
APT_PACKAGES := libuv1-dev libmbedtls-dev curl ca-certificates openssl openssh-server openssh-client libssl-dev m4 perl \
                patch xz-utils squid
# The packaging tests (Tests/Peers/test_packaging.py, docs/GATEWAY.md): shell and unit linters,
# Debian's and BusyBox's start-stop-daemon, dpkg-deb and lintian for the .debs.
APT_PACKAGES += shellcheck systemd busybox lintian dpkg-dev fakeroot
# The MQTT agent's tests (Tests/Peers/mqtt_broker.py): mosquitto stands in for AWS IoT Core,
# over mutual TLS with an ACL per device. The tests start their own brokers on free ports.
APT_PACKAGES += mosquitto
PEERS        := Tests/Peers

# Embedded build of the device binary.
#   ARCH = x86_64 | aarch64 | armv7      LINK = dynamic | static | fullstatic
# static (default): libuv and mbedTLS linked in, glibc dynamic; fullstatic: everything static.
# There is no Embedded stdlib for *-linux-gnu ARM triples: ARM builds use the bare-metal triples
# with the Linux headers given to the C importer (docs/BUILDING.md), and clang links for Linux.
ARCH         ?= x86_64
LINK         ?= static
# The Debian names of the same architectures (make deb ARCH=amd64|arm64|armhf).
ifeq ($(ARCH),amd64)
  override ARCH := x86_64
else ifeq ($(ARCH),arm64)
  override ARCH := aarch64
else ifeq ($(ARCH),armhf)
  override ARCH := armv7
endif
DEB_ARCH_x86_64  := amd64
DEB_ARCH_aarch64 := arm64
DEB_ARCH_armv7   := armhf
DEB_ARCH         := $(DEB_ARCH_$(ARCH))
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
  # No closure specialisation, as on armv7 (below): it keeps the binary under 1 MB.
  EMB_XFLAGS := -Xllvm -sil-disable-pass=closure-specialize $(LINUX_DEFS) -Xcc -isystem -Xcc /usr/$(GNU_TRIPLE)/include -Xcc -isystem -Xcc $(XINC)
  LINK_ARCH  := --target=aarch64-linux-gnu
  C_ARCH     := --target=aarch64-linux-gnu
  RUNNER     := qemu-aarch64-static -cpu cortex-a53 -L /usr/$(GNU_TRIPLE)
else ifeq ($(ARCH),armv7)
  EMB_TARGET := armv7-none-none-eabi
  GNU_TRIPLE := arm-linux-gnueabihf
  # Debian's armhf libuv is built with 64-bit file offsets; its headers must be read the same way.
  ARCH_CDEFS := -D_FILE_OFFSET_BITS=64
  # -mthumb: the Swift code is generated as Thumb-2 too (armv7 static: 931 KB to 795 KB alone).
  # LLVM's machine outliner turns repeated instruction sequences into shared functions: armv7
  # static 610,116 to 599,540 bytes for the Swift code alone (docs/FOOTPRINT.md).
  SIZE_FLAGS := -mllvm -enable-machine-outliner
  # No closure specialisation: the optimizer otherwise compiles a copy of a function for each
  # caller's closure literal (SocketStream.write, connect, sendRing...), which buys an inlined
  # call on paths that run once per write or connection: armv7 static 599,032 to 592,240 bytes.
  EMB_XFLAGS := -Xllvm -sil-disable-pass=closure-specialize -Xllvm -enable-machine-outliner -Xcc -mthumb -Xcc -mfloat-abi=hard -Xcc -mfpu=vfpv3-d16 -Xcc -D_FILE_OFFSET_BITS=64 $(LINUX_DEFS) -Xcc -isystem -Xcc /usr/$(GNU_TRIPLE)/include -Xcc -isystem -Xcc $(XINC)
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
# static and fullstatic also link libuv built here from Debian 12's own source package of libuv1
# (1.44.2, the version of the shared library and headers of the dynamic build): Debian's
# libuv_a.a has no section per function, so --gc-sections kept whole objects (~76 KB on armv7)
# and, through uv_os_get_passwd, glibc's NSS in the fully static binary. The upstream tarball
# and Debian's patches (the CVE-2024-24806 fix among them) are fetched through this machine's
# apt sources and pinned by SHA-256; the headers of the same tree are the ones the Swift importer
# sees, so headers and library agree. Nothing of it is committed.
LIBUV_VERSION   := 1.44.2
LIBUV_TARBALL   := libuv1_$(LIBUV_VERSION).orig.tar.gz
LIBUV_SHA256    := d79b4b06ef04be85fb890bf39d55942cc64c2e15fd14eaa32dae5dce94485484
LIBUV_DEBIAN    := libuv1_$(LIBUV_VERSION)-1+deb12u1.debian.tar.xz
LIBUV_DEBIAN_SHA256 := 14fc605e7d1520137416fd8c097b58a191be9b07bdbb406f7b39c7894b7d66a5
LIBUV_DIR       := .build-embedded/libuv-$(ARCH)
LIBUV_ARCHIVE   := $(LIBUV_DIR)/libuv_a.a
# What libuv's CMakeLists.txt compiles for Linux (uv_sources: the common ones, the unix ones,
# proctitle.c and the linux ones), with its defines and flags for the static uv_a target.
LIBUV_SOURCES   := fs-poll.c idna.c inet.c random.c strscpy.c strtok.c threadpool.c timer.c \
                   uv-common.c uv-data-getter-setters.c version.c \
                   $(addprefix unix/,async.c core.c dl.c fs.c getaddrinfo.c getnameinfo.c loop-watcher.c \
                     loop.c pipe.c poll.c process.c random-devurandom.c signal.c stream.c tcp.c thread.c \
                     tty.c udp.c proctitle.c linux-core.c linux-inotify.c linux-syscalls.c procfs-exepath.c \
                     random-getrandom.c random-sysctl-linux.c epoll.c)
LIBUV_CFLAGS    := -std=gnu90 -fvisibility=hidden -fno-strict-aliasing -Wall -Wextra -Wno-unused-parameter \
                   -D_FILE_OFFSET_BITS=64 -D_LARGEFILE_SOURCE -D_GNU_SOURCE -D_POSIX_C_SOURCE=200112
# The accelerated record AEADs (cross/aead/README.md, docs/CRYPTO.md): on x86_64 the static
# builds take ChaCha20-Poly1305 from libsodium and AES-GCM from Nettle (both built from Debian's
# source packages by cross/aead/build-*.sh) through mbedTLS's MBEDTLS_CHACHAPOLY_ALT and
# MBEDTLS_GCM_ALT, with mbedTLS's own code as the fallback; their objects go into the minimal
# libmbedcrypto.a. aarch64 takes AES-GCM from Nettle (ARMv8 AES and PMULL); both ARM builds take
# ChaCha20 and Poly1305 from OpenSSL's NEON / Advanced SIMD assembly (only those files of
# Debian's openssl source, build-openssl-asm.sh), and armv7 its AES-GCM from OpenSSL's ARMv4 AES
# and NEON GHASH, the GCM mode built in lp_aead.c (docs/CRYPTO.md says why).
SODIUM_TARBALL  := libsodium_1.0.18.orig.tar.gz
SODIUM_SHA256   := d59323c6b712a1519a5daf710b68f5e7fde57040845ffec53850911f10a5d4f4
NETTLE_TARBALL  := nettle_3.8.1.orig.tar.gz
NETTLE_SHA256   := 364f3e2b77cd7dcde83fd7c45219c834e54b0c75e428b6f894a23d12dd41cbfe
# Debian 12's openssl, pinned to the version of its point release (bookworm main), which stays
# downloadable when security updates move on.
OPENSSL_PACKAGE := openssl=3.0.17-1~deb12u2
OPENSSL_TARBALL := openssl_3.0.17.orig.tar.gz
OPENSSL_SHA256  := dfdd77e4ea1b57ff3a6dbde6b0bdc3f31db5ac99e7fdd4eaf9e1fbb6ec2db8ce
AEAD_SOURCES    := $(wildcard cross/aead/*.c cross/aead/*.h cross/aead/*.sh)
# AEAD_LIBS: the libraries built for the architecture.
ifeq ($(ARCH),x86_64)
  AEAD_DEFS     := -DLP_AEAD -DLP_AEAD_CHACHAPOLY_SODIUM -DLP_AEAD_GCM_NETTLE -I$(CURDIR)/cross/aead
  AEAD_SWIFT_DEFS := -D LP_AEAD
  AEAD_LIBS     := sodium nettle
  NETTLE_OPTIONS := --disable-fat --enable-x86-aesni --enable-x86-pclmul
else ifeq ($(ARCH),aarch64)
  AEAD_DEFS     := -DLP_AEAD -DLP_AEAD_CHACHAPOLY_OPENSSL -DLP_AEAD_GCM_NETTLE -I$(CURDIR)/cross/aead
  AEAD_SWIFT_DEFS := -D LP_AEAD
  AEAD_LIBS     := nettle openssl
  NETTLE_OPTIONS := --disable-fat --enable-arm64-crypto
else ifeq ($(ARCH),armv7)
  AEAD_DEFS     := -DLP_AEAD -DLP_AEAD_CHACHAPOLY_OPENSSL -DLP_AEAD_GCM_OPENSSL -I$(CURDIR)/cross/aead
  AEAD_SWIFT_DEFS := -D LP_AEAD
  AEAD_LIBS     := openssl
endif
ifeq ($(LINK),dynamic)
  EMB_CLIBS  := -luv -lmbedtls -lmbedx509 -lmbedcrypto -lpthread -ldl -lm
  LINK_MODE  :=
  EMB_MBEDTLS :=
  EMB_MBEDTLS_INC :=
  EMB_LIBUV  :=
  EMB_LIBUV_INC :=
else ifeq ($(LINK),static)
  EMB_CLIBS  := $(LIBUV_ARCHIVE) -l:libmbedtls.a -l:libmbedx509.a -l:libmbedcrypto.a -lpthread -ldl -lm
  LINK_MODE  :=
  EMB_MBEDTLS := $(MBEDTLS_ARCHIVES)
  EMB_MBEDTLS_INC := -isystem $(MBEDTLS_DIR)/include $(AEAD_DEFS)
  EMB_LIBUV  := $(LIBUV_ARCHIVE)
  EMB_LIBUV_INC := -isystem $(LIBUV_DIR)/include
  EMB_DEFS   := $(AEAD_SWIFT_DEFS)
else ifeq ($(LINK),fullstatic)
  EMB_CLIBS  := $(LIBUV_ARCHIVE) -l:libmbedtls.a -l:libmbedx509.a -l:libmbedcrypto.a -lpthread -ldl -lm
  LINK_MODE  := -static
  EMB_MBEDTLS := $(MBEDTLS_ARCHIVES)
  EMB_MBEDTLS_INC := -isystem $(MBEDTLS_DIR)/include $(AEAD_DEFS)
  EMB_LIBUV  := $(LIBUV_ARCHIVE)
  EMB_LIBUV_INC := -isystem $(LIBUV_DIR)/include
  # A static glibc cannot load NSS modules, so getaddrinfo is left out and host names go
  # through the built-in resolver (/etc/hosts, then /etc/resolv.conf's nameservers).
  EMB_DEFS   := -D LP_BUILTIN_DNS $(AEAD_SWIFT_DEFS)
else
  $(error LINK must be dynamic, static or fullstatic)
endif
# Each build has its own clang module cache: the shared one does not key CLibC/CLibUV/CMbedTLS on the
# include paths, so a static build would import the system mbedTLS's layouts (found by check-abi).
# One section per function, so that --gc-sections can drop what is not called: without it each
# module's code is one section and every generic specialisation stays (armv7: 1.6 MB vs 0.9 MB).
EMB_FLAGS    := -target $(EMB_TARGET) -enable-experimental-feature Embedded -wmo -Osize -parse-as-library \
                -Xfrontend -function-sections $(addprefix -Xcc ,$(EMB_LIBUV_INC) $(EMB_MBEDTLS_INC)) \
                -module-cache-path $(EMB_DIR)/ModuleCache $(EMB_DEFS) \
                $(EMB_XFLAGS) -I Sources/CLibC -I Sources/CLibUV -I Sources/CMbedTLS -I $(EMB_DIR)
EMB_LINK     := clang $(LINK_ARCH) -fuse-ld=lld -Wl,--gc-sections -Wl,--icf=safe $(LINK_MODE)
EMB_LIBS     := $(TC)/usr/lib/swift/embedded/$(EMB_TARGET)/libswiftUnicodeDataTables.a \
                $(if $(EMB_MBEDTLS),-L$(MBEDTLS_DIR)/library) -L/usr/lib/$(GNU_TRIPLE) $(EMB_CLIBS)
# C code built for the device (the minimal mbedTLS): small, one section per function, hardened.
DEVICE_CFLAGS := $(C_ARCH) $(SIZE_FLAGS) -Os -ffunction-sections -fdata-sections -fPIC -fstack-protector-strong -D_FORTIFY_SOURCE=2
# Device modules in dependency order; each later one may import the earlier ones.
DEVICE_MODULES := TunnelCore TunnelTLS TunnelIO LocalProxy
EMB_OBJECTS    := $(addprefix $(EMB_DIR)/,$(addsuffix .o,$(DEVICE_MODULES)))
CROSS_PACKAGES := gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross \
                  libuv1-dev:arm64 libuv1-dev:armhf libmbedtls-dev:arm64 libmbedtls-dev:armhf qemu-user-static qemu-user

.PHONY: install deb deb-check test-packaging
.PHONY: all deps deps-apt deps-cross venv build test test-swift test-peers test-embedded aead-counts aead-counts-arch embedded mbedtls libuv cross footprint footprint-check test-cross demo clean bench bench-tools

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
	$(MAKE) fuzz-replay

test-swift: deps-apt
	$(SWIFT) test

# The peer tests that depend on how the device binary was built, run with the Embedded x86_64
# static build (the one CI ships first): every record cipher with checksummed transfers, on the
# accelerated AEAD path and forced portable; TLS interop against openssl s_server; --version.
test-embedded: deps bench-tools
	$(MAKE) embedded ARCH=x86_64 LINK=static
	LOCALPROXY=$(CURDIR)/.build-embedded/x86_64-static/localproxy $(VENV)/bin/pytest -q \
	  $(PEERS)/test_record_ciphers.py $(PEERS)/test_tls_interop.py $(PEERS)/test_notices.py $(PEERS)/test_mqtt_agent.py

test-peers: deps bench-tools
	$(SWIFT) build --product wire-probe
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	$(PEER_ENV) $(VENV)/bin/pytest -q $(PEERS)

# Every module the device binary links, compiled in Embedded Swift, so that the Embedded subset
# (typed throws, no existentials of non-class protocols, no reflection...) is enforced on each
# commit; then the device binary (with a stripped copy) and the byte-vector self-test, both run
# (under qemu-user for ARM).
embedded: deps-apt $(EMB_MBEDTLS) $(EMB_LIBUV)
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
ifneq ($(EMB_MBEDTLS),)
	@echo "embedded $(ARCH): aead-selftest (link and run: the path this CPU takes, then the portable one)"
	@$(TC)/usr/bin/clang $(DEVICE_CFLAGS) $(AEAD_DEFS) -Wall -Wextra -isystem $(MBEDTLS_DIR)/include \
	  -fuse-ld=lld -Wl,--gc-sections $(LINK_MODE) cross/aead/aead-selftest.c $(MBEDTLS_DIR)/library/libmbedcrypto.a \
	  -o $(EMB_DIR)/aead-selftest
	@$(RUNNER) $(EMB_DIR)/aead-selftest
	@LOCALPROXY_AEAD=portable $(RUNNER) $(EMB_DIR)/aead-selftest
endif

# The minimal mbedTLS: the upstream tarball of Debian's source package (of MBEDTLS_SUITE, a
# newer Debian release than this machine's), fetched through this machine's own apt sources
# (scripts/debian-source.sh derives deb-src entries for that suite in a private apt state;
# nothing names a host), checked against its SHA-256, unpacked under .build-embedded and
# configured by $(MBEDTLS_CONFIG), copied over the tarball's include/mbedtls/mbedtls_config.h.
# Nothing of it is committed. The tarball carries its generated sources (error.c, the PSA driver
# wrappers...), so neither Python nor Perl runs here.
$(DOWNLOADS)/$(MBEDTLS_TARBALL):
	scripts/debian-source.sh mbedtls $(MBEDTLS_TARBALL) $(MBEDTLS_SHA256) $(DOWNLOADS) $(MBEDTLS_SUITE)

$(MBEDTLS_ARCHIVES) &: $(DOWNLOADS)/$(MBEDTLS_TARBALL) $(MBEDTLS_CONFIG) \
    $(if $(AEAD_DEFS),$(AEAD_SOURCES) $(if $(filter sodium,$(AEAD_LIBS)),$(DOWNLOADS)/$(SODIUM_TARBALL)) \
      $(if $(filter nettle,$(AEAD_LIBS)),$(DOWNLOADS)/$(NETTLE_TARBALL)) \
      $(if $(filter openssl,$(AEAD_LIBS)),$(DOWNLOADS)/$(OPENSSL_TARBALL)))
	rm -rf $(MBEDTLS_DIR) && mkdir -p $(MBEDTLS_DIR)
	tar xjf $< -C $(MBEDTLS_DIR) --strip-components=1
	cp $(MBEDTLS_CONFIG) $(MBEDTLS_DIR)/include/mbedtls/mbedtls_config.h
	$(MAKE) -s -C $(MBEDTLS_DIR)/library CC=$(TC)/usr/bin/clang AR=$(TC)/usr/bin/llvm-ar \
	  CFLAGS="$(DEVICE_CFLAGS) $(AEAD_DEFS)" libmbedcrypto.a libmbedx509.a libmbedtls.a
ifneq ($(AEAD_DEFS),)
	@# libsodium's ChaCha20-Poly1305 (x86_64), Nettle's AES-GCM, mbedTLS's own AEADs under other
	@# names as the fallback, and the glue; the crypto optimised for speed (-O2 after -Os).
ifneq ($(filter sodium,$(AEAD_LIBS)),)
	cross/aead/build-sodium.sh $(DOWNLOADS)/$(SODIUM_TARBALL) $(MBEDTLS_DIR)/sodium $(ARCH) $(TC)/usr/bin/clang \
	  $(DEVICE_CFLAGS) -O2
endif
ifneq ($(filter nettle,$(AEAD_LIBS)),)
	cross/aead/build-nettle.sh $(DOWNLOADS)/$(NETTLE_TARBALL) $(MBEDTLS_DIR)/nettle $(GNU_TRIPLE) "$(NETTLE_OPTIONS)" $(TC)/usr/bin/clang \
	  $(DEVICE_CFLAGS) -O2
endif
ifneq ($(filter openssl,$(AEAD_LIBS)),)
	cross/aead/build-openssl-asm.sh $(DOWNLOADS)/$(OPENSSL_TARBALL) $(MBEDTLS_DIR)/openssl $(ARCH) $(TC)/usr/bin/clang $(DEVICE_CFLAGS)
endif
	for f in chachapoly_portable gcm_portable lp_aead; do \
	  $(TC)/usr/bin/clang $(DEVICE_CFLAGS) -O2 $(AEAD_DEFS) -Wall -Wextra -I$(MBEDTLS_DIR)/include -I$(MBEDTLS_DIR)/library \
	    -I$(MBEDTLS_DIR)/sodium/include -I$(MBEDTLS_DIR)/nettle/include -c cross/aead/$$f.c \
	    -o $(MBEDTLS_DIR)/library/lp_$$f.o || exit 1; \
	done
	$(TC)/usr/bin/llvm-ar rcs $(MBEDTLS_DIR)/library/libmbedcrypto.a $(MBEDTLS_DIR)/library/lp_*.o \
	  $(addsuffix /obj/*.o,$(addprefix $(MBEDTLS_DIR)/,$(AEAD_LIBS)))
endif

# libuv from Debian 12's source package: the upstream tarball with Debian's patch series applied
# (as dpkg-source would), then the Linux sources of libuv's own build, compiled as the minimal
# mbedTLS is (DEVICE_CFLAGS: -Os, one section per function; Thumb-2 and the outliner on armv7).
$(DOWNLOADS)/$(LIBUV_TARBALL):
	scripts/debian-source.sh libuv1 $(LIBUV_TARBALL) $(LIBUV_SHA256) $(DOWNLOADS)

# After the tarball: both fetches use the same private apt state under $(DOWNLOADS), so under
# make -j they must not run at once.
$(DOWNLOADS)/$(LIBUV_DEBIAN): | $(DOWNLOADS)/$(LIBUV_TARBALL)
	scripts/debian-source.sh libuv1 $(LIBUV_DEBIAN) $(LIBUV_DEBIAN_SHA256) $(DOWNLOADS)

$(LIBUV_ARCHIVE): $(DOWNLOADS)/$(LIBUV_TARBALL) $(DOWNLOADS)/$(LIBUV_DEBIAN)
	rm -rf $(LIBUV_DIR) && mkdir -p $(LIBUV_DIR)/obj
	tar xzf $(DOWNLOADS)/$(LIBUV_TARBALL) -C $(LIBUV_DIR) --strip-components=1
	tar xJf $(DOWNLOADS)/$(LIBUV_DEBIAN) -C $(LIBUV_DIR)
	for p in $$(grep -v '^#' $(LIBUV_DIR)/debian/patches/series); do \
	  patch -s -p1 -d $(LIBUV_DIR) --no-backup-if-mismatch < $(LIBUV_DIR)/debian/patches/$$p || exit 1; \
	done
	for f in $(LIBUV_SOURCES); do \
	  $(TC)/usr/bin/clang $(DEVICE_CFLAGS) $(LIBUV_CFLAGS) -I$(LIBUV_DIR)/include -I$(LIBUV_DIR)/src \
	    -c $(LIBUV_DIR)/src/$$f -o $(LIBUV_DIR)/obj/$$(echo $$f | tr / -).o || exit 1; \
	done
	$(TC)/usr/bin/llvm-ar rcs $@ $(LIBUV_DIR)/obj/*.o

libuv: $(LIBUV_ARCHIVE)

$(DOWNLOADS)/$(SODIUM_TARBALL):
	scripts/debian-source.sh libsodium $(SODIUM_TARBALL) $(SODIUM_SHA256) $(DOWNLOADS)

$(DOWNLOADS)/$(NETTLE_TARBALL):
	scripts/debian-source.sh nettle $(NETTLE_TARBALL) $(NETTLE_SHA256) $(DOWNLOADS)

$(DOWNLOADS)/$(OPENSSL_TARBALL):
	scripts/debian-source.sh $(OPENSSL_PACKAGE) $(OPENSSL_TARBALL) $(OPENSSL_SHA256) $(DOWNLOADS)

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
# and where the armv7 bytes come from, and fail over budget or when a map shows the Unicode
# normalisation/grapheme tables linked (docs/FOOTPRINT.md).
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
# the tests of test_destination.py marked `cross` (V3 connections, transfers with equal sha256,
# reconnects, a slow local consumer, close frames and signals), TLS interop with openssl
# s_server, the agent against mosquitto; and the armv7 fully static binary (built-in resolver)
# against a real nameserver and the same destination tests. --strict-markers: a misspelt mark
# is an error, not an empty selection.
CROSS_SELECT := --strict-markers -m cross
CROSS_ENV    = LOCALPROXY=$(CURDIR)/scripts/qemu-localproxy LP_E2E_BIG_MIB=32
test-cross: cross venv bench-tools
	$(MAKE) embedded ARCH=armv7 LINK=fullstatic
	@# Every AEAD path of the x86_64 static build, on CPU models qemu offers: AES-NI, PCLMULQDQ
	@# and AVX2 (Haswell); AES-NI and SSSE3 (Westmere); SSSE3 only (Nehalem); none (qemu64).
	$(MAKE) embedded ARCH=x86_64
	for model in "Haswell:AES-GCM (Nettle:ChaCha20-Poly1305 (libsodium 1.0.18 (ChaCha20 AVX2" \
	             "Westmere:AES-GCM (Nettle:ChaCha20-Poly1305 (libsodium 1.0.18 (ChaCha20 SSSE3" \
	             "Nehalem:AES-GCM (mbedTLS portable C (no AES-NI:ChaCha20-Poly1305 (libsodium 1.0.18 (ChaCha20 SSSE3" \
	             "qemu64:AES-GCM (mbedTLS portable C (no AES-NI:ChaCha20-Poly1305 (mbedTLS portable C (no SSSE3"; do \
	  cpu=$${model%%:*} rest=$${model#*:}; \
	  out=$$(qemu-x86_64-static -cpu $$cpu .build-embedded/x86_64-static/aead-selftest) || { echo "$$out"; exit 1; }; \
	  for want in "$${rest%%:*}" "$${rest#*:}"; do \
	    echo "$$out" | grep -qF "$$want" || { echo "on $$cpu, expected $$want:"; echo "$$out"; exit 1; }; \
	  done; \
	  echo "qemu -cpu $$cpu: every known answer and differential check passed"; \
	done
	@# aarch64: Nettle's AES-GCM and OpenSSL's ChaCha20 and Poly1305 on a Cortex-A53 with the crypto extension. (Every
	@# aarch64 model of qemu 7.2 has it, so the CPU check's "no" branch is not exercised here;
	@# the forced portable run of `make embedded ARCH=aarch64` covers the code it selects.)
	out=$$(qemu-aarch64-static -cpu cortex-a53 -L /usr/aarch64-linux-gnu .build-embedded/aarch64-static/aead-selftest) \
	  && echo "$$out" | grep -qF "AES-GCM (Nettle 3.8.1 (ARMv8 AES, PMULL GHASH))" \
	  && echo "$$out" | grep -qF "ChaCha20-Poly1305 (OpenSSL 3.0.17 ARMv8 assembly (ChaCha20 Advanced SIMD, Poly1305 Advanced SIMD))" \
	  || { echo "aarch64 aead-selftest on cortex-a53: expected Nettle's AES-GCM and OpenSSL's ChaCha20-Poly1305:"; echo "$$out"; exit 1; }
	@# armv7: OpenSSL's assembly (AES, NEON GHASH, NEON ChaCha20 and Poly1305) on a Cortex-A7
	@# (NEON); mbedTLS's portable code on a Cortex-R5F, qemu's one ARMv7 model with Thumb-2 and a
	@# VFPv3-D16 but no NEON (user-mode code runs the same as on an ARMv7-A without NEON).
	for model in "cortex-a7:AES-GCM (OpenSSL 3.0.17 ARMv7 assembly (AES ARMv4, GHASH NEON)):ChaCha20-Poly1305 (OpenSSL 3.0.17 ARMv7 assembly (ChaCha20 NEON, Poly1305 NEON))" \
	             "cortex-r5f:AES-GCM (mbedTLS portable C (no NEON on this CPU)):ChaCha20-Poly1305 (mbedTLS portable C (no NEON on this CPU))"; do \
	  cpu=$${model%%:*} rest=$${model#*:}; \
	  for link in static fullstatic; do \
	    out=$$(qemu-arm-static -cpu $$cpu -L /usr/arm-linux-gnueabihf .build-embedded/armv7-$$link/aead-selftest) \
	      || { echo "$$out"; exit 1; }; \
	    for want in "$${rest%%:*}" "$${rest#*:}"; do \
	      echo "$$out" | grep -qF "$$want" || { echo "armv7 $$link aead-selftest on $$cpu: expected $$want:"; echo "$$out"; exit 1; }; \
	    done; \
	  done; \
	  echo "qemu -cpu $$cpu: armv7 known answers and differential checks passed"; \
	done
	for arch in aarch64 armv7; do \
	  LP_CROSS_ARCH=$$arch $(CROSS_ENV) $(VENV)/bin/pytest -q $(CROSS_SELECT) $(PEERS)/test_destination.py || exit 1; \
	  LP_CROSS_ARCH=$$arch $(CROSS_ENV) $(VENV)/bin/pytest -q $(PEERS)/test_tls_interop.py || exit 1; \
	  LP_CROSS_ARCH=$$arch $(CROSS_ENV) $(VENV)/bin/pytest -q $(PEERS)/test_mqtt_agent.py || exit 1; \
	done
	@# The checksummed record-cipher transfers on the ARM build with an accelerated AEAD, both paths.
	LP_CROSS_ARCH=aarch64 $(CROSS_ENV) $(VENV)/bin/pytest -q $(PEERS)/test_record_ciphers.py
	LP_CROSS_ARCH=armv7 $(CROSS_ENV) $(VENV)/bin/pytest -q $(PEERS)/test_record_ciphers.py
	LP_CROSS_ARCH=armv7 LP_CROSS_LINK=fullstatic $(CROSS_ENV) $(VENV)/bin/pytest -q $(PEERS)/test_dns_resolver.py
	LP_CROSS_ARCH=armv7 LP_CROSS_LINK=fullstatic $(CROSS_ENV) $(VENV)/bin/pytest -q $(CROSS_SELECT) $(PEERS)/test_destination.py
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
	$(TC)/usr/bin/clang $(DEVICE_CFLAGS) $(AEAD_DEFS) -Wall -Wextra -isystem $(MBEDTLS_DIR)/include -o $@ $< \
	  -fuse-ld=lld $(MBEDTLS_DIR)/library/libmbedcrypto.a

# Guest instructions per MiB (sealed, then opened) of each record-AEAD candidate on the ARM
# builds, counted under qemu-user with a TCG plugin (scripts/bench/insn-count.c), since ARM code
# cannot be timed here (docs/CRYPTO.md): mbedTLS's portable code as the static device build has
# it (forced), Nettle with its NEON (armv7) or ARMv8 AES/PMULL/ASIMD (aarch64) code, and the
# static device build's own choice on that CPU model (static-build).
COUNT_QEMU_armv7   := qemu-arm -cpu cortex-a7 -L /usr/arm-linux-gnueabihf
COUNT_QEMU_aarch64 := qemu-aarch64 -cpu cortex-a53 -L /usr/aarch64-linux-gnu
NETTLE_COUNT_OPTIONS_armv7   := --disable-fat --enable-arm-neon
NETTLE_COUNT_OPTIONS_aarch64 := --disable-fat --enable-arm64-crypto
aead-counts: deps-cross $(DOWNLOADS)/$(NETTLE_TARBALL)
	@mkdir -p $(BENCH_DIR)
	$(TC)/usr/bin/clang -O2 -shared -fPIC -Wall -Wextra -o $(BENCH_DIR)/insn-count.so scripts/bench/insn-count.c
	for arch in armv7 aarch64; do $(MAKE) -s aead-counts-arch ARCH=$$arch || exit 1; done

aead-counts-arch: $(BENCH_DIR)/aead-ceiling-$(ARCH)-static
	cross/aead/build-nettle.sh $(DOWNLOADS)/$(NETTLE_TARBALL) $(BENCH_DIR)/nettle-$(ARCH) $(GNU_TRIPLE) \
	  "$(NETTLE_COUNT_OPTIONS_$(ARCH))" $(TC)/usr/bin/clang $(C_ARCH) -O2 -fPIC
	$(TC)/usr/bin/clang $(C_ARCH) -O2 -Wall -Wextra -fuse-ld=lld -I$(BENCH_DIR)/nettle-$(ARCH)/include \
	  scripts/bench/nettle-aead.c $(BENCH_DIR)/nettle-$(ARCH)/lib/libnettle.a -o $(BENCH_DIR)/nettle-aead-$(ARCH)
	@# Each count is taken at 1 and at 3 MiB; the difference over 2 MiB, halved (seal + open),
	@# is the cost of one MiB in one direction, without start-up and known-answer tests.
	@count() { $(COUNT_QEMU_$(ARCH)) -plugin $(BENCH_DIR)/insn-count.so -d plugin "$$@" 2>&1 >/dev/null \
	  | sed -n 's/^insn-count: \([0-9]*\).*/\1/p'; }; \
	for suite in aes-128-gcm chacha20-poly1305; do \
	  for impl in "mbedTLS-portable:-E LOCALPROXY_AEAD=portable $(BENCH_DIR)/aead-ceiling-$(ARCH)-static --suite $$suite --mib" \
	              "Nettle:$(BENCH_DIR)/nettle-aead-$(ARCH) $$suite" \
	              "static-build:$(BENCH_DIR)/aead-ceiling-$(ARCH)-static --suite $$suite --mib"; do \
	    a=$$(count $${impl#*:} 1); b=$$(count $${impl#*:} 3); \
	    [ -n "$$a" ] && [ -n "$$b" ] || { echo "aead-counts: no count for $$impl"; exit 1; }; \
	    echo "$(ARCH) $$suite $${impl%%:*}: $$(( (b - a) / 4 )) instructions per MiB"; \
	  done; \
	done

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

# The main job: a whole tunnel on this machine (emulator, AWS CLI, both proxies, SSH); with
# MQTT=1 the device side takes its tokens from a local broker in agent mode (docs/AGENT.md).
MQTT ?= 0
demo: deps
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	MQTT=$(MQTT) scripts/demo.sh

# Installation on a gateway (docs/GATEWAY.md): the binary, /etc/localproxy (settings, services.d;
# the access token is the operator's to write), the systemd unit, the SysV init script and its
# defaults, the BusyBox respawn script. Settings already there are kept. The state directory
# /run/localproxy is made at run time (systemd's RuntimeDirectory=, the scripts' mkdir).
# Paths in the unit and scripts follow PREFIX. The service user is the package's (postinst)
# or the operator's to create.
PREFIX           ?= /usr
DESTDIR          ?=
HOST_EMB_ARCH    := $(shell uname -m | sed -e 's/^armv7.*/armv7/' -e 's/^arm64$$/aarch64/')
BIN              ?= .build-embedded/$(HOST_EMB_ARCH)-static/localproxy.stripped
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
PKG              := packaging
PREFIX_PATHS      = sed -e 's|/usr/bin/localproxy|$(PREFIX)/bin/localproxy|g' -e 's|/usr/libexec/localproxy|$(PREFIX)/libexec/localproxy|g'
install:
	@test -x "$(BIN)" || { echo "install: no binary at $(BIN): run make embedded ARCH=$(HOST_EMB_ARCH), or give BIN=path"; exit 1; }
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/localproxy
	install -d -m 0755 $(DESTDIR)/etc/localproxy $(DESTDIR)/etc/localproxy/services.d $(DESTDIR)/etc/default \
	  $(DESTDIR)/etc/init.d $(DESTDIR)$(SYSTEMD_UNIT_DIR) $(DESTDIR)$(PREFIX)/libexec/localproxy
	@for f in localproxy/localproxy.conf:localproxy.conf localproxy/services.d/example.conf:services.d/example.conf \
	          default/localproxy:default; do \
	  to=$(DESTDIR)/etc/$${f%%:*}; \
	  if [ -e $$to ]; then echo "kept $$to"; else echo "install $$to"; install -m 0644 $(PKG)/$${f#*:} $$to || exit 1; fi; \
	done
	$(PREFIX_PATHS) $(PKG)/sysv/localproxy > $(DESTDIR)/etc/init.d/localproxy && chmod 0755 $(DESTDIR)/etc/init.d/localproxy
	$(PREFIX_PATHS) $(PKG)/systemd/localproxy.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/localproxy.service \
	  && chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/localproxy.service
	$(PREFIX_PATHS) $(PKG)/busybox/localproxy-respawn > $(DESTDIR)$(PREFIX)/libexec/localproxy/localproxy-respawn \
	  && chmod 0755 $(DESTDIR)$(PREFIX)/libexec/localproxy/localproxy-respawn

# Debian packages (docs/GATEWAY.md), from the stripped Embedded static build of ARCH, which is
# rebuilt when a source is newer. Only libc6 (and adduser, for the postinst) is depended on.
DEB_DIR     := .build-deb
VERSION     := $(shell sed -n 's/.*string = "\(.*\)".*/\1/p' Sources/LocalProxy/Version.swift)
DEB_BIN     := .build-embedded/$(ARCH)-static/localproxy.stripped
DEB_CHECK_ARCHES ?= amd64 arm64 armhf
deb: $(DEB_BIN) | deps-apt
	LIBUV_TARBALL=$(DOWNLOADS)/$(LIBUV_TARBALL) SODIUM_TARBALL=$(DOWNLOADS)/$(SODIUM_TARBALL) \
	  scripts/build-deb.sh $(DEB_ARCH) $(DEB_BIN) $(DEB_DIR)/stage-$(DEB_ARCH) $(DEB_DIR) $(VERSION)

$(DEB_BIN): $(wildcard Sources/*/*.swift Sources/*/*.h) | $(if $(filter x86_64,$(ARCH)),deps-apt,deps-cross)
	$(MAKE) embedded ARCH=$(ARCH) LINK=static

deb-check: venv
	LP_DEB_ARCHES="$(DEB_CHECK_ARCHES)" $(VENV)/bin/pytest -q --strict-markers -m deb_file $(PEERS)/test_packaging.py

test-packaging: deps
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	$(PEER_ENV) $(VENV)/bin/pytest -q $(PEERS)/test_packaging.py

# Memory checkers. test-asan: the Swift tests and the peer tests with the host build under
# AddressSanitizer, in its own scratch path (.build-asan). swiftc takes only -sanitize=address
# on Linux (it refuses -sanitize=undefined); the C of the shims' inline functions
# (Sources/C*/shim.h) gets ASan and UBSan through -Xcc, and the ASan runtime carries UBSan's.
# libuv and mbedTLS are Debian's, not instrumented: only their calls of intercepted functions
# (memcpy, memset...) are checked. Every sanitized process writes its reports under $(REPORTS)
# (log_path; UBSan's log_path wins over ASan's, so both are set). A report fails the peer test
# whose process wrote it (Tests/Peers/conftest.py), also when the test killed that process, and
# scripts/sanitizer-reports fails the target on any report of the whole run.
# Leak detection is off: at exit LSan reports XCTest's and Foundation's own allocations, and
# objects reachable only through Swift enums (tag bits in pointers LSan cannot follow).
# test-valgrind checks leaks on the Embedded binary instead, whose heap is empty at a clean exit.
# Deselected (ASAN_DESELECT): tests that bound the proxy's RSS growth, which under ASan measures
# ASan's quarantine of freed memory (up to 256 MiB): over 300 sequential connections the RSS
# grows ~24 MiB (bound 8 MiB), under the STREAM_START flood ~400 MiB (bound 16 MiB); with
# quarantine_size_mb=0 both stay within their bounds. `make test` checks those bounds.
# test_bench.py and test_record_ciphers.py stay: under ASan they pass within their timeouts.
ASAN_DIR      := .build-asan
ASAN_SWIFT    := --scratch-path $(ASAN_DIR) --sanitize=address -Xcc -fsanitize=address,undefined
ASAN_BIN       = $$($(SWIFT) build $(ASAN_SWIFT) --show-bin-path)
SANITIZER_ENV  = LP_SANITIZER_LOG_DIR=$(CURDIR)/$(REPORTS) \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=1:log_path=$(CURDIR)/$(REPORTS)/asan \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(CURDIR)/$(REPORTS)/asan
# test_packaging.py is left out: it tests scripts and packages, not the proxy's memory, and it
# runs the proxy as `nobody`, which cannot write the sanitizer reports.
ASAN_DESELECT := test_destination.py::test_many_sequential_connections_leave_nothing_behind \
                 test_robustness.py::test_control_queue_stays_bounded_when_the_service_stops_reading
.PHONY: test-asan test-valgrind
test-asan: REPORTS := $(ASAN_DIR)/reports
test-asan: deps bench-tools
	$(SWIFT) build $(ASAN_SWIFT) --build-tests
	rm -rf $(REPORTS) && mkdir -p $(REPORTS)
	$(SANITIZER_ENV) $(SWIFT) test $(ASAN_SWIFT) --skip-build || { scripts/sanitizer-reports $(REPORTS); exit 1; }
	$(SANITIZER_ENV) WIRE_PROBE=$(ASAN_BIN)/wire-probe LOCALPROXY=$(ASAN_BIN)/localproxy \
	  TUNNEL_SERVICE=$(ASAN_BIN)/tunnel-service BENCH_TOOLS=$(CURDIR)/$(BENCH_DIR) $(VENV)/bin/pytest -q $(PEERS) \
	  $(addprefix --deselect $(PEERS)/,$(ASAN_DESELECT)) --ignore $(PEERS)/test_packaging.py \
	  || { scripts/sanitizer-reports $(REPORTS); exit 1; }
	scripts/sanitizer-reports $(REPORTS)

# test-valgrind: the device binary (Embedded x86_64 static) as both proxies of the whole-tunnel
# tests, and as the destination of a few others, under valgrind's memcheck through
# scripts/valgrind-localproxy (which says what counts as an error, and why it runs a copy
# without DWARF). The emulator is test-asan's ASan build of tunnel-service, so nothing is built
# in .build and the emulator's reports are checked too. Reports as for test-asan. valgrind is
# not in a fresh Debian 12: deps-apt installs it for this target.
test-valgrind: REPORTS := .build-embedded/valgrind-reports
test-valgrind: APT_PACKAGES += valgrind
test-valgrind: deps bench-tools
	$(MAKE) embedded ARCH=x86_64 LINK=static
	$(TC)/usr/bin/llvm-objcopy --strip-debug .build-embedded/x86_64-static/localproxy .build-embedded/x86_64-static/localproxy.valgrind
	$(SWIFT) build $(ASAN_SWIFT) --product tunnel-service
	rm -rf $(REPORTS) && mkdir -p $(REPORTS)
	$(SANITIZER_ENV) LOCALPROXY=$(CURDIR)/scripts/valgrind-localproxy TUNNEL_SERVICE=$(ASAN_BIN)/tunnel-service \
	  $(VENV)/bin/pytest -q $(PEERS)/test_whole_tunnel.py \
	  || { scripts/sanitizer-reports $(REPORTS); exit 1; }
	$(SANITIZER_ENV) LOCALPROXY=$(CURDIR)/scripts/valgrind-localproxy TUNNEL_SERVICE=$(ASAN_BIN)/tunnel-service \
	  $(VENV)/bin/pytest -q --strict-markers -m valgrind $(PEERS)/test_destination.py \
	  || { scripts/sanitizer-reports $(REPORTS); exit 1; }
	scripts/sanitizer-reports $(REPORTS)

# Coverage-guided fuzzing (Fuzz/README.md): one libFuzzer target per parser that reads the
# network or files, built with swiftc -sanitize=fuzzer,address into .build-fuzz/ by Fuzz/fuzz.py.
# fuzz: each target (or those of FUZZ_TARGETS) for FUZZ_SECONDS, corpora in .build-fuzz/corpus/;
# an input that fails is copied to Fuzz/regressions/TARGET/ and the target fails.
# fuzz-replay: each target once over its seeds and Fuzz/regressions/, without fuzzing.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
.PHONY: fuzz fuzz-replay
fuzz: deps-apt
	SWIFTC=$(SWIFTC) python3 Fuzz/fuzz.py run --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-replay: deps-apt
	SWIFTC=$(SWIFTC) python3 Fuzz/fuzz.py replay $(FUZZ_TARGETS)

# Fault injection (Tests/Peers/fault_proxy.py, fault_harness.py): test-faults runs just the
# matrix (it also runs in `make test`); soak runs scripts/soak.py for MINUTES minutes: random
# connections with checksums, local-leg cuts and forced reconnects through the fault proxies,
# RSS and descriptor counts sampled; it prints a summary and fails on any breach.
MINUTES ?= 10
.PHONY: test-faults soak
test-faults: deps
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	$(PEER_ENV) $(VENV)/bin/pytest -q $(PEERS)/test_faults.py

soak: deps
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	$(PEER_ENV) $(PY) scripts/soak.py --minutes $(MINUTES)

clean:
	rm -rf .build .build-embedded $(BENCH_DIR) .build-fuzz .build-asan $(DEB_DIR)
