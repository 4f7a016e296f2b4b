# localproxy: the one entry point. Every target runs on a fresh Debian 12 machine as root.
#   make deps      install Debian packages and the Python test peers (.venv/)
#   make build     host build (full Swift, SwiftPM)
#   make test      Swift tests + Python peer tests (installs deps first when missing)
#   make embedded  build the device modules in Embedded Swift (x86_64)
#   make demo      the whole tunnel on this machine: emulator, AWS CLI, both proxies, SSH

SHELL        := /bin/bash
SWIFT        ?= swift
SWIFTC       ?= $(shell command -v swiftc)
# The toolchain root (holds usr/bin/clang and usr/lib/swift/embedded).
TC           := $(abspath $(dir $(realpath $(SWIFTC)))/../..)
VENV         := .venv
PY           := $(VENV)/bin/python
APT_PACKAGES := libuv1-dev libmbedtls-dev openssl openssh-server openssh-client
PEERS        := Tests/Peers

# Embedded build (device modules). ARCH is fixed to x86_64 until the cross-compilation work lands.
ARCH         ?= x86_64
EMB_DIR      := .build-embedded/$(ARCH)
EMB_TARGET   := x86_64-unknown-linux-gnu
EMB_FLAGS    := -target $(EMB_TARGET) -enable-experimental-feature Embedded -wmo -Osize -parse-as-library \
                -I Sources/CLibUV -I Sources/CMbedTLS -I $(EMB_DIR)
EMB_LINK     := clang --target=x86_64-linux-gnu -fuse-ld=lld -Wl,--gc-sections
EMB_LIBS     := $(TC)/usr/lib/swift/embedded/$(EMB_TARGET)/libswiftUnicodeDataTables.a \
                -L/usr/lib/x86_64-linux-gnu -l:libuv_a.a -l:libmbedtls.a -l:libmbedx509.a -l:libmbedcrypto.a \
                -lpthread -ldl -lm
# Device modules in dependency order; each later one may import the earlier ones.
DEVICE_MODULES := TunnelCore TunnelTLS TunnelIO LocalProxy
EMB_OBJECTS    := $(addprefix $(EMB_DIR)/,$(addsuffix .o,$(DEVICE_MODULES)))

.PHONY: all deps deps-apt venv build test test-swift test-peers embedded demo clean

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
PEER_ENV = WIRE_PROBE=$(BIN_PATH)/wire-probe LOCALPROXY=$(BIN_PATH)/localproxy TUNNEL_SERVICE=$(BIN_PATH)/tunnel-service

test: deps
	$(SWIFT) build --product wire-probe
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	$(SWIFT) test
	$(PEER_ENV) $(VENV)/bin/pytest -q $(PEERS)

test-swift: deps-apt
	$(SWIFT) test

test-peers: deps
	$(SWIFT) build --product wire-probe
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	$(PEER_ENV) $(VENV)/bin/pytest -q $(PEERS)

# Every module the device binary links, compiled in Embedded Swift, so that the Embedded subset
# (typed throws, no existentials of non-class protocols, no reflection...) is enforced on each commit.
embedded: deps-apt
	@mkdir -p $(EMB_DIR)
	@for m in $(DEVICE_MODULES); do \
	  echo "embedded $(ARCH): $$m"; \
	  $(SWIFTC) $(EMB_FLAGS) -module-name $$m -emit-module -emit-module-path $(EMB_DIR)/$$m.swiftmodule \
	    Sources/$$m/*.swift -c -o $(EMB_DIR)/$$m.o || exit 1; \
	done
	@echo "embedded $(ARCH): localproxy (link)"
	@$(SWIFTC) $(EMB_FLAGS) -module-name localproxy Sources/localproxy/*.swift -c -o $(EMB_DIR)/localproxy-main.o
	@$(TC)/usr/bin/$(EMB_LINK) $(EMB_DIR)/localproxy-main.o $(EMB_OBJECTS) $(EMB_LIBS) -o $(EMB_DIR)/localproxy
	@cp $(EMB_DIR)/localproxy $(EMB_DIR)/localproxy.stripped && strip $(EMB_DIR)/localproxy.stripped
	@$(EMB_DIR)/localproxy --version
	@ls -l $(EMB_DIR)/localproxy $(EMB_DIR)/localproxy.stripped
	@echo "embedded $(ARCH): core-selftest (link and run)"
	@$(SWIFTC) $(EMB_FLAGS) -module-name core_selftest Sources/core-selftest/*.swift -c -o $(EMB_DIR)/core-selftest.o
	@$(TC)/usr/bin/$(EMB_LINK) $(EMB_DIR)/core-selftest.o $(EMB_OBJECTS) $(EMB_LIBS) -o $(EMB_DIR)/core-selftest
	@$(EMB_DIR)/core-selftest

# The main job: a whole tunnel on this machine (emulator, AWS CLI, both proxies, SSH).
demo: deps
	$(SWIFT) build --product localproxy
	$(SWIFT) build --product tunnel-service
	scripts/demo.sh

clean:
	rm -rf .build .build-embedded
