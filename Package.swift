// swift-tools-version:6.0
// Host build (full Swift) used for development and `swift test`.
// The device binary is built separately in Embedded Swift by the Makefile (`make embedded`).
import PackageDescription

let mbedtlsLibraries: [LinkerSetting] = [
    .linkedLibrary("mbedtls"), .linkedLibrary("mbedx509"), .linkedLibrary("mbedcrypto"),
]

let package = Package(
    name: "localproxy",
    products: [
        .library(name: "TunnelCore", targets: ["TunnelCore"]),
        .library(name: "TunnelTLS", targets: ["TunnelTLS"]),
        .executable(name: "localproxy", targets: ["localproxy"]),
        .executable(name: "wire-probe", targets: ["wire-probe"]),
        .executable(name: "tunnel-service", targets: ["tunnel-service"]),
    ],
    targets: [
        // C libraries through module maps. Debian's mbedTLS 2.28 ships no pkg-config file.
        // CLibC: the C library's declarations (signals, sockets, files, time) that Swift calls;
        // CLibUV: libuv, for TunnelIO only.
        .systemLibrary(name: "CLibC"),
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CMbedTLS", providers: [.apt(["libmbedtls-dev"])]),

        // Protocol core: no I/O, no clock, Embedded-clean. Uses mbedTLS only for SHA-1 and base64.
        .target(
            name: "TunnelCore",
            dependencies: ["CMbedTLS"],
            linkerSettings: mbedtlsLibraries
        ),

        // mbedTLS over memory buffers: TLS client and server roles, secure random bytes.
        .target(
            name: "TunnelTLS",
            dependencies: ["TunnelCore", "CMbedTLS"],
            linkerSettings: mbedtlsLibraries
        ),

        // The only libuv user: loop, streams, timers, signals, DNS.
        .target(
            name: "TunnelIO",
            dependencies: ["TunnelCore", "CLibC", "CLibUV"],
            linkerSettings: [.linkedLibrary("uv")]
        ),

        // The application: configuration, runtimes per mode, logging, reconnect policy.
        .target(name: "LocalProxy", dependencies: ["TunnelCore", "TunnelTLS", "TunnelIO", "CLibC"]),
        // The device binary: a thin entry point.
        .executableTarget(name: "localproxy", dependencies: ["LocalProxy", "CLibC"]),

        // Host-only test peer driver: speaks our codecs over plain sockets so that Python's
        // `websockets` and `protobuf` can check them (Tests/Peers). Never part of the device binary.
        .executableTarget(name: "wire-probe", dependencies: ["TunnelCore"]),

        // Byte vectors run as a program; `make embedded` links and runs it in Embedded Swift.
        .executableTarget(name: "core-selftest", dependencies: ["TunnelCore", "CLibC"]),

        .testTarget(name: "TunnelCoreTests", dependencies: ["TunnelCore"]),
        .testTarget(name: "TunnelTLSTests", dependencies: ["TunnelTLS"]),
        .testTarget(name: "TunnelIOTests", dependencies: ["TunnelIO"]),
        .testTarget(name: "LocalProxyTests", dependencies: ["LocalProxy", "CLibC"]),

        // Host-only local emulator of the tunneling service (data plane and control plane), so a
        // whole tunnel runs on one machine. Full Swift with Foundation; never linked into the device.
        // It publishes tunnel notifications with the device's own MQTT client (LocalProxy).
        .target(name: "TunnelService", dependencies: ["TunnelCore", "TunnelTLS", "TunnelIO", "LocalProxy"]),
        .executableTarget(name: "tunnel-service", dependencies: ["TunnelService"]),
        .testTarget(name: "TunnelServiceTests", dependencies: ["TunnelService"]),
    ]
)
