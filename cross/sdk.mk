# The device binary built by SwiftPM through a Swift SDK bundle (cross/make-swift-sdk,
# cross/README.md). Included by the Makefile; uses its ARCH, GNU_TRIPLE, RUNNER, TC and SWIFT.
#   make swift-sdk                              (re)generate .build-sdk/localproxy.artifactbundle
#   make sdk-build ARCH=x86_64|aarch64|armv7    build localproxy and core-selftest with it, run both
#   make sdk-build-all                          the three, one after the other
# By default the SDKs link the minimal mbedTLS of the static device builds (built first, for each
# architecture, by `make mbedtls`) and Debian's static libuv. LP_SDK_LIBDIR_<arch> /
# LP_SDK_INCDIR_<arch> choose other libraries (cross/make-swift-sdk --help); run `make swift-sdk`
# after changing them.

SDK_DIR      := .build-sdk
SDK_BUNDLE   := $(SDK_DIR)/localproxy.artifactbundle
SDK_NAME     := localproxy-$(ARCH)
SDK_SCRATCH  := $(SDK_DIR)/$(ARCH)
SDK_BIN      := $(SDK_SCRATCH)/release
# The bundle's libuv.pc first: it puts the bundle's directory of static archives at the head of
# the link line. Without it SwiftPM would read the host's libuv.pc (-L/usr/lib/x86_64-linux-gnu).
SDK_ENV      := PKG_CONFIG_PATH=$(CURDIR)/$(SDK_BUNDLE)/$(SDK_NAME)/pkgconfig:/usr/lib/$(GNU_TRIPLE)/pkgconfig
SDK_BUILD    := $(SDK_ENV) $(SWIFT) build -c release --disable-local-rpath --scratch-path $(SDK_SCRATCH) \
                --swift-sdks-path $(SDK_DIR) --swift-sdk $(SDK_NAME)

.PHONY: swift-sdk sdk-build sdk-build-all

SDK_ARCHES   := x86_64 aarch64 armv7
SDK_MBEDTLS  := $(foreach a,$(SDK_ARCHES),--libdir $(a)=.build-embedded/mbedtls-$(a)/library \
                --incdir $(a)=.build-embedded/mbedtls-$(a)/include)

swift-sdk: deps-cross
	for a in $(SDK_ARCHES); do $(MAKE) --no-print-directory mbedtls ARCH=$$a LINK=static || exit 1; done
	cross/make-swift-sdk $(SDK_MBEDTLS) $(SDK_BUNDLE)
	@# SwiftPM does not see a changed SDK (headers, archives): build everything again.
	rm -rf $(addprefix $(SDK_DIR)/,$(SDK_ARCHES))

# Generated when missing or older than the generator or the mbedTLS configuration.
$(SDK_BUNDLE)/$(SDK_NAME)/toolset.json: cross/make-swift-sdk $(MBEDTLS_CONFIG)
	$(MAKE) --no-print-directory swift-sdk

sdk-build: deps-cross $(SDK_BUNDLE)/$(SDK_NAME)/toolset.json
	$(SDK_BUILD) --product localproxy
	$(TC)/usr/bin/llvm-objcopy --strip-all $(SDK_BIN)/localproxy $(SDK_SCRATCH)/localproxy.stripped
	$(RUNNER) $(SDK_BIN)/localproxy --version
	@$(RUNNER) $(SDK_BIN)/localproxy --help >/dev/null || { echo "sdk-build $(ARCH): --help failed"; exit 1; }
	@$(TC)/usr/bin/llvm-objdump -p $(SDK_BIN)/localproxy | awk '/NEEDED/ { n = n " " $$2 } \
	  END { print "sdk-build $(ARCH): needs" n }'
	@ls -lL $(SDK_BIN)/localproxy $(SDK_SCRATCH)/localproxy.stripped
	@echo "sdk-build $(ARCH): core-selftest (build and run)"
	$(SDK_BUILD) --product core-selftest
	$(RUNNER) $(SDK_BIN)/core-selftest

sdk-build-all:
	$(MAKE) sdk-build ARCH=x86_64
	$(MAKE) sdk-build ARCH=aarch64
	$(MAKE) sdk-build ARCH=armv7
