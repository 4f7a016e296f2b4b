# ABI guard (included by the Makefile): the C libraries are built for the Linux triple, the
# Embedded Swift code for EMB_TARGET (bare-metal on ARM). Both must see the same layout for every
# C type the Swift code shares with them. See cross/abi/README.md.
#   make check-abi ARCH=x86_64|aarch64|armv7      one architecture
#   make check-abi ARCH=... ABI_SELFTEST=1        also prove that a difference fails the check
#   make check-abi-all                            all three, with each mbedTLS the device links
# LINK matters as for `make embedded`: static/fullstatic builds import the minimal mbedTLS's
# headers (EMB_MBEDTLS_INC) and those of the libuv built from source (EMB_LIBUV_INC), dynamic
# ones the system's; both probes use the same ones.
# ABI_CFLAGS adds flags to the C probe only, e.g. the defines a C library was built with.

ABI_DIR      := .build-embedded/abi-$(ARCH)$(if $(filter dynamic,$(LINK)),-dynamic)
ABI_LIST     := cross/abi/types.txt
ABI_CFLAGS   ?=
ABI_SELFTEST ?=
# What the self-test skews in the C probe: one type's size, one field's offset.
ABI_SKEWS    := mbedtls_ssl_context sockaddr_in6.sin6_port
# The C probe sees the headers the Swift importer sees: the same libuv and mbedTLS include
# directories (when the Makefile sets them) before the Linux triple's system headers.
ABI_CC       := $(TC)/usr/bin/clang $(LINK_ARCH) $(ARCH_CDEFS) $(EMB_LIBUV_INC) $(EMB_MBEDTLS_INC) $(ABI_CFLAGS) -Wall -I Sources -fuse-ld=lld
ABI_C_DESC   := clang $(strip $(LINK_ARCH) $(ARCH_CDEFS) $(ABI_CFLAGS)), libuv headers from $(if $(EMB_LIBUV_INC),$(lastword $(EMB_LIBUV_INC)),/usr/include), mbedTLS headers from $(if $(EMB_MBEDTLS_INC),$(word 2,$(EMB_MBEDTLS_INC)),/usr/include), run $(if $(RUNNER),under $(firstword $(RUNNER)),natively)
ABI_S_DESC   := Embedded Swift -target $(EMB_TARGET) (the device build flags), run $(if $(RUNNER),under $(firstword $(RUNNER)),natively)

.PHONY: check-abi check-abi-all

check-abi: $(if $(filter x86_64,$(ARCH)),deps-apt,deps-cross) $(EMB_MBEDTLS) $(EMB_LIBUV)
	@rm -rf $(ABI_DIR)
	@mkdir -p $(ABI_DIR) $(XINC)
	@# As in the embedded target: only these headers of /usr/include are shown to ARM builds.
	@for h in uv.h uv mbedtls psa; do ln -sfn /usr/include/$$h $(XINC)/$$h; done
	@awk -v lang=c -f cross/abi/gen.awk $(ABI_LIST) > $(ABI_DIR)/probe.c
	@awk -v lang=swift -f cross/abi/gen.awk $(ABI_LIST) > $(ABI_DIR)/probe.swift
	@echo "check-abi $(ARCH) (LINK=$(LINK)): C probe"
	@$(ABI_CC) $(ABI_DIR)/probe.c -o $(ABI_DIR)/probe-c
	@echo "check-abi $(ARCH) (LINK=$(LINK)): Swift probe"
	@$(SWIFTC) $(EMB_FLAGS) -module-name abi_probe $(ABI_DIR)/probe.swift -c -o $(ABI_DIR)/probe-swift.o
	@$(TC)/usr/bin/$(EMB_LINK) $(ABI_DIR)/probe-swift.o $(EMB_LIBS) -o $(ABI_DIR)/probe-swift
	@$(RUNNER) $(ABI_DIR)/probe-c > $(ABI_DIR)/c.txt
	@$(RUNNER) $(ABI_DIR)/probe-swift > $(ABI_DIR)/swift.txt
	@# On a difference, one known cause is checked: clang's module cache does not key CLibUV and
	@# CMbedTLS on the include paths, so a module built from other headers (say /usr/include's
	@# mbedTLS instead of the minimal one) is reused. A fresh cache tells.
	@if ! cross/abi/compare.sh $(ARCH) $(ABI_DIR)/c.txt $(ABI_DIR)/swift.txt "$(ABI_C_DESC)" "$(ABI_S_DESC)"; then \
	  rm -rf $(ABI_DIR)/module-cache $(ABI_DIR)/probe-fresh.o; \
	  $(SWIFTC) $(EMB_FLAGS) -module-cache-path $(ABI_DIR)/module-cache -module-name abi_probe $(ABI_DIR)/probe.swift \
	    -c -o $(ABI_DIR)/probe-fresh.o \
	  && $(TC)/usr/bin/$(EMB_LINK) $(ABI_DIR)/probe-fresh.o $(EMB_LIBS) -o $(ABI_DIR)/probe-fresh \
	  && $(RUNNER) $(ABI_DIR)/probe-fresh > $(ABI_DIR)/swift-fresh.txt \
	  && if cmp -s $(ABI_DIR)/c.txt $(ABI_DIR)/swift-fresh.txt; then \
	    echo "check-abi $(ARCH): with a fresh module cache (-module-cache-path) the Swift probe agrees with C:"; \
	    echo "  the shared clang module cache holds CLibUV/CMbedTLS built from other headers, and the"; \
	    echo "  device build (same flags, same cache) imports them too. Give the Embedded builds their own"; \
	    echo "  cache in EMB_FLAGS, e.g. -module-cache-path \$$(EMB_DIR)/ModuleCache."; \
	  fi; \
	  exit 1; \
	fi
ifeq ($(ABI_SELFTEST),1)
	@# A C probe with one row skewed by 8 (through -DABI_SKEW) must fail the comparison, with a
	@# message naming that row; so must a Swift output with its last row cut off.
	@for skew in $(ABI_SKEWS); do \
	  rm -f $(ABI_DIR)/probe-c-skew $(ABI_DIR)/c-skew.txt; \
	  $(ABI_CC) -DABI_SKEW='"'"$$skew"'"' $(ABI_DIR)/probe.c -o $(ABI_DIR)/probe-c-skew || exit 1; \
	  $(RUNNER) $(ABI_DIR)/probe-c-skew > $(ABI_DIR)/c-skew.txt || exit 1; \
	  if cross/abi/compare.sh $(ARCH) $(ABI_DIR)/c-skew.txt $(ABI_DIR)/swift.txt > $(ABI_DIR)/selftest.log 2>&1; then \
	    echo "check-abi $(ARCH): SELF-TEST FAILED: a skewed $$skew was not detected"; exit 1; \
	  fi; \
	  grep "^ABI MISMATCH $(ARCH): $$skew: " $(ABI_DIR)/selftest.log | sed 's/^/  self-test, expected: /' | grep . \
	    || { echo "check-abi $(ARCH): SELF-TEST FAILED: no message names $$skew"; cat $(ABI_DIR)/selftest.log; exit 1; }; \
	done
	@sed '$$d' $(ABI_DIR)/swift.txt > $(ABI_DIR)/swift-short.txt
	@last=$$(tail -n 1 $(ABI_DIR)/c.txt | cut -d' ' -f2); \
	if cross/abi/compare.sh $(ARCH) $(ABI_DIR)/c.txt $(ABI_DIR)/swift-short.txt > $(ABI_DIR)/selftest.log 2>&1; then \
	  echo "check-abi $(ARCH): SELF-TEST FAILED: a missing Swift row was not detected"; exit 1; \
	fi; \
	grep "^ABI MISMATCH $(ARCH): $$last: printed by the C probe only" $(ABI_DIR)/selftest.log | sed 's/^/  self-test, expected: /' | grep . \
	  || { echo "check-abi $(ARCH): SELF-TEST FAILED: no message names $$last"; exit 1; }
	@echo "check-abi $(ARCH): self-test OK: each injected difference failed the check and was named"
endif

# Every architecture with each mbedTLS the device may link (LINK=static: the minimal build;
# LINK=dynamic: the system's), even after a failure, then one verdict.
check-abi-all:
	@failed=""; \
	for a in x86_64 aarch64 armv7; do for l in static dynamic; do \
	  $(MAKE) --no-print-directory check-abi ARCH=$$a LINK=$$l || failed="$$failed $$a/$$l"; \
	done; done; \
	if [ -n "$$failed" ]; then echo "check-abi-all: FAILED for:$$failed"; exit 1; fi; \
	echo "check-abi-all: OK for x86_64 aarch64 armv7, LINK=static and LINK=dynamic"
