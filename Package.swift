// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "limiquantix",
    products: [
        .library(name: "LQXModel", targets: ["LQXModel"]),
        .library(name: "AgentProtocol", targets: ["AgentProtocol"]),
        .library(name: "GuestAgent", targets: ["GuestAgent"]),
        .library(name: "HostBroker", targets: ["HostBroker"]),
        .library(name: "LQXServer", targets: ["LQXServer"]),
        .library(name: "NodeCore", targets: ["NodeCore"]),
        .library(name: "NodeLibvirt", targets: ["NodeLibvirt"]),
        .library(name: "NodeDaemon", targets: ["NodeDaemon"]),
        .library(name: "ControlPlane", targets: ["ControlPlane"]),
        .executable(name: "lqx-agent", targets: ["lqx-agent"]),
        .executable(name: "lqx", targets: ["lqx"]),
        .executable(name: "lqx-node", targets: ["lqx-node"]),
        .executable(name: "lqx-controlplane", targets: ["lqx-controlplane"]),
    ],
    traits: [
        .trait(
            name: "NodeClient",
            description: "lqx talks to node daemons over gRPC (`lqx --node`); off for the in-guest build"),
        .default(enabledTraits: ["NodeClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
    ],
    targets: [
        .target(name: "CLQXSupport"),
        // The version string, in C so that setting it (packaging) recompiles one file, not the tree.
        .target(name: "CLQXVersion"),
        // The shared model: specs, labels, identifiers, the error type. No NIO, gRPC, libvirt or Foundation.
        .target(name: "LQXModel", dependencies: ["CLQXVersion"]),
        // Spawning, reaping, threads and the epoll reactor, for the agent and the node (no Foundation).
        .target(name: "POSIXSupport", dependencies: ["CLQXSupport", "LQXModel"]),
        .systemLibrary(name: "CLibvirt", pkgConfig: "libvirt", providers: [.apt(["libvirt-dev"])]),
        .target(
            name: "NodeAPI",
            dependencies: [
                "LQXTypes",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ]
        ),
        // limiquantix.types.v1 (generated) and its one mapping to the model: what node.v1 and
        // compute.v1 share.
        .target(
            name: "LQXTypes",
            dependencies: ["LQXModel", .product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        // The cluster API (generated compute.v1).
        .target(
            name: "ControlPlaneAPI",
            dependencies: [
                "LQXTypes",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ]
        ),
        // The cluster API's layer: compute.v1 requests decoded into `Cluster` calls.
        .target(
            name: "ControlPlaneServer",
            dependencies: [
                "ControlPlane", "ControlPlaneAPI", "LQXTypes", "LQXModel", "LQXServer", "NodeAPI",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The control plane's executable: flags → `ControlPlaneDaemon.build`.
        .executableTarget(
            name: "lqx-controlplane",
            dependencies: [
                "ControlPlaneServer", "ControlPlane", "LQXServer", "LQXModel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // One server foundation for the node daemon and the control plane: gRPC as a Service, TLS,
        // bearer tokens, error mapping.
        .target(
            name: "LQXServer",
            dependencies: [
                "LQXModel",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The node's core: VM manager, lifecycle policy, typed operations, behind `Hypervisor`.
        .target(
            name: "NodeCore",
            dependencies: [
                "LQXModel", "HostBroker", "AgentProtocol", "POSIXSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The libvirt backend of `Hypervisor`.
        .target(
            name: "NodeLibvirt",
            dependencies: [
                "NodeCore", "LQXModel", "CLibvirt", "POSIXSupport",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // A hypervisor in memory, for unit tests of the core and the API layer.
        .target(name: "NodeCoreTesting", dependencies: ["NodeCore", "LQXModel"]),
        // The node's API layer: gRPC service, HTTP endpoints, the daemon's services.
        .target(
            name: "NodeDaemon",
            dependencies: [
                "NodeCore", "NodeLibvirt", "LQXServer", "CLQXSupport", "HostBroker", "AgentProtocol", "NodeAPI",
                "LQXTypes", "ControlPlaneAPI",
                "LQXModel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "lqx-node",
            dependencies: [
                "NodeDaemon", "NodeCore", "HostBroker", "LQXModel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The cluster's core: store, scheduler, reconciler, auth — no transport.
        .target(
            name: "ControlPlane",
            dependencies: [
                "LQXModel",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "AgentProtocol",
            dependencies: [
                "CLQXSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "GuestAgent",
            dependencies: [
                "AgentProtocol", "CLQXSupport", "LQXModel", "POSIXSupport",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "HostBroker",
            dependencies: [
                "AgentProtocol", "LQXModel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "lqx-agent",
            dependencies: [
                "GuestAgent", "CLQXSupport", "LQXModel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "lqx",
            dependencies: [
                "HostBroker", "AgentProtocol", "CLQXSupport", "LQXModel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .target(name: "NodeAPI", condition: .when(traits: ["NodeClient"])),
                .target(name: "LQXTypes", condition: .when(traits: ["NodeClient"])),
                .target(name: "ControlPlaneAPI", condition: .when(traits: ["NodeClient"])),
                .target(name: "LQXServer", condition: .when(traits: ["NodeClient"])),
                .product(name: "GRPCCore", package: "grpc-swift-2", condition: .when(traits: ["NodeClient"])),
                .product(
                    name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport",
                    condition: .when(traits: ["NodeClient"])),
            ]
        ),
        .executableTarget(
            name: "lqx-fuzz-frames",
            dependencies: ["AgentProtocol", "CLQXSupport", .product(name: "NIOCore", package: "swift-nio")],
            path: "fuzz/FrameFuzz"
        ),
        .executableTarget(
            name: "lqx-bench",
            dependencies: [
                "HostBroker", "AgentProtocol", "CLQXSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "benchmarks/AgentBench"
        ),
        .executableTarget(
            name: "lqx-cp-bench",
            dependencies: [
                "ControlPlane", "ControlPlaneAPI", "LQXModel", "LQXServer", "LQXTestSupport", "LQXTypes", "NodeAPI",
                "NodeCore", "NodeDaemon", "NodeTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "benchmarks/ControlPlaneBench"
        ),
        // A misbehaving agent for the test guest (initramfs-hostile.cpio); never packaged.
        .executableTarget(
            name: "lqx-hostile-agent",
            dependencies: ["AgentProtocol", .product(name: "NIOCore", package: "swift-nio")],
            path: "Tests/HostileGuestAgent"
        ),
        .target(name: "LQXTestSupport", dependencies: ["POSIXSupport", "AgentProtocol"], path: "Tests/Support"),
        .testTarget(
            name: "AgentProtocolTests",
            dependencies: [
                "AgentProtocol", "CLQXSupport", "LQXTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "LQXModelTests", dependencies: ["LQXModel"]),
        // Commits to a store and prints each acknowledgement; the durability test kills it with -9.
        .executableTarget(
            name: "lqx-store-writer",
            dependencies: [
                "ControlPlane", "LQXModel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Tests/StoreWriter"
        ),
        .testTarget(
            name: "ControlPlaneTests",
            dependencies: [
                "ControlPlane", "ControlPlaneServer", "ControlPlaneAPI", "LQXModel", "LQXTestSupport", "LQXServer",
                "NodeAPI", "NodeTestSupport", "LQXTypes",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCInProcessTransport", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "LQXServerTests",
            dependencies: [
                "LQXServer", "LQXModel", "LQXTestSupport",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "GuestAgentTests",
            dependencies: ["GuestAgent", "AgentProtocol", "CLQXSupport", "LQXModel"]
        ),
        // Node test helpers shared by the libvirt and daemon tests (test node layouts, guest boot waits).
        .target(
            name: "NodeTestSupport",
            dependencies: ["LQXTestSupport", "NodeCore", "NodeLibvirt", "LQXModel"],
            path: "Tests/NodeSupport"
        ),
        .testTarget(name: "POSIXSupportTests", dependencies: ["POSIXSupport", "LQXModel", "LQXTestSupport"]),
        .testTarget(
            name: "NodeCoreTests",
            dependencies: [
                "NodeCore", "NodeCoreTesting", "LQXModel", "HostBroker",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "NodeLibvirtTests",
            dependencies: [
                "NodeLibvirt", "NodeCore", "NodeCoreTesting", "NodeTestSupport", "LQXTestSupport", "LQXModel",
                "HostBroker", "AgentProtocol",
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Golden"]
        ),
        .testTarget(
            name: "NodeDaemonTests",
            dependencies: [
                "NodeDaemon", "NodeCore", "NodeLibvirt", "NodeCoreTesting", "NodeTestSupport", "HostBroker",
                "AgentProtocol", "NodeAPI", "LQXTypes", "LQXTestSupport", "LQXModel", "LQXServer",
                .product(name: "GRPCInProcessTransport", package: "grpc-swift-2"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // An in-process agent and broker for the broker and CLI tests.
        .target(
            name: "AgentTestSupport",
            dependencies: [
                "GuestAgent", "HostBroker", "AgentProtocol", "LQXTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/AgentSupport"
        ),
        .testTarget(
            name: "HostBrokerTests",
            dependencies: [
                "HostBroker", "GuestAgent", "AgentProtocol", "CLQXSupport", "LQXTestSupport", "AgentTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The `lqx` binary: command shapes, exit statuses, and its broker against a hostile agent.
        .testTarget(
            name: "lqxTests",
            dependencies: [
                "HostBroker", "GuestAgent", "AgentProtocol", "LQXTestSupport", "AgentTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ]
)

for target in package.targets where target.type != .system && target.name != "CLQXSupport" {
    var settings = target.swiftSettings ?? []
    settings.append(.enableUpcomingFeature("ExistentialAny"))
    settings.append(.swiftLanguageMode(.v6))
    target.swiftSettings = settings
}
