import Foundation
import NIOCore
import NIOPosix
import Synchronization
import VMExecutor

/// Serves a kept-alive guest on its control socket (see ``Control``) until
/// a client asks it to stop.
final class ControlServer: Sendable {
    let name: String
    let path: String
    private let sandbox: Sandbox
    private let server: NIOAsyncChannel<NIOAsyncChannel<ControlFrame, ControlFrame>, Never>
    /// Whether a stop was asked for, and who waits for it.
    private let stopping = Mutex<(requested: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    /// Binds `NAME.sock`; refused when a live guest already has the name.
    static func start(name: String, sandbox: Sandbox) async throws -> ControlServer {
        let dir = Control.directory()
        try FileManager.default.createDirectory(
            atPath: dir, withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700])
        let path = Control.socketPath(name)
        if FileManager.default.fileExists(atPath: path) {
            if let live = try? await ControlClient.connect(name: name) {
                try? await live.channel.channel.close()
                throw VMExecError(.invalidRequest, "a guest named \(name) is already running (vmexec stop \(name) ends it)")
            }
        }
        let old = umask(0o077)
        defer { umask(old) }
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(ControlFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(ControlFrameEncoder()))
                    return try NIOAsyncChannel<ControlFrame, ControlFrame>(wrappingChannelSynchronously: channel)
                }
            }
        return ControlServer(name: name, path: path, sandbox: sandbox, server: server)
    }

    private init(
        name: String, path: String, sandbox: Sandbox,
        server: NIOAsyncChannel<NIOAsyncChannel<ControlFrame, ControlFrame>, Never>
    ) {
        self.name = name
        self.path = path
        self.sandbox = sandbox
        self.server = server
    }

    /// Accepts clients until ``waitForStop()`` returns; one task per client.
    func serve() async {
        try? await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { clients in
                for try await client in clients {
                    group.addTask { await self.handle(client) }
                }
            }
        }
    }

    /// Returns once a client sent `stop` (or ``stop()`` was called).
    func waitForStop() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let already = stopping.withLock { s in
                if !s.requested { s.waiter = c }
                return s.requested
            }
            if already { c.resume() }
        }
    }

    func stop() {
        let waiter = stopping.withLock { s in
            s.requested = true
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Stops accepting and removes the socket.
    func close() async {
        try? await server.channel.close()
        unlink(path)
    }

    private func handle(_ client: NIOAsyncChannel<ControlFrame, ControlFrame>) async {
        try? await client.executeThenClose { inbound, outbound in
            let frames = ClientFrames(inbound.makeAsyncIterator())
            guard let first = try await frames.next(), first.kind == .request,
                let request = try? first.decode(ControlRequest.self)
            else {
                try await outbound.write(
                    .json(.result, ControlResult(ok: false, code: "invalidRequest", message: "expected a request")))
                return
            }
            let result: ControlResult
            do {
                result = try await perform(request, frames, outbound)
            } catch {
                result = .failure(error)
            }
            try await outbound.write(.json(.result, result))
            // executeThenClose closes the channel at once, and NIO fails the
            // writes still queued in it: with a slow reader at the end of a
            // large GET that was the last data, the end and the result ("the
            // keeper closed the connection without a result"). The client
            // closes its end once it has read the result; wait for that.
            await frames.drain()
            if request.op == .stop && result.ok { stop() }
        }
    }

    private func perform(
        _ r: ControlRequest, _ frames: ClientFrames,
        _ out: NIOAsyncChannelOutboundWriter<ControlFrame>
    ) async throws -> ControlResult {
        switch r.op {
        case .put:
            guard let path = r.path, let size = r.size else { throw VMExecError(.invalidRequest, "put needs a path and a size") }
            let upload = try await sandbox.beginUpload(
                to: path, size: size, options: FileOptions(mode: r.mode, createParents: r.parents ?? false))
            do {
                while let f = try await frames.next() {
                    if f.kind == .end { break }
                    guard f.kind == .data else { throw VMExecError(.invalidRequest, "expected file data") }
                    try await upload.write(Array(f.payload.readableBytesView))
                }
                try await upload.finish()
            } catch {
                await upload.cancel()
                throw error
            }
            return ControlResult(ok: true)
        case .get:
            guard let path = r.path else { throw VMExecError(.invalidRequest, "get needs a path") }
            let download = try await sandbox.beginDownload(path)
            try await out.write(.json(.header, download.entry))
            while let chunk = try await download.next() {
                try await out.write(contentsOf: ControlFrame.split(.data, chunk))
            }
            try await out.write(ControlFrame(kind: .end, payload: ByteBuffer()))
            var entry = download.entry
            entry.size = download.received
            return ControlResult(ok: true, entry: entry)
        case .ps:
            return ControlResult(ok: true, processes: try await sandbox.processes())
        case .kill:
            guard let pid = r.pid else { throw VMExecError(.invalidRequest, "kill needs a pid") }
            try await sandbox.signal(pid: pid, r.signal ?? SIGTERM, group: r.group ?? false)
            return ControlResult(ok: true)
        case .exec:
            guard let argv = r.argv, !argv.isEmpty else { throw VMExecError(.invalidRequest, "exec needs a command") }
            let user: GuestUser? = r.uid.map { $0 == 0 && (r.gid ?? 0) == 0 ? .root : .id(uid: $0, gid: r.gid ?? $0) }
            let limits = Limits.defaults(guestMemoryMiB: await sandbox.configuration.memoryMiB).overridden(
                by: r.limits ?? Limits())
            let stream = try await sandbox.stream(
                Command(
                    argv, environment: r.env ?? [:], workingDirectory: r.workdir ?? "/",
                    timeout: r.timeoutSeconds.map { .milliseconds(Int64($0 * 1000)) },
                    stdin: r.stdin == true ? .caller : .none, user: user, limits: limits,
                    privateTmp: r.sharedTmp == true ? false : nil))
            if r.stdin == true {
                // The client's DATA frames are the command's stdin, END its end; once
                // the command stops taking them the rest is read and dropped.
                frames.consume { frames in
                    var open = true
                    while let f = try? await frames.next(), f.kind != .end {
                        guard f.kind == .data, open else { continue }
                        open = (try? await stream.writeStdin(Array(f.payload.readableBytesView))) == true
                    }
                    if open { try? await stream.closeStdin() }
                }
            }
            var code: Int32 = 0
            do {
                for try await event in stream {
                    switch event {
                    case .stdout(let b): try await out.write(contentsOf: ControlFrame.split(.data, b))
                    case .stderr(let b): try await out.write(contentsOf: ControlFrame.split(.stderr, b))
                    case .exit(let t, _): code = t.shellCode
                    }
                }
            } catch {
                try? await stream.signal(SIGKILL)  // the client went away: so does its command
                throw error
            }
            return ControlResult(ok: true, exitCode: code)
        case .stop:
            return ControlResult(ok: true)
        }
    }
}

/// A client's frames after its request, read by one task at a time: the
/// request's handler, or a task it hands them to (a command's stdin). The
/// unchecked Sendable rests on that rule.
final class ClientFrames: @unchecked Sendable {
    private var iterator: NIOAsyncChannelInboundStream<ControlFrame>.AsyncIterator
    private var consumer: Task<Void, Never>?

    init(_ iterator: NIOAsyncChannelInboundStream<ControlFrame>.AsyncIterator) {
        self.iterator = iterator
    }

    func next() async throws -> ControlFrame? {
        try await iterator.next()
    }

    /// Hands the frames to `body` in a task of its own; the handler reads none until ``drain()``.
    func consume(_ body: @escaping @Sendable (ClientFrames) async -> Void) {
        consumer = Task { await body(self) }
    }

    /// Returns once the client has closed its end: after a consumer handed
    /// the frames back, the rest are read and dropped.
    func drain() async {
        await consumer?.value
        while (try? await next()) != nil {}
    }
}
