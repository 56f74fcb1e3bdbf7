import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The host end of the control channel: handshake, many processes at once
/// over one byte stream, credit-based flow control in both directions.
///
/// Works over any stream socket: the QEMU chardev's Unix socket, or one end
/// of a socketpair (tests, or a bridge to a libvirt stream). The guest is
/// untrusted: every frame it sends is checked, and anything out of line is
/// answered with an ERROR or ends the connection, never a crash.
public final class ChannelClient: Sendable {
    /// Credit granted to the guest per stdout/stderr stream, in bytes. It
    /// bounds the host memory of an unread stream.
    public let hostWindow: Int
    private let channel: any Channel
    private let logger: Logger
    private let state = Mutex(State())

    struct State {
        var guestHello: Hello?
        var helloWaiters: [CheckedContinuation<Hello, any Error>] = []
        var processes: [UInt32: RemoteProcess] = [:]
        var nextStream: UInt32 = 1

        /// The next stream id (non-zero, wrapping).
        mutating func takeStream() -> UInt32 {
            defer { nextStream = nextStream == UInt32.max ? 1 : nextStream + 1 }
            return nextStream
        }
        var nextPing: UInt64 = 1
        var pingWaiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var byeWaiters: [CheckedContinuation<Void, any Error>] = []
        /// Requests waiting for their DONE or ERROR (drives, files, processes), by stream.
        var calls: [UInt32: PendingCall] = [:]
        var closed: ProtocolError?
        /// Frames of the guest refused so far (for logging without flooding).
        var refusals = 0
    }

    /// A request answered by DONE, after any number (up to a cap) of ENTRY or
    /// PROCESS replies, or by ERROR.
    struct PendingCall {
        var continuation: CheckedContinuation<[[UInt8]], any Error>
        var replyType: FrameType?
        var maxReplies: Int
        var replies: [[UInt8]] = []
    }

    init(channel: any Channel, hostWindow: Int, logger: Logger) {
        self.channel = channel
        self.hostWindow = hostWindow
        self.logger = logger
    }

    // MARK: connecting

    /// Connects to a Unix socket (QEMU's chardev) and completes the handshake.
    public static func connect(
        unixSocket path: String, handshakeTimeout: Duration = .seconds(30), hostWindow: Int = 512 * 1024,
        hostFacts: [String: String] = [:], freshHelloAfter: Duration? = staleHello,
        logger: Logger = Logger(label: "vmexec.channel")
    ) async throws -> (ChannelClient, Hello) {
        try await open(
            handshakeTimeout: handshakeTimeout, hostWindow: hostWindow, hostFacts: hostFacts, freshHelloAfter: freshHelloAfter,
            logger: logger
        ) {
            $0.connect(unixDomainSocketPath: path)
        }
    }

    /// Uses an already connected stream socket (e.g. one end of a socketpair).
    /// `freshHelloAfter`: see ``staleHello``; nil sends one HELLO only.
    public static func connect(
        socket descriptor: CInt, handshakeTimeout: Duration = .seconds(30), hostWindow: Int = 512 * 1024,
        hostFacts: [String: String] = [:], freshHelloAfter: Duration? = staleHello,
        logger: Logger = Logger(label: "vmexec.channel")
    ) async throws -> (ChannelClient, Hello) {
        try await open(
            handshakeTimeout: handshakeTimeout, hostWindow: hostWindow, hostFacts: hostFacts, freshHelloAfter: freshHelloAfter,
            logger: logger
        ) {
            $0.withConnectedSocket(descriptor)
        }
    }

    private static func open(
        handshakeTimeout: Duration, hostWindow: Int, hostFacts: [String: String], freshHelloAfter: Duration?,
        logger: Logger,
        _ connect: (ClientBootstrap) -> EventLoopFuture<any Channel>
    ) async throws -> (ChannelClient, Hello) {
        let slot = ClientSlot()
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { ch in Self.initialize(ch, box: slot, hostWindow: hostWindow, logger: logger) }
        _ = try await connect(bootstrap).get()
        let client = slot.value.withLock { $0! }
        return (client, try await client.handshake(timeout: handshakeTimeout, facts: hostFacts, freshAfter: freshHelloAfter))
    }

    private static func initialize(
        _ ch: any Channel, box: ClientSlot, hostWindow: Int, logger: Logger
    ) -> EventLoopFuture<Void> {
        let client = ChannelClient(channel: ch, hostWindow: hostWindow, logger: logger)
        box.value.withLock { $0 = client }
        return ch.eventLoop.makeCompletedFuture {
            try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
            try ch.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
            try ch.pipeline.syncOperations.addHandler(FrameRouter(client: client))
        }
    }

    /// The host's HELLO info: who it is, its wall clock, and 32 fresh random
    /// bytes. The guest sets its clock and reseeds its RNG from them, which a
    /// guest restored from a saved state needs (see docs/PROTOCOL.md). `facts`
    /// adds entries, such as the guest's `hostname` (since 1.7).
    static func hostInfo(_ facts: [String: String] = [:]) -> String {
        var rng = SystemRandomNumberGenerator()
        let seed = (0..<32).map { _ in String(UInt8.random(in: 0...255, using: &rng), radix: 16) }
            .map { $0.count == 1 ? "0" + $0 : $0 }.joined()
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let ns = UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
        let extra = facts.sorted { $0.key < $1.key }.map { "\n\($0.key)=\($0.value)" }.joined()
        return "host=vmexec\ntime_ns=\(ns)\nseed=\(seed)" + extra
    }

    /// Sends the host's HELLO and waits for the guest's.
    ///
    /// A host connects as soon as the machine's port exists, often long before
    /// the guest's init opens it (a libvirt q35 domain spends seconds in its
    /// firmware): the guest then reads a HELLO whose clock is that old. When
    /// the guest's answer comes late, a second HELLO with fresh facts follows
    /// before any request can (the guest takes every host HELLO as a new
    /// session, answers it, and this client keeps the first answer).
    private func handshake(timeout: Duration, facts: [String: String], freshAfter: Duration?) async throws -> Hello {
        let hello = Hello(window: UInt32(hostWindow), info: Self.hostInfo(facts))
        let sent = ContinuousClock.now
        try await send(Frame(.hello, payload: hello.encoded()))
        let guest = try await guestHello(timeout: timeout)
        if let freshAfter, ContinuousClock.now - sent > freshAfter {
            let fresh = Hello(window: UInt32(hostWindow), info: Self.hostInfo(facts))
            try await send(Frame(.hello, payload: fresh.encoded()))
        }
        return guest
    }

    /// How old the host's HELLO may be when the guest answers before a fresh one follows.
    public static let staleHello = Duration.milliseconds(100)

    private func guestHello(timeout: Duration) async throws -> Hello {
        let deadline = Task { [weak self] in
            try await Task.sleep(for: timeout)
            let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
            self?.close(.handshakeTimeout(seconds: seconds))
        }
        defer { deadline.cancel() }
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<Hello, any Error>) in
            let result: Result<Hello, any Error>? = state.withLock { s in
                if let h = s.guestHello { return .success(h) }
                if let e = s.closed { return .failure(e) }
                s.helloWaiters.append(c)
                return nil
            }
            if let result { c.resume(with: result) }
        }
    }

    // MARK: requests

    /// Starts a process. Returns once the guest reports it started; throws
    /// ``ProtocolError/execFailed(_:)`` at once for a missing or
    /// non-executable program or a bad working directory.
    public func exec(_ request: ExecRequest) async throws -> RemoteProcess {
        let payload = try request.encoded()
        if request.terminal != nil, let guest = state.withLock({ $0.guestHello }), guest.minor < 5 {
            throw ProtocolError.invalidRequest(
                "the guest's init speaks protocol \(guest.major).\(guest.minor), which has no terminals (1.5); rebuild the images with make images"
            )
        }
        let process = try register(transfer: nil)
        try await send(Frame(.exec, stream: process.stream, payload: payload))
        _ = try await process.awaitStart()
        return process
    }

    /// Sends a drive request (mount, unmount, layers) and returns when the
    /// guest answers DONE; throws ``ProtocolError/refused(_:)`` with the
    /// guest's reason (codes MOUNT, BUSY) otherwise.
    public func request(_ request: DriveRequest) async throws {
        _ = try await call(request.frameType, payload: try request.encoded())
    }

    /// STAT: one file's facts (resolved inside the guest's root).
    public func stat(_ request: FileRequest) async throws -> FileEntry {
        let replies = try await call(.stat, payload: try request.encoded(), replies: .entry, maxReplies: 1)
        guard let first = replies.first else { throw ProtocolError.violation("STAT answered without an ENTRY") }
        return try FileEntry(decoding: first)
    }

    /// LIST: a directory's entries, at most `maxEntries` (the guest refuses
    /// a longer directory with LIMIT rather than cut it silently).
    public func list(_ path: String, maxEntries: Int) async throws -> [FileEntry] {
        let replies = try await call(
            .list, payload: try FileRequest.list(path, maxEntries: UInt64(maxEntries)).encoded(),
            replies: .entry, maxReplies: maxEntries)
        return try replies.map { (p: [UInt8]) throws(ProtocolError) in try FileEntry(decoding: p) }
    }

    /// MKDIR, DELETE, MOVE: returns once the guest did it.
    public func perform(_ request: FileRequest) async throws {
        guard [.mkdir, .delete, .move].contains(request.type) else {
            throw ProtocolError.invalidRequest("\(request.type) is not answered by DONE alone")
        }
        _ = try await call(request.type, payload: try request.encoded())
    }

    /// PS: the guest's processes (PID 1 and kernel threads left out).
    public func processes(maxEntries: Int = 1 << 16) async throws -> [ProcessEntry] {
        let replies = try await call(.ps, payload: [], replies: .process, maxReplies: maxEntries)
        return try replies.map { (p: [UInt8]) throws(ProtocolError) in try ProcessEntry(decoding: p) }
    }

    /// KILL: a signal to a guest process or its process group.
    public func kill(_ request: KillRequest) async throws {
        _ = try await call(.kill, payload: try request.encoded())
    }

    /// PUT or GET: a file moving on its own stream, with the same credit as
    /// a process's stdin (PUT) or stdout (GET). Returns once the guest
    /// accepted it (PUT: STARTED; GET: the file's ENTRY, in
    /// ``RemoteProcess/fileEntry``); throws ``ProtocolError/refused(_:)`` otherwise.
    public func openTransfer(_ request: FileRequest) async throws -> RemoteProcess {
        guard request.type == .put || request.type == .get else {
            throw ProtocolError.invalidRequest("only PUT and GET move file contents")
        }
        let payload = try request.encoded()
        // A GET's file may not bring more than asked for, whatever the guest says.
        let transfer = try register(
            transfer: request.type == .put ? .put : .get,
            byteLimit: request.type == .get && request.size > 0 ? request.size : nil)
        try await send(Frame(request.type, stream: transfer.stream, payload: payload))
        _ = try await transfer.awaitStart()
        return transfer
    }

    /// A process or transfer on a fresh stream; the guest's HELLO window is its initial stdin credit.
    private func register(transfer: RemoteProcess.Transfer?, byteLimit: UInt64? = nil) throws -> RemoteProcess {
        try state.withLock { s in
            if let e = s.closed { throw e }
            let p = RemoteProcess(
                stream: s.takeStream(), client: self, hostWindow: hostWindow,
                stdinWindow: Int(s.guestHello?.window ?? 0), transfer: transfer, byteLimit: byteLimit)
            s.processes[p.stream] = p
            return p
        }
    }

    /// Sends a request on a fresh stream and waits for its DONE, gathering up
    /// to `maxReplies` frames of `replies` type before it.
    func call(_ type: FrameType, payload: [UInt8], replies: FrameType? = nil, maxReplies: Int = 0) async throws -> [[UInt8]] {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<[[UInt8]], any Error>) in
            let stream: UInt32? = state.withLock { s in
                if s.closed != nil { return nil }
                let stream = s.takeStream()
                s.calls[stream] = PendingCall(continuation: c, replyType: replies, maxReplies: maxReplies)
                return stream
            }
            guard let stream else { return c.resume(throwing: state.withLock { $0.closed! }) }
            channel.writeAndFlush(Frame(type, stream: stream, payload: payload)).whenFailure { [weak self] error in
                self?.close(.closed("write failed: \(error)"))
            }
        }
    }

    /// A round trip through the guest init; returns when the PONG arrives.
    public func ping() async throws {
        let id: UInt64 = try state.withLock { s in
            if let e = s.closed { throw e }
            defer { s.nextPing += 1 }
            return s.nextPing
        }
        var p: [UInt8] = []
        p.appendLE(id)
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            state.withLock { $0.pingWaiters[id] = c }
            channel.writeAndFlush(Frame(.ping, payload: p)).whenFailure { [weak self] error in
                self?.close(.closed("write failed: \(error)"))
            }
        }
    }

    /// Asks the guest to end every process, sync and power off; returns when
    /// it acknowledged (BYE) or the connection ended.
    public func shutdown() async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            let closed = state.withLock { s in
                if s.closed != nil { return true }
                s.byeWaiters.append(c)
                return false
            }
            if closed {
                c.resume()
                return
            }
            channel.writeAndFlush(Frame(.shutdown)).whenFailure { [weak self] _ in
                self?.close(.closed("the guest went away during shutdown"))
            }
        }
    }

    /// Ends the connection, failing every waiting call with `reason`.
    public func close(_ reason: ProtocolError) {
        connectionEnded(reason)
        channel.close(promise: nil)
    }

    /// Whether the connection is still up.
    public var isOpen: Bool { state.withLock { $0.closed == nil } }

    func send(_ frame: Frame) async throws {
        if let e = state.withLock({ $0.closed }) { throw e }
        do {
            try await channel.writeAndFlush(frame).get()
        } catch {
            throw state.withLock { $0.closed } ?? ProtocolError.closed("write failed: \(error)")
        }
    }

    /// Writes bytes as they are, framed or not (tests use it to send garbage).
    func sendRaw(_ bytes: [UInt8]) async throws {
        let buffer = channel.allocator.buffer(bytes: bytes)
        try await channel.pipeline.context(handlerType: MessageToByteHandler<FrameEncoder>.self)
            .flatMap { $0.writeAndFlush(NIOAny(buffer)) }.get()
    }

    func grant(stream: UInt32, sub: SubStream, bytes: Int) {
        var p: [UInt8] = []
        p.appendLE(UInt32(bytes))
        channel.writeAndFlush(Frame(.window, sub: sub.rawValue, stream: stream, payload: p), promise: nil)
    }

    // MARK: frames from the guest (on the event loop)

    func receive(_ frame: Frame) {
        logger.trace(
            "frame in",
            metadata: [
                "type": "\(frame.type)", "stream": "\(frame.stream)", "sub": "\(frame.sub)", "bytes": "\(frame.payload.count)",
            ])
        if let code = frame.violation() {
            refuse(frame, code, "frame of type 0x\(String(frame.type, radix: 16)) refused: \(code.name)")
            return
        }
        switch frame.kind! {
        case .hello:
            receiveHello(frame)
        case .pong:
            guard frame.payload.count == 8 else { return }
            let waiter = state.withLock { $0.pingWaiters.removeValue(forKey: frame.payload.u64(at: 0)) }
            waiter?.resume()
        case .bye:
            let waiters = state.withLock { s in
                defer { s.byeWaiters = [] }
                return s.byeWaiters
            }
            for w in waiters { w.resume() }
        case .error:
            receiveError(frame)
        case .started:
            process(frame)?.started(pid: frame.payload.u32(at: 0))
        case .data:
            guard let sub = SubStream(rawValue: frame.sub), sub != .stdin else {
                refuse(frame, .state, "the guest sends DATA on stdout and stderr only")
                return
            }
            if let p = process(frame), let why = p.received(OutputChunk(stream: sub, bytes: frame.payload)) {
                refuse(frame, .flow, why)
                p.fail(.violation(why))
                if p.transfer != nil {  // a transfer is over at its first breach; the guest is told to drop it
                    state.withLock { _ = $0.processes.removeValue(forKey: frame.stream) }
                    Task { try? await p.signal(SIGKILL) }
                }
            }
        case .eof:
            if let sub = SubStream(rawValue: frame.sub), sub != .stdin { process(frame)?.endOfOutput(sub) }
        case .window:
            if frame.sub == SubStream.stdin.rawValue {
                process(frame)?.stdinWindow(Int(frame.payload.u32(at: 0)))
            }
        case .exit:
            let p = state.withLock { $0.processes.removeValue(forKey: frame.stream) }
            if let status = try? ExitStatus(decoding: frame.payload) { p?.exited(status) }
        case .done:
            if let call = state.withLock({ $0.calls.removeValue(forKey: frame.stream) }) {
                call.continuation.resume(returning: call.replies)
            } else if let t = state.withLock({ s in s.processes[frame.stream].flatMap { $0.transfer != nil ? $0 : nil } }) {
                state.withLock { _ = $0.processes.removeValue(forKey: frame.stream) }
                t.transferDone()
            } else {
                refuse(frame, .state, "DONE for stream \(frame.stream), which asked nothing")
            }
        case .entry, .process:
            receiveReply(frame)
        case .exec, .shutdown, .signal, .ping, .mount, .unmount, .layers, .store, .sync, .freeze, .thaw, .folder,
            .put, .get, .stat, .list, .mkdir, .delete, .move, .ps, .kill, .resize:
            refuse(frame, .state, "\(frame.kind!) is sent by the host, not the guest")
        }
    }

    /// ENTRY or PROCESS: a reply gathered for a waiting call, or a GET's file facts.
    private func receiveReply(_ frame: Frame) {
        enum Outcome { case kept, tooMany(PendingCall), unexpected }
        let outcome: Outcome = state.withLock { s in
            guard var call = s.calls[frame.stream], call.replyType == frame.kind else { return .unexpected }
            guard call.replies.count < call.maxReplies else {
                s.calls.removeValue(forKey: frame.stream)
                return .tooMany(call)
            }
            call.replies.append(frame.payload)
            s.calls[frame.stream] = call
            return .kept
        }
        switch outcome {
        case .kept:
            return
        case .tooMany(let call):
            let why = "stream \(frame.stream) sent more than the \(call.maxReplies) \(frame.kind!) replies asked for"
            refuse(frame, .limit, why)
            call.continuation.resume(throwing: ProtocolError.violation(why))
        case .unexpected:
            if frame.kind == .entry, let t = process(frame), t.transfer == .get, t.fileEntry == nil,
                let entry = try? FileEntry(decoding: frame.payload)
            {
                t.received(entry: entry)
            } else {
                refuse(frame, .state, "\(frame.kind!) on stream \(frame.stream), which expects none")
            }
        }
    }

    private func process(_ frame: Frame) -> RemoteProcess? {
        let p = state.withLock { $0.processes[frame.stream] }
        if p == nil { logger.debug("frame for unknown stream \(frame.stream) ignored") }
        return p
    }

    /// Answers a bad guest frame with an ERROR. A guest that floods bad
    /// frames and reads nothing back must not grow host memory or logs: the
    /// reply is dropped while the socket is not writable (NIO's watermarks
    /// bound what is queued), and only the first refusals and then every
    /// 1000th are logged.
    private func refuse(_ frame: Frame, _ code: ErrorCode, _ message: String) {
        let count = state.withLock { s in
            s.refusals += 1
            return s.refusals
        }
        if count <= 10 || count % 1000 == 0 {
            logger.warning("guest frame refused (\(count) so far): \(message)")
        }
        guard channel.isWritable else { return }
        let reply = ErrorReply(code: code, message: message)
        channel.writeAndFlush(Frame(.error, stream: frame.stream, payload: reply.encoded()), promise: nil)
    }

    private func receiveHello(_ frame: Frame) {
        guard let hello = try? Hello(decoding: frame.payload) else { return }
        if hello.major != WireProtocol.major {
            close(
                .versionMismatch(
                    guest: "\(hello.major).\(hello.minor)",
                    host: "\(WireProtocol.major).\(WireProtocol.minor)"))
            return
        }
        let waiters: [CheckedContinuation<Hello, any Error>] = state.withLock { s in
            // Later HELLOs answer ours or follow a reconnect; the first one counts.
            guard s.guestHello == nil else { return [] }
            s.guestHello = hello
            defer { s.helloWaiters = [] }
            return s.helloWaiters
        }
        for w in waiters { w.resume(returning: hello) }
    }

    private func receiveError(_ frame: Frame) {
        guard let reply = try? ErrorReply(decoding: frame.payload) else { return }
        if frame.stream == 0 {
            if reply.code == .version {
                close(.refused(reply))  // the guest's sentence names both versions
            } else {
                logger.warning("guest reported: \(reply.code.name): \(reply.message)")
            }
            return
        }
        if let call = state.withLock({ $0.calls.removeValue(forKey: frame.stream) }) {
            call.continuation.resume(throwing: ProtocolError.refused(reply))
            return
        }
        guard let p = state.withLock({ $0.processes[frame.stream] }) else { return }
        if p.transfer != nil {
            // A transfer ends at its first error (the guest dropped it, nothing half-written left).
            state.withLock { _ = $0.processes.removeValue(forKey: frame.stream) }
            p.fail(.refused(reply))
        } else if p.pid == nil {
            state.withLock { _ = $0.processes.removeValue(forKey: frame.stream) }
            p.fail(reply.code == .exec || reply.code == .workdir ? .execFailed(reply) : .refused(reply))
        } else {
            logger.warning("guest reported on stream \(frame.stream): \(reply.code.name): \(reply.message)")
        }
    }

    /// The connection is gone: fail everything that waits on it.
    func connectionEnded(_ reason: ProtocolError) {
        let (processes, hellos, pings, byes, calls) = state.withLock { s in
            if s.closed == nil { s.closed = reason }
            defer {
                s.processes = [:]
                s.helloWaiters = []
                s.pingWaiters = [:]
                s.byeWaiters = []
                s.calls = [:]
            }
            return (
                Array(s.processes.values), s.helloWaiters, Array(s.pingWaiters.values), s.byeWaiters,
                s.calls.values.map(\.continuation)
            )
        }
        let error = state.withLock { $0.closed! }
        for p in processes { p.fail(error) }
        for w in hellos { w.resume(throwing: error) }
        for w in pings { w.resume(throwing: error) }
        for w in calls { w.resume(throwing: error) }
        // A BYE cut short by the guest powering off is still a clean shutdown.
        for w in byes { w.resume() }
    }
}

/// Hands the client created in the channel initializer back to `connect`.
final class ClientSlot: Sendable {
    let value = Mutex<ChannelClient?>(nil)
}

/// Routes decoded frames to the client; turns decoder errors and EOF into
/// a closed connection.
final class FrameRouter: ChannelInboundHandler, Sendable {
    typealias InboundIn = Frame
    let client: ChannelClient

    init(client: ChannelClient) { self.client = client }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        client.receive(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        client.connectionEnded(.closed("the guest end of the channel closed (end of file)"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let reason = (error as? ProtocolError) ?? .closed("\(error)")
        client.connectionEnded(reason)
        context.close(promise: nil)
    }
}
