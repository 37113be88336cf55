// swift-tools-version:6.0
import PackageDescription

// The executables carry the Swift runtime: the dynamic loader's work before tcpopsd's first
// instruction drops from ~10 ms to ~2 ms (a signal in that window would still kill it), and
// nothing under /opt/swift is needed where they are installed. Set here rather than with
// `--static-swift-stdlib` so that `swift build` and `swift test` link them alike; the modules were
// compiled against the shared Foundation, so its static parts (and the Synchronization library
// they use, which tcpopsctl links nothing else of) are named. lld, because gold warns
// about the static Foundation's use of mktemp on every link.
// Sanitizer builds (make test-sanitize) link it dynamically: the statically linked executable does
// not export the sanitizer's malloc to libsystemd, whose allocations then come back to the wrong free.
let staticRuntime: [LinkerSetting] = Context.environment["TCPOPS_SANITIZE"] != nil ? [.unsafeFlags(["-use-ld=lld"])]
    : [.unsafeFlags(["-static-stdlib", "-use-ld=lld", "-l_FoundationCollections", "-l_FoundationCShims", "-lswiftSynchronization"])]

// `make` passes the checkout's git revision (for --version); a plain `swift build` leaves it out.
let revision: [CSetting] = Context.environment["TCPOPS_GIT_REVISION"].flatMap { rev in
    rev.allSatisfy { $0.isHexDigit } && !rev.isEmpty ? [.define("TCPOPS_GIT_REVISION", to: "\"\(rev)\"")] : nil
} ?? []

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
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(name: "CSystemd", path: "Sources/CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        .target(name: "CShims", path: "Sources/CShims", cSettings: revision),
        // sd-bus, in C (its calls are variadic): which job systemd runs on our unit (stop or restart),
        // for `tcpopsd --stop-hint`.
        .target(name: "CSystemdBus", dependencies: ["CSystemd"], path: "Sources/CSystemdBus"),
        // tcpopsd's first code (.preinit_array): signals blocked before any library or Swift code runs.
        .target(name: "CEarly", path: "Sources/CEarly"),
        // The layers, each depending only on those below it (the compiler keeps them apart):
        // system calls and their values (TCPOpsPosix), the epoll loop and its timers and inbox
        // (TCPOpsLoop); beside it the wire protocols (TCPOpsProtocol) and the configuration
        // (TCPOpsConfig); then the daemon: relays, events, control, metrics (TCPOps).
        .target(name: "TCPOpsPosix", dependencies: ["CShims"], path: "Sources/TCPOpsPosix"),
        .target(name: "TCPOpsLoop", dependencies: ["TCPOpsPosix", "CShims"], path: "Sources/TCPOpsLoop"),
        // Beside the loop: the control protocol (requests, answers, JSON), the version line (all
        // that tcpopsctl shares with the daemon: it links nothing else of it) and the PROXY protocol.
        .target(name: "TCPOpsProtocol", dependencies: ["TCPOpsPosix", "CShims"], path: "Sources/TCPOpsProtocol"),
        // The configuration: our TOML reader and the validated Configuration every layer above reads.
        .target(name: "TCPOpsConfig", dependencies: ["TCPOpsPosix", "TCPOpsProtocol"], path: "Sources/TCPOpsConfig"),
        // The event vocabulary (sides' reasons, kinds, an event, a relay's end) and its one field
        // table, from which the journal entry, the JSON line, the hook environment and the metrics'
        // labels are made. Below the relay: it knows no relay, logger or sink.
        .target(name: "TCPOpsEvents", dependencies: ["TCPOpsPosix", "TCPOpsProtocol", "TCPOpsConfig"], path: "Sources/TCPOpsEvents"),
        // systemd's side channels: the journal writer (events and relay ends rendered from the
        // schema, straight into bytes), sd_notify, the sockets systemd passes, the stop hint, and
        // log rate limits. Knows events, not the relay.
        .target(name: "TCPOpsSystemd", dependencies: ["TCPOpsPosix", "TCPOpsLoop", "TCPOpsConfig", "TCPOpsEvents", "CSystemd", "CSystemdBus", "CShims"],
                path: "Sources/TCPOpsSystemd"),
        // The Prometheus counters (by listener, by event kind, reason and side) and the /metrics
        // endpoint's thread.
        .target(name: "TCPOpsMetrics", dependencies: ["TCPOpsPosix", "TCPOpsLoop", "TCPOpsProtocol", "TCPOpsConfig", "TCPOpsEvents", "TCPOpsSystemd",
                                                      .product(name: "Prometheus", package: "swift-prometheus")],
                path: "Sources/TCPOpsMetrics"),
        // The relay: its phase machine, its two Directions and Connections, the worker (one loop
        // each) and its listeners, carrying relays across a restart, the configuration generation
        // a worker runs, and the dispatcher its events leave through (to the log, to a hook sink,
        // to observers). Knows no control socket, hook runner or daemon.
        .target(name: "TCPOpsRelay", dependencies: ["TCPOpsPosix", "TCPOpsLoop", "TCPOpsProtocol", "TCPOpsConfig", "TCPOpsEvents", "TCPOpsSystemd",
                                                    "TCPOpsMetrics", "CShims"],
                path: "Sources/TCPOpsRelay"),
        // The daemon: start and stop as services, reload, the fd store, the hook runner, the control
        // socket and its commands.
        .target(
            name: "TCPOps",
            dependencies: [
                "TCPOpsPosix", "TCPOpsLoop", "TCPOpsProtocol", "TCPOpsConfig", "TCPOpsEvents", "TCPOpsSystemd", "TCPOpsMetrics", "TCPOpsRelay",
                "CSystemd", "CShims",
            ],
            path: "Sources/TCPOps"
        ),
        .executableTarget(
            name: "tcpopsd",
            dependencies: ["TCPOps", "TCPOpsSystemd", "TCPOpsLoop", "TCPOpsPosix", "TCPOpsProtocol", "TCPOpsConfig", "CEarly", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/tcpopsd",
            linkerSettings: staticRuntime
        ),
        .executableTarget(
            name: "tcpopsctl",
            dependencies: ["TCPOpsProtocol", "TCPOpsPosix", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/tcpopsctl",
            linkerSettings: staticRuntime
        ),
        .testTarget(name: "TCPOpsTests", dependencies: ["TCPOps", "TCPOpsEvents", "TCPOpsSystemd", "TCPOpsMetrics", "TCPOpsRelay", "TCPOpsLoop", "TCPOpsPosix", "TCPOpsProtocol", "TCPOpsConfig"], path: "Tests/TCPOpsTests"),
    ],
    swiftLanguageModes: [.v6]
)

// Fuzz targets (libFuzzer), only when TCPOPS_FUZZ is set: `make fuzz` builds them with
// -sanitize=fuzzer,address in a build folder of their own (Fuzz/README.md).
if Context.environment["TCPOPS_FUZZ"] != nil {
    package.targets.append(.target(name: "FuzzSupport", path: "Fuzz/FuzzSupport"))
    for name in ["FuzzConfig", "FuzzControl", "FuzzProxy"] {
        package.targets.append(.executableTarget(name: name, dependencies: ["TCPOps", "TCPOpsPosix", "TCPOpsProtocol", "TCPOpsConfig", "FuzzSupport"], path: "Fuzz/\(name)",
                                                 swiftSettings: [.unsafeFlags(["-parse-as-library"])],
                                                 linkerSettings: [.unsafeFlags(["-use-ld=lld"])]))
    }
}
