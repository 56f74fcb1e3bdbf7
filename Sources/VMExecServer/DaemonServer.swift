import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore
import OpenAPIHummingbird
import OpenAPIRuntime
import ServiceLifecycle
import Synchronization
import VMExecService
import VMExecutor

/// How the daemon listens.
public struct DaemonOptions: Sendable {
    /// The Unix socket (made mode 0600); a stale one left by a dead daemon is replaced.
    public var socketPath: String
    /// A TCP address as well, with bearer tokens (both or neither).
    public var tcpHost: String?
    public var tcpPort: Int?
    public var tokens: TokenBook?
    /// Bytes a file upload over TCP may have.
    public var uploadLimit = 10 << 20
    /// Bytes a file upload over the Unix socket may have (its caller is this host's user).
    public var localUploadLimit = 4 << 30

    public init(socketPath: String) {
        self.socketPath = socketPath
    }
}

/// The daemon: the API on the Unix socket (and on TCP when asked), over
/// one ``SandboxRegistry``. ``run(onListening:)`` returns after SIGTERM or
/// SIGINT (or the task's cancellation), once the guests have been stopped.
public struct DaemonServer: Sendable {
    public let registry: SandboxRegistry
    public let options: DaemonOptions
    let logger: Logger
    /// The running service group, for ``stop()``.
    private let running = RunningGroup()

    private final class RunningGroup: Sendable {
        let group = Mutex<ServiceGroup?>(nil)
    }

    public init(registry: SandboxRegistry, options: DaemonOptions, logger: Logger = Logger(label: "vmexec.daemon")) {
        self.registry = registry
        self.options = options
        self.logger = logger
    }

    /// Serves until stopped. `onListening` gets the TCP port once bound (0 if no TCP).
    public func run(onListening: @escaping @Sendable (_ tcpPort: Int) -> Void = { _ in }) async throws {
        if (options.tcpHost == nil) != (options.tokens == nil) {
            throw VMExecError(.invalidRequest, "listening on TCP needs a tokens file, and a tokens file needs --listen")
        }
        DaemonMetrics.bootstrapped
        try Self.claimSocket(options.socketPath)
        try await registry.recover()
        var services: [any Service] = []
        let socketPath = options.socketPath
        let unix = Application(
            router: try router(tokens: nil), server: terminalUpgrades(tokens: nil),
            configuration: .init(address: .unixDomainSocket(path: socketPath), serverName: "vmexec"),
            onServerRunning: { _ in
                chmod(socketPath, 0o600)
                if options.tcpHost == nil { onListening(0) }
            }, logger: logger)
        services.append(unix)
        if let host = options.tcpHost, let tokens = options.tokens {
            let tcp = Application(
                router: try router(tokens: tokens), server: terminalUpgrades(tokens: tokens),
                configuration: .init(address: .hostname(host, port: options.tcpPort ?? 0), serverName: "vmexec"),
                onServerRunning: { channel in onListening(channel.localAddress?.port ?? 0) }, logger: logger)
            services.append(tcp)
        }
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        running.group.withLock { $0 = group }
        defer { unlink(socketPath) }
        do {
            // Cancelling the caller's task stops the daemon as SIGTERM does: gracefully.
            try await withTaskCancellationHandler {
                try await group.run()
            } onCancel: {
                Task { await group.triggerGracefulShutdown() }
            }
        } catch {
            await registry.shutdown()
            throw error
        }
        await registry.shutdown()
    }

    /// Stops a running daemon as SIGTERM does: requests in flight finish, then the guests stop.
    public func stop() async {
        guard let group = running.group.withLock({ $0 }) else { return }
        await group.triggerGracefulShutdown()
    }

    /// The routes: docs/openapi.yaml at /openapi.yaml, and the API under /v1.
    private func router(tokens: TokenBook?) throws -> Router<BasicRequestContext> {
        let router = Router()
        // Every JSON body of the API fits in 32 MiB (code and stdin are capped at 16 MiB as text).
        router.add(middleware: BodyLimitMiddleware(limit: 32 << 20))
        router.get("/openapi.yaml") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/yaml"],
                body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_yaml)))
        }
        let api = ServiceAPI(registry: registry, uploadLimit: tokens == nil ? options.localUploadLimit : options.uploadLimit)
        try api.registerHandlers(
            on: router, middlewares: [CallerMiddleware(tokens: tokens), FailureMiddleware(logger: logger)])
        return router
    }

    /// HTTP/1.1 with the terminal's WebSocket upgrade (``TerminalRoute``).
    private func terminalUpgrades(tokens: TokenBook?) -> HTTPServerBuilder {
        let route = TerminalRoute(registry: registry, tokens: tokens, logger: logger)
        return .http1WebSocketUpgrade(configuration: .init(ws: .init(maxFrameSize: TerminalBridge.maxMessage))) {
            request, _, _ in
            await route.shouldUpgrade(request)
        }
    }

    /// Makes the socket path free: refuses if a daemon answers there, removes a stale socket.
    static func claimSocket(_ path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(
            atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw VMExecError(.alreadyExists, "\(path) exists and is not a socket; remove it or choose another --socket")
        }
        if DaemonSocket.answers(path) {
            throw VMExecError(.alreadyExists, "a vmexec daemon already serves \(path); stop it first or choose another --socket")
        }
        unlink(path)
    }
}

/// Whether something accepts connections at the daemon's address: a plain
/// connect, which fails at once where an HTTP client would retry a refused
/// connection for as long as its request may take.
public enum DaemonSocket {
    /// A TCP connect to `host`:`port` within `timeout` seconds.
    public static func answers(host: String, port: Int, timeout: Int32 = 3) -> Bool {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else { return false }
        defer { freeaddrinfo(list) }
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let a = entry {
            entry = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            if connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return true }
            guard errno == EINPROGRESS else { continue }
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            var failure: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            if poll(&p, 1, timeout * 1000) == 1, getsockopt(fd, SOL_SOCKET, SO_ERROR, &failure, &size) == 0, failure == 0 {
                return true
            }
        }
        return false
    }

    public static func answers(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (i, b) in bytes.enumerated() { buffer[i] = b }
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }
}
