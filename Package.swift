// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "tcpopsd",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tcpopsd", targets: ["tcpopsd"]),
        .executable(name: "tcpopsctl", targets: ["tcpopsctl"]),
        .library(name: "TCPOps", targets: ["TCPOps"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        .systemLibrary(name: "CSystemd", path: "Sources/CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        .target(name: "CShims", path: "Sources/CShims"),
        // tcpopsd's constructor: signals blocked before any Swift code runs.
        .target(name: "CEarly", path: "Sources/CEarly"),
        .target(
            name: "TCPOps",
            dependencies: [
                "CSystemd", "CShims",
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            path: "Sources/TCPOps"
        ),
        .executableTarget(
            name: "tcpopsd",
            dependencies: ["TCPOps", "CEarly", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/tcpopsd"
        ),
        .executableTarget(
            name: "tcpopsctl",
            dependencies: ["TCPOps", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/tcpopsctl"
        ),
        .testTarget(name: "TCPOpsTests", dependencies: ["TCPOps"], path: "Tests/TCPOpsTests"),
    ],
    swiftLanguageModes: [.v6]
)
