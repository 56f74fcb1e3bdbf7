import NIOCore
import Synchronization

/// A piece of a process's output.
public struct OutputChunk: Sendable, Equatable {
    /// `.stdout` or `.stderr`.
    public var stream: SubStream
    public var bytes: [UInt8]

    public init(stream: SubStream, bytes: [UInt8]) {
        self.stream = stream
        self.bytes = bytes
    }
}

/// Output gathered by ``RemoteProcess/collect(limit:)``.
public struct CollectedOutput: Sendable {
    public var stdout: [UInt8] = []
    public var stderr: [UInt8] = []
    /// True when a stream passed the limit and what followed was dropped.
    public var stdoutTruncated = false
    public var stderrTruncated = false
    public var status: ExitStatus
}

/// One process running in the guest, on its own stream of the channel.
///
/// Output is pulled through ``output`` (one consumer) and the host grants
/// the guest more credit only as chunks are taken, so an unread process
/// stalls in the guest while memory here stays within one window per stream.
/// The exit status arrives after all output (``wait()``).
public final class RemoteProcess: Sendable {
    /// PUT and GET move a file on a stream of their own with a process's
    /// machinery: a PUT's bytes go as stdin, a GET's come as stdout; DONE
    /// ends them where a process would EXIT.
    public enum Transfer: Sendable { case put, get }

    public let stream: UInt32
    /// Set for a file transfer rather than a process.
    public let transfer: Transfer?
    private let client: ChannelClient
    private let state: Mutex<State>

    struct State {
        var pid: UInt32?
        var startWaiter: CheckedContinuation<UInt32, any Error>?
        var chunks = CircularBuffer<OutputChunk>()
        var outputWaiter: CheckedContinuation<OutputChunk?, any Error>?
        /// Whether stdout and stderr (indices 1 and 2) are still open.
        var open = [false, true, true]
        /// Bytes the guest may still send per sub-stream (what we granted, minus what came).
        var granted: [Int] = [0, 0, 0]
        /// Bytes taken by the consumer and not yet granted back.
        var ungranted: [Int] = [0, 0, 0]
        var stdinCredit = 0
        var stdinWaiters: [CheckedContinuation<Void, any Error>] = []
        var stdinClosed = false
        var exit: ExitStatus?
        var exitWaiters: [CheckedContinuation<ExitStatus, any Error>] = []
        var failure: ProtocolError?
        /// Set by collect(): chunks go straight into these buffers.
        var collecting: CollectedOutput?
        var collectLimit = 0
        /// A GET's file, as the guest opened it.
        var fileEntry: FileEntry?
        /// Output bytes received so far (checked against ``byteLimit``).
        var received: UInt64 = 0
    }

    /// Most output bytes accepted (a GET's `maxSize`); more is a breach of the protocol.
    let byteLimit: UInt64?

    init(
        stream: UInt32, client: ChannelClient, hostWindow: Int, stdinWindow: Int, transfer: Transfer? = nil,
        byteLimit: UInt64? = nil
    ) {
        self.stream = stream
        self.client = client
        self.transfer = transfer
        self.byteLimit = byteLimit
        var s = State()
        s.granted = [0, hostWindow, hostWindow]
        if let transfer { s.open = [false, transfer == .get, false] }
        s.stdinCredit = stdinWindow
        state = Mutex(s)
    }

    /// The guest's process id, once started (0 for a transfer).
    public var pid: UInt32? { state.withLock { $0.pid } }

    /// A GET's file as the guest opened it (its size is what should arrive).
    public var fileEntry: FileEntry? { state.withLock { $0.fileEntry } }

    // MARK: consumer side

    /// Output chunks in the order the guest sent them; ends after both
    /// stdout and stderr ended. Iterate it once.
    public var output: Output { Output(process: self) }

    /// An `AsyncSequence` of ``OutputChunk``s.
    public struct Output: AsyncSequence, Sendable {
        public typealias Element = OutputChunk
        let process: RemoteProcess
        public struct AsyncIterator: AsyncIteratorProtocol {
            let process: RemoteProcess
            public mutating func next() async throws -> OutputChunk? { try await process.nextChunk() }
        }
        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(process: process) }
    }

    func nextChunk() async throws -> OutputChunk? {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<OutputChunk?, any Error>) in
            let result: Result<OutputChunk?, any Error>? = state.withLock { s in
                if let chunk = s.chunks.popFirst() {
                    return .success(chunk)
                }
                if !s.open[1] && !s.open[2] { return .success(nil) }
                if let f = s.failure { return .failure(f) }
                s.outputWaiter = c
                return nil
            }
            if let result {
                if case .success(let chunk?) = result { consumed(chunk) }
                c.resume(with: result)
            }
        }
    }

    /// Gives credit back to the guest for what the consumer took.
    private func consumed(_ chunk: OutputChunk) {
        let sub = Int(chunk.stream.rawValue)
        let grant: Int = state.withLock { s in
            s.ungranted[sub] += chunk.bytes.count
            guard s.ungranted[sub] >= client.hostWindow / 4 else { return 0 }
            let g = s.ungranted[sub]
            s.ungranted[sub] = 0
            s.granted[sub] += g
            return g
        }
        if grant > 0 { client.grant(stream: stream, sub: chunk.stream, bytes: grant) }
    }

    /// Waits for the exit status (which the guest sends after all output).
    /// Consume ``output`` or use ``collect(limit:)``: unread output holds the process.
    public func wait() async throws -> ExitStatus {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<ExitStatus, any Error>) in
            let result: Result<ExitStatus, any Error>? = state.withLock { s in
                if let e = s.exit { return .success(e) }
                if let f = s.failure { return .failure(f) }
                s.exitWaiters.append(c)
                return nil
            }
            if let result { c.resume(with: result) }
        }
    }

    /// Gathers all output (up to `limit` bytes per stream; the rest is
    /// dropped and flagged) and the exit status. Replaces reading ``output``.
    public func collect(limit: Int) async throws -> CollectedOutput {
        let pending: [OutputChunk] = state.withLock { s in
            s.collecting = CollectedOutput(status: ExitStatus(termination: .exited(0)))
            s.collectLimit = limit
            var taken: [OutputChunk] = []
            while let c = s.chunks.popFirst() { taken.append(c) }
            return taken
        }
        for chunk in pending {
            state.withLock { Self.append(chunk, to: &$0) }
            consumed(chunk)
        }
        let status = try await wait()
        return state.withLock { s in
            var out = s.collecting!
            out.status = status
            return out
        }
    }

    private static func append(_ chunk: OutputChunk, to s: inout State) {
        let limit = s.collectLimit
        if chunk.stream == .stdout {
            let room = max(0, limit - s.collecting!.stdout.count)
            s.collecting!.stdout += chunk.bytes.prefix(room)
            if chunk.bytes.count > room { s.collecting!.stdoutTruncated = true }
        } else {
            let room = max(0, limit - s.collecting!.stderr.count)
            s.collecting!.stderr += chunk.bytes.prefix(room)
            if chunk.bytes.count > room { s.collecting!.stderrTruncated = true }
        }
    }

    // MARK: stdin and signals

    /// Sends bytes to the process's stdin, waiting for credit as needed.
    /// Credit is taken under the lock, so concurrent writers never send more
    /// than the guest granted (their chunks may interleave).
    public func writeStdin(_ bytes: [UInt8]) async throws {
        var offset = 0
        while offset < bytes.count {
            let n = try await takeStdinCredit(upTo: min(WireProtocol.maxPayload, bytes.count - offset))
            try await client.send(
                Frame(
                    .data, sub: SubStream.stdin.rawValue, stream: stream,
                    payload: Array(bytes[offset..<(offset + n)])))
            offset += n
        }
    }

    /// Takes up to `wanted` bytes of stdin credit, waiting for a WINDOW if there is none.
    private func takeStdinCredit(upTo wanted: Int) async throws -> Int {
        while true {
            let taken: Int? = try state.withLock { s in
                if let f = s.failure { throw f }
                if s.exit != nil || s.stdinClosed {
                    throw ProtocolError.invalidRequest("stdin of stream \(stream) is closed")
                }
                guard s.stdinCredit > 0 else { return nil }
                let n = min(s.stdinCredit, wanted)
                s.stdinCredit -= n
                return n
            }
            if let taken { return taken }
            try await withCheckedThrowingContinuation { (w: CheckedContinuation<Void, any Error>) in
                let now: Result<Void, any Error>? = state.withLock { s in
                    if let f = s.failure { return .failure(f) }
                    if s.stdinCredit > 0 || s.exit != nil { return .success(()) }
                    s.stdinWaiters.append(w)
                    return nil
                }
                if let now { w.resume(with: now) }
            }
        }
    }

    /// Ends the process's stdin.
    public func closeStdin() async throws {
        let already = state.withLock { s in
            defer { s.stdinClosed = true }
            return s.stdinClosed || s.exit != nil
        }
        if !already { try await client.send(Frame(.eof, sub: SubStream.stdin.rawValue, stream: stream)) }
    }

    /// Sends a signal to the process's whole process group.
    public func signal(_ number: Int32) async throws {
        var p: [UInt8] = []
        p.appendLE(UInt32(number))
        try await client.send(Frame(.signal, stream: stream, payload: p))
    }

    /// Gives the process's terminal a new size (started with a terminal;
    /// the guest refuses RESIZE otherwise). Its foreground group gets SIGWINCH.
    public func resize(_ size: TerminalSize) async throws {
        try await client.send(Frame(.resize, stream: stream, payload: try size.encoded()))
    }

    // MARK: events from the channel (called on the event loop)

    func awaitStart() async throws -> UInt32 {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<UInt32, any Error>) in
            let result: Result<UInt32, any Error>? = state.withLock { s in
                if let pid = s.pid { return .success(pid) }
                if let f = s.failure { return .failure(f) }
                // The EXIT may have come before this wait began (the sender still in send()):
                // exited() found no waiter to fail then, so this one must not wait.
                if s.exit != nil {
                    return .failure(ProtocolError.violation("stream \(stream) exited before it was reported started"))
                }
                s.startWaiter = c
                return nil
            }
            if let result { c.resume(with: result) }
        }
    }

    func started(pid: UInt32) {
        let waiter = state.withLock { s in
            s.pid = pid
            defer { s.startWaiter = nil }
            return s.startWaiter
        }
        waiter?.resume(returning: pid)
    }

    /// A GET's ENTRY: the file is open and its bytes follow.
    func received(entry: FileEntry) {
        state.withLock { $0.fileEntry = entry }
        started(pid: 0)
    }

    /// A transfer's DONE: the guest has the whole file in place (PUT) or sent all of it (GET).
    func transferDone() {
        exited(ExitStatus(termination: .exited(0)))
    }

    /// Returns a violation when the guest sent more than it was granted.
    func received(_ chunk: OutputChunk) -> String? {
        let sub = Int(chunk.stream.rawValue)
        var grant = 0
        let outcome: (String?, CheckedContinuation<OutputChunk?, any Error>?) = state.withLock { s in
            guard s.open[sub] else {
                return ("stream \(stream) sent output on \(chunk.stream) after its end", nil)
            }
            guard s.granted[sub] >= chunk.bytes.count else {
                return ("stream \(stream) sent \(chunk.bytes.count) bytes of output beyond its credit", nil)
            }
            s.received += UInt64(chunk.bytes.count)
            if let limit = byteLimit, s.received > limit {
                return ("stream \(stream) sent more than the \(limit) bytes asked for", nil)
            }
            s.granted[sub] -= chunk.bytes.count
            if s.collecting != nil {
                Self.append(chunk, to: &s)
                s.ungranted[sub] += chunk.bytes.count
                if s.ungranted[sub] >= client.hostWindow / 4 {
                    grant = s.ungranted[sub]
                    s.granted[sub] += grant
                    s.ungranted[sub] = 0
                }
                return (nil, nil)
            }
            if let w = s.outputWaiter {
                s.outputWaiter = nil
                return (nil, w)
            }
            s.chunks.append(chunk)
            return (nil, nil)
        }
        if grant > 0 { client.grant(stream: stream, sub: chunk.stream, bytes: grant) }
        if let waiter = outcome.1 {
            consumed(chunk)
            waiter.resume(returning: chunk)
        }
        return outcome.0
    }

    func endOfOutput(_ sub: SubStream) {
        let waiter: CheckedContinuation<OutputChunk?, any Error>? = state.withLock { s in
            s.open[Int(sub.rawValue)] = false
            guard !s.open[1], !s.open[2], s.chunks.isEmpty, let w = s.outputWaiter else { return nil }
            s.outputWaiter = nil
            return w
        }
        waiter?.resume(returning: nil)
    }

    func stdinWindow(_ bytes: Int) {
        let waiters = state.withLock { s in
            s.stdinCredit += bytes
            defer { s.stdinWaiters = [] }
            return s.stdinWaiters
        }
        for w in waiters { w.resume() }
    }

    func exited(_ status: ExitStatus) {
        let (start, waiters, out, stdin) = state.withLock { s in
            s.exit = status
            s.open = [false, false, false]
            defer {
                s.startWaiter = nil
                s.exitWaiters = []
                s.outputWaiter = nil
                s.stdinWaiters = []
            }
            return (s.startWaiter, s.exitWaiters, s.outputWaiter, s.stdinWaiters)
        }
        // EXIT before STARTED breaks the protocol; the caller must not wait forever.
        start?.resume(throwing: ProtocolError.violation("stream \(stream) exited before it was reported started"))
        out?.resume(returning: nil)
        for w in stdin { w.resume() }
        for w in waiters { w.resume(returning: status) }
    }

    /// Fails every waiter; later calls throw `error` too.
    func fail(_ error: ProtocolError) {
        let (start, out, stdin, exits) = state.withLock { s in
            if s.failure == nil && s.exit == nil { s.failure = error }
            defer {
                s.startWaiter = nil
                s.outputWaiter = nil
                s.stdinWaiters = []
                s.exitWaiters = []
            }
            return (s.startWaiter, s.outputWaiter, s.stdinWaiters, s.exitWaiters)
        }
        start?.resume(throwing: error)
        out?.resume(throwing: error)
        for w in stdin { w.resume(throwing: error) }
        for w in exits { w.resume(throwing: error) }
    }
}
