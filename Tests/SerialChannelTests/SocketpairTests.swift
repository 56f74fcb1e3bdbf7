import Foundation
import Logging
import NIOCore
import SerialChannel
import Testing

/// The other end of a socketpair, played by the test: reads and writes raw
/// frames, so it can follow the protocol or break it on purpose.
final class ScriptedGuest: @unchecked Sendable {
    let fd: Int32
    private var buffer = ByteBuffer()
    private let queue = DispatchQueue(label: "scripted-guest")

    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    func send(_ frame: Frame) { sendRaw(frame.encoded()) }

    func sendRaw(_ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            precondition(n > 0, "scripted guest write failed")
            off += n
        }
    }

    /// Reads the next frame (blocking on a private queue), or nil at EOF. A
    /// host that sends nothing for a minute fails the test instead of hanging it.
    func receive() async throws -> Frame? {
        try await withCheckedThrowingContinuation { c in
            queue.async {
                while true {
                    do {
                        if let f = try FrameParser.parse(&self.buffer) { return c.resume(returning: f) }
                    } catch { return c.resume(throwing: error) }
                    var p = pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)
                    if poll(&p, 1, 60_000) == 0 {
                        return c.resume(throwing: ProtocolError.closed("the scripted guest got no frame from the host in 60 s"))
                    }
                    var chunk = [UInt8](repeating: 0, count: 65536)
                    let n = read(self.fd, &chunk, chunk.count)
                    if n <= 0 { return c.resume(returning: nil) }
                    self.buffer.writeBytes(chunk.prefix(n))
                }
            }
        }
    }

    /// Whether a frame arrives within `timeout` (without consuming more than it).
    func hasPending(within timeout: Duration) -> Bool {
        if buffer.readableBytes > 0 { return true }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)) > 0
    }

    func hello(major: UInt16 = WireProtocol.major, window: UInt32 = 65536) {
        send(Frame(.hello, payload: Hello(major: major, window: window, maxStreams: 16, info: "init=scripted").encoded()))
    }

    static func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
}

/// A connected pair: the host's ChannelClient and the scripted guest.
/// The scripted guest answers at its own pace, so the host sends one HELLO only (no fresh one).
func connectedPair(window: UInt32 = 65536, hostWindow: Int = 512 * 1024) async throws -> (ChannelClient, ScriptedGuest) {
    var fds: [Int32] = [0, 0]
    #if canImport(Glibc)
        // Close-on-exec: a child another test spawns must not keep either end open (and EOF away).
        let kind = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    #else
        let kind = SOCK_STREAM
    #endif
    guard socketpair(AF_UNIX, kind, 0, &fds) == 0 else { throw ProtocolError.closed("socketpair failed") }
    let guest = ScriptedGuest(fd: fds[1])
    var quiet = Logger(label: "test")
    quiet.logLevel = .critical  // the tests provoke refusals on purpose
    async let client = ChannelClient.connect(
        socket: fds[0], handshakeTimeout: .seconds(5), hostWindow: hostWindow, freshHelloAfter: nil,
        logger: quiet)
    let hostHello = try #require(try await guest.receive())
    #expect(hostHello.kind == .hello)
    #expect(try Hello(decoding: hostHello.payload).window == UInt32(hostWindow))
    guest.hello(window: window)
    return (try await client.0, guest)
}

@Suite("Multiplexer over a socketpair", .timeLimit(.minutes(2)))
struct SocketpairTests {
    @Test("a guest that answers late gets a second HELLO with the host's clock of then, before any request")
    func freshHello() async throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        let guest = ScriptedGuest(fd: fds[1])
        let fd = fds[0]
        let client = Task {
            try await ChannelClient.connect(socket: fd, handshakeTimeout: .seconds(5), freshHelloAfter: .milliseconds(300))
        }
        func timeNs(_ frame: Frame?) throws -> UInt64 {
            let hello = try Hello(decoding: try #require(frame).payload)
            let line = try #require(hello.info.split(separator: "\n").first { $0.hasPrefix("time_ns=") })
            return try #require(UInt64(line.dropFirst("time_ns=".count)))
        }
        let first = try timeNs(try await guest.receive())
        try await Task.sleep(for: .milliseconds(600))  // a guest still booting
        guest.hello()
        let (channel, _) = try await client.value
        let second = try timeNs(try await guest.receive())
        #expect(second >= first + 500_000_000, "the second HELLO carries the clock of when the guest answered")
        // The guest answers that one too; the client keeps its first answer and works on.
        guest.hello()
        let ping = Task { try await channel.ping() }
        let request = try #require(try await guest.receive())
        #expect(request.kind == .ping)
        guest.send(Frame(.pong, stream: 0, payload: request.payload))
        try await ping.value
    }

    @Test("a guest that answers at once gets one HELLO")
    func oneHello() async throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        let guest = ScriptedGuest(fd: fds[1])
        let fd = fds[0]
        let client = Task {
            try await ChannelClient.connect(socket: fd, handshakeTimeout: .seconds(5), freshHelloAfter: .seconds(5))
        }
        _ = try await guest.receive()
        guest.hello()
        _ = try await client.value
        #expect(!guest.hasPending(within: .milliseconds(300)), "no second HELLO")
    }

    @Test("a guest HELLO of another major version is refused with advice")
    func versionMismatch() async throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        let guest = ScriptedGuest(fd: fds[1])
        let fd = fds[0]
        let client = Task { try await ChannelClient.connect(socket: fd, handshakeTimeout: .seconds(5)) }
        _ = try await guest.receive()
        guest.hello(major: 9)
        let minor = WireProtocol.minor
        await #expect(throws: ProtocolError.versionMismatch(guest: "9.\(minor)", host: "1.\(minor)")) {
            _ = try await client.value
        }
        #expect(ProtocolError.versionMismatch(guest: "9.0", host: "1.0").description.contains("make images"))
    }

    @Test("a process's frames: started, output, end of streams, then exit")
    func execRoundTrip() async throws {
        let (client, guest) = try await connectedPair()
        async let process = client.exec(ExecRequest(arguments: ["echo", "hi"], environment: ["A=1"]))
        let exec = try #require(try await guest.receive())
        #expect(exec.kind == .exec)
        #expect(try ExecRequest(decoding: exec.payload).arguments == ["echo", "hi"])
        let s = exec.stream
        guest.send(Frame(.started, stream: s, payload: ScriptedGuest.u32(42)))
        let p = try await process
        #expect(p.pid == 42)
        guest.send(Frame(.data, sub: 1, stream: s, payload: Array("hi\n".utf8)))
        guest.send(Frame(.data, sub: 2, stream: s, payload: Array("warn\n".utf8)))
        guest.send(Frame(.eof, sub: 1, stream: s))
        guest.send(Frame(.eof, sub: 2, stream: s))
        guest.send(Frame(.exit, stream: s, payload: ExitStatus(termination: .exited(3), runNanoseconds: 7).encoded()))
        let out = try await p.collect(limit: 1 << 20)
        #expect(out.stdout == Array("hi\n".utf8))
        #expect(out.stderr == Array("warn\n".utf8))
        #expect(out.status.termination == .exited(3))
        #expect(out.status.runNanoseconds == 7)
    }

    @Test("a failed exec is an immediate error carrying the guest's errno")
    func execFailure() async throws {
        let (client, guest) = try await connectedPair()
        let process = Task { try await client.exec(ExecRequest(arguments: ["nope"])) }
        let exec = try #require(try await guest.receive())
        guest.send(
            Frame(
                .error, stream: exec.stream,
                payload: ErrorReply(code: .exec, errno: ENOENT, message: "cannot execute nope").encoded()))
        let error = await #expect(throws: ProtocolError.self) { _ = try await process.value }
        guard case .execFailed(let reply)? = error else {
            Issue.record("expected execFailed, got \(String(describing: error))")
            return
        }
        #expect(reply.errno == ENOENT)
    }

    @Test("stdin never goes beyond the guest's credit, and resumes when credit comes")
    func stdinCredit() async throws {
        let (client, guest) = try await connectedPair(window: 16384)
        async let started = client.exec(ExecRequest(arguments: ["cat"], hasStdin: true))
        let exec = try #require(try await guest.receive())
        guest.send(Frame(.started, stream: exec.stream, payload: ScriptedGuest.u32(1)))
        let p = try await started
        let input = (0..<100_000).map { UInt8(truncatingIfNeeded: $0) }
        let writer = Task {
            try await p.writeStdin(input); try await p.closeStdin()
        }
        var received: [UInt8] = []
        // Exactly one window arrives, then the host waits.
        while received.count < 16384 {
            let f = try #require(try await guest.receive())
            #expect(f.kind == .data && f.sub == 0)
            received += f.payload
        }
        #expect(received.count == 16384)
        #expect(!guest.hasPending(within: .milliseconds(300)), "the host sent stdin beyond its credit")
        // Grant the rest bit by bit.
        while received.count < input.count {
            guest.send(Frame(.window, sub: 0, stream: exec.stream, payload: ScriptedGuest.u32(16384)))
            var granted = 0
            while granted < 16384 && received.count < input.count {
                let f = try #require(try await guest.receive())
                #expect(f.payload.count <= 16384 - granted)
                granted += f.payload.count
                received += f.payload
            }
        }
        let eof = try #require(try await guest.receive())
        #expect(eof.kind == .eof && eof.sub == 0)
        try await writer.value
        #expect(received == input)
    }

    @Test("output beyond the host's credit is refused and fails that process only")
    func guestOverrunsCredit() async throws {
        let (client, guest) = try await connectedPair(hostWindow: 4096)
        async let first = client.exec(ExecRequest(arguments: ["a"]))
        let e1 = try #require(try await guest.receive())
        guest.send(Frame(.started, stream: e1.stream, payload: ScriptedGuest.u32(1)))
        let p1 = try await first
        // 4096 bytes are allowed; one more is not.
        guest.send(Frame(.data, sub: 1, stream: e1.stream, payload: [UInt8](repeating: 1, count: 4096)))
        guest.send(Frame(.data, sub: 1, stream: e1.stream, payload: [9]))
        let refusal = try #require(try await guest.receive())
        #expect(refusal.kind == .error)
        #expect(try ErrorReply(decoding: refusal.payload).code == .flow)
        await #expect(throws: ProtocolError.self) { _ = try await p1.wait() }
        // The channel and other processes carry on.
        async let second = client.exec(ExecRequest(arguments: ["b"]))
        let e2 = try #require(try await guest.receive())
        guest.send(Frame(.started, stream: e2.stream, payload: ScriptedGuest.u32(2)))
        #expect(try await second.pid == 2)
        #expect(client.isOpen)
    }

    @Test("a header claiming 1 GiB closes the channel with a clear error, failing waiting calls")
    func oversizedHeader() async throws {
        let (client, guest) = try await connectedPair()
        let process = Task { try await client.exec(ExecRequest(arguments: ["x"])) }
        _ = try await guest.receive()
        guest.sendRaw(ScriptedGuest.u32(1 << 30) + [0x12, 1, 0, 0] + ScriptedGuest.u32(1))
        await #expect(throws: ProtocolError.frameTooLarge(1 << 30)) { _ = try await process.value }
        #expect(!client.isOpen)
        await #expect(throws: ProtocolError.self) { try await client.ping() }
    }

    @Test("unknown frame types and frames for unknown streams are refused or ignored, never fatal")
    func oddFrames() async throws {
        let (client, guest) = try await connectedPair()
        guest.send(Frame(type: 0x7e, stream: 1, payload: [1, 2, 3]))
        let refusal = try #require(try await guest.receive())
        #expect(try ErrorReply(decoding: refusal.payload).code == .unknownType)
        guest.send(Frame(.data, sub: 1, stream: 999, payload: [1]))  // no such stream: ignored
        guest.send(Frame(.exec, stream: 5, payload: try ExecRequest(arguments: ["x"]).encoded()))  // wrong direction
        let wrongWay = try #require(try await guest.receive())
        #expect(try ErrorReply(decoding: wrongWay.payload).code == .state)
        async let pong: Void = client.ping()
        let ping = try #require(try await guest.receive())
        guest.send(Frame(.pong, payload: ping.payload))
        try await pong
        #expect(client.isOpen)
    }
}

@Suite("Multiplexer under a hostile guest", .timeLimit(.minutes(2)))
struct HostileGuestTests {
    @Test("thousands of random well-framed frames: no crash, processes fail or finish, the channel stays usable")
    func randomFrames() async throws {
        let (client, guest) = try await connectedPair()
        // Some live processes for the garbage to land on.
        var processes: [RemoteProcess] = []
        for _ in 0..<4 {
            async let p = client.exec(ExecRequest(arguments: ["x"], hasStdin: true))
            let exec = try #require(try await guest.receive())
            guest.send(Frame(.started, stream: exec.stream, payload: ScriptedGuest.u32(exec.stream)))
            processes.append(try await p)
        }
        // Read whatever the host answers, so its writes never block.
        let drain = Task.detached { while (try? await guest.receive()) != nil {} }
        var rng = DecoderFuzzTests.SplitMix64(state: 7)
        let types = FrameType.allCases.map(\.rawValue) + [0, 0x7f, 0xff]
        for _ in 0..<5000 {
            let type = types.randomElement(using: &rng)!
            let stream = UInt32.random(in: 0...6, using: &rng)
            let sub = UInt8.random(in: 0...3, using: &rng)
            var payload = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if Bool.random(using: &rng) {  // plausible payloads reach deeper code
                switch FrameType(rawValue: type) {
                case .exit?: payload = ExitStatus(termination: .exited(1)).encoded()
                case .window?, .started?: payload = ScriptedGuest.u32(UInt32.random(in: 0...70000, using: &rng))
                case .hello?: payload = Hello(window: 1, info: "again").encoded()
                default: break
                }
            }
            guest.send(Frame(type: type, sub: sub, stream: stream, payload: payload))
        }
        // Every process either ended or failed; none hangs forever.
        for p in processes {
            let outcome = Task { try await p.collect(limit: 1 << 20) }
            try await Task.sleep(for: .milliseconds(50))
            guest.send(Frame(.eof, sub: 1, stream: p.stream))
            guest.send(Frame(.eof, sub: 2, stream: p.stream))
            guest.send(Frame(.exit, stream: p.stream, payload: ExitStatus(termination: .exited(0)).encoded()))
            _ = await outcome.result
        }
        // Well-framed garbage is refused frame by frame; it never closes the connection.
        #expect(client.isOpen)
        drain.cancel()
    }
}

@Suite("Multiplexer against protocol breaches", .timeLimit(.minutes(2)))
struct ProtocolBreachTests {
    /// Starts a process on the scripted guest and returns it with its stream id.
    static func started(_ client: ChannelClient, _ guest: ScriptedGuest, stdin: Bool = false) async throws -> RemoteProcess {
        async let p = client.exec(ExecRequest(arguments: ["x"], hasStdin: stdin))
        let exec = try #require(try await guest.receive())
        guest.send(Frame(.started, stream: exec.stream, payload: ScriptedGuest.u32(1)))
        return try await p
    }

    /// Many times over: the EXIT can be read before the exec has begun to wait for its start
    /// (it was, once in about thirty runs, and that exec then waited for good).
    @Test("EXIT before STARTED fails the exec instead of leaving it waiting, however early it comes")
    func exitBeforeStart() async throws {
        for _ in 0..<100 {
            let (client, guest) = try await connectedPair()
            let process = Task { try await client.exec(ExecRequest(arguments: ["x"])) }
            let exec = try #require(try await guest.receive())
            guest.send(Frame(.exit, stream: exec.stream, payload: ExitStatus(termination: .exited(0)).encoded()))
            let error = await #expect(throws: ProtocolError.self) { _ = try await process.value }
            guard case .violation? = error else {
                Issue.record("expected a violation, got \(String(describing: error))")
                return
            }
        }
    }

    @Test("stdout ending twice does not end stderr; output after its own end is refused")
    func endsPerStream() async throws {
        let (client, guest) = try await connectedPair()
        let p = try await Self.started(client, guest)
        guest.send(Frame(.eof, sub: 1, stream: p.stream))
        guest.send(Frame(.eof, sub: 1, stream: p.stream))
        guest.send(Frame(.data, sub: 2, stream: p.stream, payload: Array("still open".utf8)))
        guest.send(Frame(.data, sub: 1, stream: p.stream, payload: [1]))  // stdout already ended
        let refusal = try #require(try await guest.receive())
        #expect(try ErrorReply(decoding: refusal.payload).code == .flow)
        #expect(try ErrorReply(decoding: refusal.payload).message.contains("after its end"))
        // The breach failed this process; what it sent before the breach is still readable.
        var got: [UInt8] = []
        do { for try await c in p.output where c.stream == .stderr { got += c.bytes } } catch {}
        #expect(got == Array("still open".utf8))
    }

    @Test("a guest ERROR VERSION closes the channel and keeps the guest's own sentence")
    func versionErrorKeepsMessage() async throws {
        let (client, guest) = try await connectedPair()
        let sentence = "the guest init speaks protocol 1.0 and cannot serve a host speaking 9.0"
        guest.send(Frame(.error, payload: ErrorReply(code: .version, message: sentence).encoded()))
        for _ in 0..<200 where client.isOpen { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!client.isOpen)
        let error = await #expect(throws: ProtocolError.self) { try await client.ping() }
        #expect(error?.description.contains(sentence) == true)
    }

    @Test("writers waiting for stdin credit all resume, and together never exceed it")
    func concurrentStdinWriters() async throws {
        let (client, guest) = try await connectedPair(window: 16384)
        let p = try await Self.started(client, guest, stdin: true)
        let first = [UInt8](repeating: 1, count: 16384)
        try await p.writeStdin(first)  // uses up the whole credit
        var received = 0
        while received < 16384 { received += try #require(try await guest.receive()).payload.count }
        let a = Task { try await p.writeStdin([UInt8](repeating: 2, count: 16384)) }
        let b = Task { try await p.writeStdin([UInt8](repeating: 3, count: 16384)) }
        try await Task.sleep(for: .milliseconds(200))  // both are now waiting for credit
        for _ in 0..<2 {
            guest.send(Frame(.window, sub: 0, stream: p.stream, payload: ScriptedGuest.u32(16384)))
            var granted = 0
            while granted < 16384 { granted += try #require(try await guest.receive()).payload.count }
            #expect(granted == 16384)
            #expect(!guest.hasPending(within: .milliseconds(200)), "stdin beyond the granted credit")
        }
        try await a.value
        try await b.value
    }

    @Test("a guest flooding bad frames without reading cannot make the host queue a reply for each")
    func refusalsAreBounded() async throws {
        let (client, guest) = try await connectedPair()
        let flood = 100_000
        // One write of all the bad frames; the guest reads nothing meanwhile.
        guest.sendRaw((0..<flood).flatMap { _ in Frame(type: 0x7e, stream: 5).encoded() })
        try await Task.sleep(for: .milliseconds(500))
        var refusals = 0
        while guest.hasPending(within: .milliseconds(500)), let f = try await guest.receive() {
            if f.kind == .error { refusals += 1 }
        }
        #expect(refusals > 0)
        #expect(refusals < flood / 4, "the host queued \(refusals) replies for \(flood) bad frames")
        #expect(client.isOpen)
    }
}

/// File and process requests against a guest that lies about them.
@Suite("File requests over a socketpair", .timeLimit(.minutes(2)))
struct FileRequestBreachTests {
    static func entry(size: UInt64) -> [UInt8] {
        FileEntry(mode: 0o100644, uid: 0, gid: 0, linkCount: 1, size: size, modifiedNanoseconds: 0, name: "f").encoded()
    }

    @Test("a GET that brings more bytes than asked for fails, and the guest is told to drop it")
    func getBeyondItsLimit() async throws {
        let (client, guest) = try await connectedPair()
        async let opened = client.openTransfer(.get("/f", maxSize: 10))
        let get = try #require(try await guest.receive())
        let request = try FileRequest(.get, decoding: get.payload)
        #expect(get.kind == .get && request.size == 10)
        guest.send(Frame(.entry, stream: get.stream, payload: Self.entry(size: 10)))
        let transfer = try await opened
        guest.send(Frame(.data, sub: 1, stream: get.stream, payload: [UInt8](repeating: 1, count: 11)))
        var outcome: (any Error)?
        do { for try await _ in transfer.output {} } catch { outcome = error }
        #expect(
            (outcome as? ProtocolError)?.description.contains("more than the 10 bytes") == true, "\(String(describing: outcome))")
        var kinds: [FrameType] = []
        while kinds.count < 2, let f = try await guest.receive() { kinds.append(f.kind!) }
        #expect(kinds == [.error, .signal])
        #expect(client.isOpen)
    }

    @Test("a LIST answered with more entries than asked for fails instead of growing without bound")
    func listBeyondItsLimit() async throws {
        let (client, guest) = try await connectedPair()
        let listed = Task { try await client.list("/", maxEntries: 2) }
        let list = try #require(try await guest.receive())
        for _ in 0..<3 { guest.send(Frame(.entry, stream: list.stream, payload: Self.entry(size: 0))) }
        guest.send(Frame(.done, stream: list.stream))
        await #expect(throws: ProtocolError.self) { _ = try await listed.value }
        #expect(client.isOpen)
    }

    @Test("a PUT's bytes go within the guest's credit and end with EOF; DONE completes it")
    func putRoundTrip() async throws {
        let (client, guest) = try await connectedPair(window: 1000)
        async let opened = client.openTransfer(.put("/f", size: 2500, mode: 0o644, uid: 1000, gid: 1000))
        let put = try #require(try await guest.receive())
        guest.send(Frame(.started, stream: put.stream, payload: ScriptedGuest.u32(0)))
        let transfer = try await opened
        let writer = Task {
            try await transfer.writeStdin([UInt8](repeating: 7, count: 2500))
            try await transfer.closeStdin()
        }
        var got = 0
        while got < 2500, let f = try await guest.receive() {
            #expect(f.kind == .data && f.payload.count <= 1000)
            got += f.payload.count
            if got % 1000 == 0 { guest.send(Frame(.window, stream: put.stream, payload: ScriptedGuest.u32(1000))) }
        }
        try await writer.value
        #expect(try await guest.receive()?.kind == .eof)
        guest.send(Frame(.done, stream: put.stream))
        #expect(try await transfer.wait().termination == .exited(0))
    }
}
