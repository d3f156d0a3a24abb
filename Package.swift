// swift-tools-version:6.0
import PackageDescription

// Dependencies are deliberate: CI builds from scratch every run (see docs/ARCHITECTURE.md).
let package = Package(
    name: "weft",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "weft", targets: ["weft"]),
        .executable(name: "weft-control-bench", targets: ["WeftControlBench"]),
        .executable(name: "weft-fuzz", targets: ["WeftFuzz"]),
        .executable(name: "weft-nio-relay", targets: ["WeftNIORelay"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.0"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.27.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.0"),
    ],
    targets: [
        // Linux glue that Swift's Glibc module does not expose: setns, SO_ORIGINAL_DST,
        // netns creation, netlink (libmnl), privilege dropping (libcap), fork+exec in a netns, NFQUEUE
        // verdicts (libnetfilter_queue).
        .target(
            name: "CWeftLinux",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("mnl"), .linkedLibrary("cap"), .linkedLibrary("netfilter_queue")]
        ),
        .target(name: "WeftCore"),
        // Istio-compatible configuration: model, strict YAML decoding with file:line, validation
        // and lint. No NIO: pure, so every rule is a unit test.
        .target(name: "WeftConfig", dependencies: ["WeftCore", .product(name: "Yams", package: "Yams")]),
        // Workload identity: SPIFFE IDs, the CA (swift-certificates, ECDSA P-256), workload
        // keys and CSRs. No NIO: pure, so issuing and checking are unit tests.
        .target(
            name: "WeftIdentity",
            dependencies: [
                "WeftCore",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .target(
            name: "WeftNetns",
            dependencies: ["WeftCore", "CWeftLinux"]
        ),
        // Telemetry: Istio's standard metrics (swift-prometheus exposition) with bounded label
        // sets, Weft's own, the access log, W3C trace context and the OTLP/gRPC span exporter.
        .target(
            name: "WeftTelemetry",
            dependencies: [
                "WeftCore", .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "WeftProxy",
            dependencies: [
                "WeftCore", "CWeftLinux", "WeftConfig", "WeftIdentity", "WeftTelemetry",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The control plane (`weft control`): config store, CA, join tokens, and the gRPC
        // service agents subscribe to on 15012 (JSON messages; see docs/control-plane.md).
        .target(
            name: "WeftControl",
            dependencies: [
                "WeftCore", "CWeftLinux", "WeftConfig", "WeftIdentity",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOCertificateReloading", package: "swift-nio-extras"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "WeftAgent",
            dependencies: [
                "WeftCore", "WeftNetns", "WeftProxy", "CWeftLinux", "WeftConfig", "WeftIdentity", "WeftControl", "WeftTelemetry",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "weft",
            dependencies: [
                "WeftCore", "WeftNetns", "WeftAgent", "WeftControl", "CWeftLinux", "WeftConfig", "WeftTelemetry",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // bench/propagation.sh: N simulated agents subscribed to a real `weft control`.
        .executableTarget(
            name: "WeftControlBench",
            dependencies: [
                "WeftControl", "WeftCore", "WeftIdentity",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // bench/l7.sh: the least an HTTP/1.1 proxy built on NIO's codecs does (the floor under
        // Weft's L7 path; docs/performance.md).
        .executableTarget(
            name: "WeftNIORelay",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // weft-fuzz: mutation fuzzing of the parsers that see untrusted bytes (docs/security.md).
        .executableTarget(
            name: "WeftFuzz",
            dependencies: [
                "WeftProxy", "WeftConfig", "WeftCore", "WeftTelemetry",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            ]
        ),
        .testTarget(name: "WeftNetnsTests", dependencies: ["WeftNetns", "WeftCore"]),
        .testTarget(name: "WeftConfigTests", dependencies: ["WeftConfig", "WeftCore"]),
        .testTarget(name: "WeftIdentityTests", dependencies: ["WeftIdentity", "WeftCore"]),
        .testTarget(name: "WeftControlTests", dependencies: [
            "WeftControl", "WeftConfig", "WeftIdentity", "WeftCore", .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
        .testTarget(
            name: "WeftProxyTests",
            dependencies: [
                "WeftProxy", "WeftCore", "WeftAgent", "WeftConfig", "WeftIdentity",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "WeftTelemetryTests", dependencies: ["WeftTelemetry", "WeftCore"]),
        // Root + network namespaces. Skipped loudly (XCTSkip with the reason) when not root.
        .testTarget(name: "WeftIntegrationTests", dependencies: ["weft", "WeftCore", "WeftNetns"]),
    ]
)
