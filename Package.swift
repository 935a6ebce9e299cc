// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "limiquantix",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "AgentProtocol", targets: ["AgentProtocol"]),
        .library(name: "GuestAgent", targets: ["GuestAgent"]),
        .library(name: "HostBroker", targets: ["HostBroker"]),
        .library(name: "NodeDaemon", targets: ["NodeDaemon"]),
        .executable(name: "lqx-agent", targets: ["lqx-agent"]),
        .executable(name: "lqx", targets: ["lqx"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .target(name: "CLQXSupport", cSettings: [.unsafeFlags(["-O2"])]),
        .systemLibrary(name: "CLibvirt", pkgConfig: "libvirt", providers: [.apt(["libvirt-dev"])]),
        .target(
            name: "NodeDaemon",
            dependencies: [
                "CLibvirt", "HostBroker", "AgentProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
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
                "AgentProtocol", "CLQXSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "HostBroker",
            dependencies: [
                "AgentProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "lqx-agent",
            dependencies: [
                "GuestAgent", "CLQXSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "lqx",
            dependencies: [
                "HostBroker", "AgentProtocol", "CLQXSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
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
        .testTarget(
            name: "AgentProtocolTests",
            dependencies: [
                "AgentProtocol", "CLQXSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "GuestAgentTests",
            dependencies: ["GuestAgent", "AgentProtocol", "CLQXSupport"]
        ),
        .testTarget(
            name: "NodeDaemonTests",
            dependencies: ["NodeDaemon", "HostBroker", "AgentProtocol"],
            exclude: ["Golden"]
        ),
        .testTarget(
            name: "HostBrokerTests",
            dependencies: [
                "HostBroker", "GuestAgent", "AgentProtocol", "CLQXSupport",
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
