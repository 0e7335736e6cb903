// swift-tools-version:6.0
import PackageDescription

/// One set of Swift settings for every target (style.md #12).
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "EdgeFleet",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "edgefleet-agent", targets: ["edgefleet-agent"]),
        .executable(name: "edgefleet-aggregator", targets: ["edgefleet-aggregator"]),
        .executable(name: "edgefleet", targets: ["edgefleet"]),
        .library(name: "MQTT", targets: ["MQTT"]),
        .library(name: "FleetCore", targets: ["FleetCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        // The C surface: libmosquitto through pkg-config; never a product.
        .systemLibrary(
            name: "CMosquitto",
            pkgConfig: "libmosquitto",
            providers: [.apt(["libmosquitto-dev"]), .brew(["mosquitto"])]
        ),
        // The one parser of HOST:PORT (listen addresses, broker URLs, probe endpoints).
        .target(name: "HostPort", swiftSettings: swiftSettings),
        .target(
            name: "MQTT",
            dependencies: [
                "CMosquitto", "HostPort",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(name: "FleetCore", swiftSettings: swiftSettings),
        // The contract's topics over the MQTT client: each topic's QoS and retain flag from FleetCore.
        .target(name: "FleetMessaging", dependencies: ["FleetCore", "MQTT"], swiftSettings: swiftSettings),
        // YAML for configuration files and kubeconfigs: libyaml through pkg-config and a
        // small composer and Decoder, so the agent never loads Foundation and ICU (Yams does).
        .systemLibrary(name: "CYAML", pkgConfig: "yaml-0.1", providers: [.apt(["libyaml-dev"]), .brew(["libyaml"])]),
        .target(name: "YAMLReader", dependencies: ["CYAML"], swiftSettings: swiftSettings),
        // The agent's Azure probe: TCP connect + TLS handshake with a deadline (OpenSSL, already
        // loaded through libmosquitto).
        // What Swift's Glibc module does not import: closing inherited descriptors in a spawned
        // child (posix_spawn_file_actions_addclosefrom_np) and becoming a child subreaper.
        .target(name: "CProcess"),
        .target(name: "CTLSProbe", linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),
        // Every process the project starts goes through here (spawn with nothing but 0-2, run
        // with a timeout and bounded output, the process table); no command-line parsing.
        .target(name: "Subprocesses", dependencies: ["CProcess", "FleetCore"], swiftSettings: swiftSettings),
        // Layered settings (file, EDGEFLEET_* environment, flags) and the broker settings the
        // agent and the aggregator share; no command-line parsing.
        .target(name: "LayeredSettings", dependencies: ["FleetCore", "MQTT", "YAMLReader"], swiftSettings: swiftSettings),
        // The site agent's parts: durable state, probes, checks, certificates, spool, the service.
        .target(
            name: "FleetAgent",
            dependencies: [
                "FleetCore", "MQTT", "FleetMessaging", "Subprocesses", "LayeredSettings", "HostPort", "CTLSProbe", "YAMLReader",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The deferred-operation queue: the store protocol and its SQLite store, submission,
        // executor templates, the dispatcher, the queue's Service. Knows nothing of fleet state.
        .target(
            name: "FleetQueue",
            dependencies: [
                "FleetCore", "Subprocesses",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The aggregator's core: ingest, the fleet state and its schedule, the site store,
        // publishing, metrics, the service and its wiring to the queue.
        .target(
            name: "FleetAggregator",
            dependencies: [
                "FleetCore", "MQTT", "FleetMessaging", "FleetQueue", "LayeredSettings", "Subprocesses", "HostPort",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The aggregator's stores in PostgreSQL (replicas share one database): the only module
        // that imports PostgresNIO. Blocking calls over a pool of its own event loop.
        .target(
            name: "FleetPostgres",
            dependencies: [
                "FleetCore", "FleetQueue", "FleetAggregator", "HostPort",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Principals (name, role, the SHA-256 of a token) and their file: the aggregator reads it,
        // the CLI's `token add` writes it.
        .target(
            name: "Principals",
            dependencies: ["YAMLReader", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        // The HTTP API, the dashboard and /metrics: the only module that imports Hummingbird.
        // It reaches the aggregator through one protocol (OperatorBackend), never its core.
        .target(
            name: "FleetHTTP",
            dependencies: [
                "FleetCore", "FleetQueue", "HostPort", "Principals",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            ],
            swiftSettings: swiftSettings
        ),
        // Virtual sites speaking the contract through the real broker (`edgefleet simulate`,
        // the demo, load benchmarks).
        .target(
            name: "FleetSimulator",
            dependencies: ["FleetCore", "MQTT", "FleetMessaging", "YAMLReader", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // What the three executables share: EdgeFleet's exit codes and options around
        // ArgumentParser, and running their services. Only executables depend on it.
        .target(
            name: "CommandSupport",
            dependencies: [
                "FleetCore", "MQTT", "Subprocesses", "LayeredSettings",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "edgefleet-agent",
            dependencies: [
                "FleetCore", "MQTT", "CommandSupport", "FleetAgent", "LayeredSettings", "Subprocesses",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "edgefleet-aggregator",
            dependencies: [
                "FleetCore", "MQTT", "CommandSupport", "FleetAggregator", "FleetQueue", "FleetHTTP", "FleetPostgres", "LayeredSettings", "HostPort",
                "Subprocesses", "Principals",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "edgefleet",
            dependencies: [
                "FleetCore", "MQTT", "CommandSupport", "FleetSimulator", "Subprocesses", "LayeredSettings", "Principals",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // HTTPS with a CA of the operator's (--ca-file): URLSession on Linux cannot take one.
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "edgefleet-bench",
            dependencies: [
                "MQTT", "FleetCore", "FleetAggregator", "FleetQueue", "FleetPostgres", "FleetSimulator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/edgefleet-bench",
            swiftSettings: swiftSettings
        ),
        // Helpers the integration tests share: a real mosquitto on a free port,
        // a cuttable TCP proxy, openssl-made certificates, subprocesses.
        .target(
            name: "TestSupport",
            dependencies: ["MQTT", "CProcess", "Subprocesses", "HostPort"],
            path: "Tests/TestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "FleetCoreTests", dependencies: ["FleetCore"], swiftSettings: swiftSettings),
        .testTarget(name: "YAMLReaderTests", dependencies: ["YAMLReader"], swiftSettings: swiftSettings),
        .testTarget(
            name: "FleetAgentTests",
            dependencies: [
                "FleetAgent", "Subprocesses", "LayeredSettings", "TestSupport", "MQTT", "FleetCore", .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "CommandLineTests", dependencies: ["TestSupport", "Subprocesses", "LayeredSettings", "HostPort", "FleetCore", "FleetAgent", "MQTT", "YAMLReader"], swiftSettings: swiftSettings),
        .testTarget(
            name: "FleetAggregatorTests",
            dependencies: [
                "FleetAggregator", "FleetQueue", "FleetHTTP", "FleetPostgres", "FleetCore", "FleetSimulator", "MQTT", "TestSupport", "Subprocesses",
                "LayeredSettings", "HostPort", "YAMLReader", "Principals",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MQTTIntegrationTests",
            dependencies: ["MQTT", "TestSupport", "FleetCore"],
            swiftSettings: swiftSettings
        ),
    ]
)
