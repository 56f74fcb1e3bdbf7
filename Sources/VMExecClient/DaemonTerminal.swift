import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import VMExecFailure

/// A command to run on a terminal in a sandbox (the TerminalStart message of docs/TERMINAL.md).
public struct TerminalRequest: Sendable {
    public var arguments: [String]
    /// Added to the sandbox's environment; TERM defaults to xterm-256color.
    public var environment: [String: String]
    public var workingDirectory: String
    /// root, or UID[:GID]; nil: the sandbox's default user.
    public var user: String?
    public var timeoutSeconds: Double?
    /// Limits that replace the sandbox's defaults one by one.
    public var limits: JobLimits?
    /// Share the guest's /tmp, /dev/shm and IPC instead of a private set.
    public var sharedTmp = false
    public var rows: Int
    public var columns: Int

    public init(
        _ arguments: [String], environment: [String: String] = [:], workingDirectory: String = "/",
        user: String? = nil, timeoutSeconds: Double? = nil, rows: Int = 24, columns: Int = 80
    ) {
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.user = user
        self.timeoutSeconds = timeoutSeconds
        self.rows = rows
        self.columns = columns
    }
}

/// What a terminal session brings: the command's start, its output, its end.
public enum TerminalEvent: Sendable, Equatable {
    case started(pid: Int)
    /// Bytes the terminal printed (the command's output and the echo of input).
    case output([UInt8])
    /// The command ended: how (exited, signaled, timedOut, outOfMemory) and the code a shell would report.
    case exit(termination: String, exitCode: Int)
}

/// One open terminal session over the daemon's WebSocket (see
/// ``DaemonClient/withTerminal(_:_:_:)``): its events, and what the client
/// sends (typed input, window sizes, signals, end of input).
///
/// The WebSocket is NIOWebSocket's over a connection of our own, because the
/// daemon's default address is a Unix socket, which the WebSocket clients of
/// the Hummingbird project do not reach.
public struct DaemonTerminal: Sendable {
    let inbound: NIOAsyncChannelInboundStream<WebSocketFrame>
    let outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>

    /// The session's events, in order; ends after ``TerminalEvent/exit(termination:exitCode:)``.
    /// An error the daemon reports (a program not found, a bad request) is thrown as a ``DaemonError``.
    public var events: Events { Events(inbound: inbound, outbound: outbound) }

    /// Types bytes into the terminal.
    public func write(_ bytes: [UInt8]) async throws {
        try await send(.binary, ByteBuffer(bytes: bytes))
    }

    /// Gives the terminal a new size; the command's foreground group gets SIGWINCH.
    public func resize(rows: Int, columns: Int) async throws {
        try await control(["type": "resize", "rows": rows, "cols": columns])
    }

    /// Sends a signal (a name such as INT, or a number) to the command's process group.
    public func signal(_ name: String) async throws {
        try await control(["type": "signal", "signal": name])
    }

    /// Types the terminal's end-of-file character and sends no more input.
    public func endInput() async throws {
        try await control(["type": "eof"])
    }

    private func control(_ message: [String: any Sendable]) async throws {
        let data = try JSONSerialization.data(withJSONObject: message)
        try await send(.text, ByteBuffer(bytes: data))
    }

    /// A client's frames are masked (RFC 6455 5.3).
    private func send(_ opcode: WebSocketOpcode, _ data: ByteBuffer) async throws {
        try await outbound.write(WebSocketFrame(fin: true, opcode: opcode, maskKey: .random(), data: data))
    }

    /// The frames of the session as ``TerminalEvent``s; pings are answered on the way.
    public struct Events: AsyncSequence, Sendable {
        let inbound: NIOAsyncChannelInboundStream<WebSocketFrame>
        let outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>

        public struct AsyncIterator: AsyncIteratorProtocol {
            var frames: NIOAsyncChannelInboundStream<WebSocketFrame>.AsyncIterator
            let outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>
            var ended = false

            public mutating func next() async throws -> TerminalEvent? {
                while !ended, let frame = try await frames.next() {
                    let data = frame.unmaskedData
                    switch frame.opcode {
                    case .binary:
                        return .output(Array(data.readableBytesView))
                    case .text:
                        return try event(Data(data.readableBytesView))
                    case .ping:
                        try await outbound.write(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: data))
                    case .connectionClose:
                        ended = true
                    default:
                        continue
                    }
                }
                return nil
            }

            private mutating func event(_ json: Data) throws -> TerminalEvent? {
                let e = try JSONDecoder().decode(Components.Schemas.TerminalEvent.self, from: json)
                switch e._type {
                case .started:
                    return .started(pid: e.pid ?? 0)
                case .exit:
                    ended = true
                    guard let x = e.exit else { throw DaemonError.unexpected }
                    return .exit(termination: x.termination.rawValue, exitCode: x.exitCode)
                case .error:
                    ended = true
                    guard let f = e.error else { throw DaemonError.unexpected }
                    throw DaemonError(
                        status: 0, failureCode: f.code, kind: FailureKind(rawValue: f.kind.rawValue) ?? .hostFailure,
                        message: f.message)
                }
            }
        }

        public func makeAsyncIterator() -> AsyncIterator {
            AsyncIterator(frames: inbound.makeAsyncIterator(), outbound: outbound)
        }
    }
}

extension DaemonClient {
    /// Runs `request` on a terminal in the sandbox and calls `body` with the
    /// open session; the WebSocket is closed when `body` returns (a command
    /// still running then is hung up: SIGHUP, then SIGKILL 5 s later).
    public func withTerminal<Result: Sendable>(
        _ sandbox: String, _ request: TerminalRequest, _ body: (DaemonTerminal) async throws -> Result
    ) async throws -> Result {
        guard let channel = try await upgrade(path: "/v1/sandboxes/\(sandbox)/terminal") else {
            // Refused as plain HTTP: the same request through the API says why (401, 404, 426).
            let answer = try Self.check(try await api.openTerminal(path: .init(sandbox: sandbox)))
            guard case .upgradeRequired(let refusal) = answer, case .json(let failure) = refusal.body else {
                throw DaemonError.unexpected
            }
            throw DaemonError(
                status: 426, failureCode: failure.error.code,
                kind: FailureKind(rawValue: failure.error.kind.rawValue) ?? .hostFailure, message: failure.error.message)
        }
        return try await channel.executeThenClose { inbound, outbound in
            let start = Components.Schemas.TerminalStart(
                argv: request.arguments, env: .init(additionalProperties: request.environment),
                workdir: request.workingDirectory, user: request.user,
                limits: request.limits.map(Components.Schemas.Limits.init), timeoutSeconds: request.timeoutSeconds,
                sharedTmp: request.sharedTmp, rows: request.rows, cols: request.columns)
            let data = try JSONEncoder().encode(start)
            try await outbound.write(
                WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(bytes: data)))
            let result = try await body(DaemonTerminal(inbound: inbound, outbound: outbound))
            try? await outbound.write(
                WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: ByteBuffer()))
            return result
        }
    }

    private enum Upgrade: Sendable {
        case websocket(NIOAsyncChannel<WebSocketFrame, WebSocketFrame>)
        case refused
    }

    /// Connects and asks for the WebSocket upgrade; nil when the daemon answered as plain HTTP instead.
    private func upgrade(path: String) async throws -> NIOAsyncChannel<WebSocketFrame, WebSocketFrame>? {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "localhost")
        headers.add(name: "Content-Length", value: "0")
        if case .tcp(_, let token) = endpoint { headers.add(name: "Authorization", value: "Bearer \(token)") }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        let initializer: @Sendable (any Channel) -> EventLoopFuture<EventLoopFuture<Upgrade>> = { channel in
            channel.eventLoop.makeCompletedFuture {
                let upgrader = NIOTypedWebSocketClientUpgrader<Upgrade>(
                    maxFrameSize: 1 << 20,
                    upgradePipelineHandler: { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            // Whole messages, however the daemon fragments them.
                            try channel.pipeline.syncOperations.addHandler(
                                NIOWebSocketFrameAggregator(
                                    minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 1024,
                                    maxAccumulatedFrameSize: 1 << 20))
                            return .websocket(try NIOAsyncChannel(wrappingChannelSynchronously: channel))
                        }
                    })
                let configuration = NIOTypedHTTPClientUpgradeConfiguration<Upgrade>(
                    upgradeRequestHead: head, upgraders: [upgrader],
                    notUpgradingCompletionHandler: { channel in
                        channel.eventLoop.makeCompletedFuture {
                            channel.close(promise: nil)
                            return .refused
                        }
                    })
                return try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(
                    configuration: .init(upgradeConfiguration: configuration))
            }
        }
        let negotiation: EventLoopFuture<Upgrade>
        switch endpoint {
        case .unixSocket(let socket):
            negotiation = try await bootstrap.connect(unixDomainSocketPath: socket, channelInitializer: initializer)
        case .tcp(let url, _):
            guard let host = url.host else { throw DaemonError.unexpected }
            negotiation = try await bootstrap.connect(host: host, port: url.port ?? 80, channelInitializer: initializer)
        }
        switch try await negotiation.get() {
        case .websocket(let channel): return channel
        case .refused: return nil
        }
    }
}
