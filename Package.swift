// swift-tools-version: 6.0
import PackageDescription

/// C flags of the project's own C code: C11, every warning an error.
let strictC: [CSetting] = [.unsafeFlags(["-std=c11", "-Wall", "-Wextra", "-Werror"])]

let package = Package(
    name: "vmexec",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "VMExecutor", targets: ["VMExecutor"]),
        .library(name: "VMExecFailure", targets: ["VMExecFailure"]),
        .library(name: "SerialChannel", targets: ["SerialChannel"]),
        .library(name: "SquashMounts", targets: ["SquashMounts"]),
        .library(name: "PersistOverlay", targets: ["PersistOverlay"]),
        .library(name: "ShardLibrary", targets: ["ShardLibrary"]),
        .executable(name: "vmexec", targets: ["vmexec"]),
        .executable(name: "vmexec-bench", targets: ["vmexec-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket", from: "2.8.1"),
        .package(url: "https://github.com/apple/swift-openapi-generator", from: "1.14.3"),
        .package(url: "https://github.com/apple/swift-openapi-runtime", from: "1.13.4"),
        .package(url: "https://github.com/hummingbird-project/swift-openapi-hummingbird", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-openapi-async-http-client", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // The guest's PID 1. SwiftPM builds it here as a strict-warnings check;
        // the Makefile links the static binary that goes into the initramfs
        // (SwiftPM cannot link a static executable: it always adds the Swift runtime).
        .executableTarget(name: "InitGuest", cSettings: strictC),
        // The one error shape every module's errors conform to (imports nothing).
        .target(name: "VMExecFailure"),
        // Host facts Swift cannot read itself: KVM probe, TSC frequency.
        .target(name: "CVMExecHost", cSettings: strictC),
        .target(
            name: "SerialChannel",
            dependencies: [
                "VMExecFailure",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // The host's shard library: installed versions, activation, trusted keys, resolution by name.
        .target(
            name: "ShardLibrary",
            dependencies: [
                "VMExecFailure", "SquashMounts",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // Python shards made offline: libs from wheels or a site-packages folder, programs from a
        // folder, zip, wheel or sdist; checked on the host, nothing of them run there.
        .target(
            name: "PythonShards",
            dependencies: ["SquashMounts", "CArchive", .product(name: "Crypto", package: "swift-crypto")]),
        // squashfs images are written and read through libsquashfs (squashfs-tools-ng),
        // archives through libarchive: the field's libraries, linked from the system.
        .systemLibrary(name: "CSquashfs", pkgConfig: "libsquashfs1", providers: [.apt(["libsquashfs-dev"])]),
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        // libvirt's C API (there is no maintained Swift binding): the libvirt machine.
        .systemLibrary(name: "CLibvirt", pkgConfig: "libvirt", providers: [.apt(["libvirt-dev"])]),
        .target(
            name: "SquashMounts",
            dependencies: ["VMExecFailure", "CSquashfs", "CArchive", .product(name: "Crypto", package: "swift-crypto")]),
        // A store's ext4 image read on the host through libext2fs (diff, export).
        .target(name: "CStoreImage", cSettings: strictC, linkerSettings: [.linkedLibrary("ext2fs"), .linkedLibrary("com_err")]),
        // Host programs started with their output on a pipe, descriptors owned by the caller.
        .target(name: "CHostTool", cSettings: strictC),
        // The writable layer: an ext4 image per store, locked to one guest.
        .target(
            name: "PersistOverlay",
            dependencies: [
                "VMExecFailure", "CStoreImage", "CHostTool", "CArchive", .product(name: "Crypto", package: "swift-crypto"),
            ]),
        .target(
            name: "VMExecutor",
            dependencies: [
                "VMExecFailure", "SerialChannel", "SquashMounts", "PersistOverlay", "CVMExecHost", "CLibvirt",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]),
        // The daemon's core, independent of any transport: sandboxes and their
        // jobs, kept in SQLite (GRDB) so that a restart loses nothing.
        .target(
            name: "VMExecService",
            dependencies: [
                "VMExecutor", "SquashMounts", "PersistOverlay", "ShardLibrary",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]),
        // The daemon's HTTP harness: Hummingbird routes generated at build time from
        // docs/openapi.yaml (symlinked here), so spec and server cannot drift; each
        // handler is a thin call into VMExecService.
        .target(
            name: "VMExecServer",
            dependencies: [
                "VMExecService", "PersistOverlay", "SquashMounts", "ShardLibrary", "PythonShards",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "OpenAPIHummingbird", package: "swift-openapi-hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            // Served at /openapi.yaml: the same file the routes are generated from.
            resources: [.embedInCode("openapi.yaml")],
            plugins: [.plugin(name: "OpenAPIGenerator", package: "swift-openapi-generator")]),
        // The daemon's client, generated from the same spec, over the Unix socket or TCP.
        .target(
            name: "VMExecClient",
            dependencies: [
                "VMExecFailure",
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIAsyncHTTPClient", package: "swift-openapi-async-http-client"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            plugins: [.plugin(name: "OpenAPIGenerator", package: "swift-openapi-generator")]),
        .executableTarget(
            name: "vmexec",
            dependencies: [
                "VMExecutor", "SquashMounts", "PersistOverlay", "VMExecService", "VMExecServer", "VMExecClient", "CVMExecHost",
                "ShardLibrary", "PythonShards",
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        // `make bench`: figures against qemu-guest-agent in the same guest.
        .executableTarget(
            name: "vmexec-bench",
            dependencies: [
                "VMExecutor", "SquashMounts", "PersistOverlay", "VMExecService", "VMExecServer", "VMExecClient",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
            ]),
        .testTarget(
            name: "SerialChannelTests",
            dependencies: [
                "SerialChannel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "SquashMountsTests",
            dependencies: ["SquashMounts", "PersistOverlay", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "PersistOverlayTests", dependencies: ["PersistOverlay"]),
        .testTarget(
            name: "ShardLibraryTests",
            dependencies: [
                "ShardLibrary", "SquashMounts", "PythonShards", "VMExecTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
            ]),
        // Host-only: Sandbox over a machine double, QEMU's process wrapper. No images needed.
        .testTarget(
            name: "VMExecutorUnitTests",
            dependencies: [
                "VMExecutor", "SerialChannel", "SquashMounts", "PersistOverlay",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(name: "VMExecServiceTests", dependencies: ["VMExecService", "VMExecutor"]),
        // The HTTP harness's parts on their own: no images, no guests.
        .testTarget(name: "VMExecServerUnitTests", dependencies: ["VMExecServer", "VMExecutor"]),
        // The daemon's client against a real HTTP server of the test's own: no daemon, no guests.
        .testTarget(
            name: "VMExecClientTests",
            dependencies: [
                "VMExecClient",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
            ]),
        // Fixtures the guest and CLI suites share: where the images are, whether they are built.
        .target(
            name: "VMExecTestSupport", dependencies: ["VMExecutor", "SquashMounts", "PersistOverlay"],
            path: "Tests/VMExecTestSupport"),
        // Real guests under QEMU: `make images` first.
        .testTarget(
            name: "VMExecutorTests",
            dependencies: [
                "VMExecutor", "VMExecService", "VMExecTestSupport", "SerialChannel", "SquashMounts", "PersistOverlay",
                .product(name: "Crypto", package: "swift-crypto"),
            ]),
        // The daemon's API over its real socket and TCP port, real guests behind it: `make images` first.
        .testTarget(
            name: "VMExecServerTests",
            dependencies: [
                "VMExecServer", "VMExecService", "VMExecClient", "VMExecutor", "VMExecTestSupport", "ShardLibrary",
                "SquashMounts",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // The vmexec command as a user runs it, on real guests: `make images` first.
        .testTarget(
            name: "VMExecCLITests",
            dependencies: [
                "VMExecutor", "VMExecTestSupport", "SquashMounts", "PersistOverlay", "VMExecClient",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            // Run by the terminal tests with python3, from the source tree.
            exclude: ["terminal_driver.py"]),
    ]
)
