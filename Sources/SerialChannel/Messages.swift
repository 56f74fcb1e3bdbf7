/// Typed payloads of the protocol's frames, with their exact byte layouts
/// (little-endian, see docs/PROTOCOL.md). Decoders check every length
/// against the bytes present and throw ``ProtocolError/malformedPayload(_:)``.

/// HELLO: version and limits, sent by both sides.
public struct Hello: Sendable, Equatable {
    public var major: UInt16
    public var minor: UInt16
    /// Largest payload the sender accepts.
    public var maxPayload: UInt32
    /// Initial credit the sender grants per data sub-stream flowing to it.
    public var window: UInt32
    /// Processes the sender runs at once (0 from the host).
    public var maxStreams: UInt32
    /// `key=value` lines describing the sender (init version, kernel, boot error).
    public var info: String

    public init(
        major: UInt16 = WireProtocol.major, minor: UInt16 = WireProtocol.minor,
        maxPayload: UInt32 = UInt32(WireProtocol.maxPayload), window: UInt32, maxStreams: UInt32 = 0,
        info: String
    ) {
        self.major = major
        self.minor = minor
        self.maxPayload = maxPayload
        self.window = window
        self.maxStreams = maxStreams
        self.info = info
    }

    public init(decoding p: [UInt8]) throws(ProtocolError) {
        guard p.count >= WireProtocol.helloFixedSize, p.count <= WireProtocol.helloFixedSize + WireProtocol.maxInfo,
            Array(p[0..<4]) == WireProtocol.helloMagic
        else { throw .malformedPayload("HELLO") }
        major = p.u16(at: 4)
        minor = p.u16(at: 6)
        maxPayload = p.u32(at: 8)
        window = p.u32(at: 12)
        maxStreams = p.u32(at: 16)
        info = String(decoding: p[WireProtocol.helloFixedSize...], as: UTF8.self)
    }

    public func encoded() -> [UInt8] {
        var p = WireProtocol.helloMagic
        p.appendLE(major)
        p.appendLE(minor)
        p.appendLE(maxPayload)
        p.appendLE(window)
        p.appendLE(maxStreams)
        p.append(contentsOf: Array(info.utf8.prefix(WireProtocol.maxInfo)))
        return p
    }

    /// The info text's `key=value` lines as a dictionary.
    public var fields: [String: String] {
        var out: [String: String] = [:]
        for line in info.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            out[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return out
    }
}

/// Who runs a command and within which limits; 0 means none (or root, for ids).
public struct ExecPolicy: Sendable, Equatable {
    public var uid: UInt32
    public var gid: UInt32
    /// Bytes of memory for all the command's processes (its cgroup's memory.max).
    public var memoryMax: UInt64
    /// Processes and threads at once (its cgroup's pids.max).
    public var pidsMax: UInt32
    /// Open files per process (RLIMIT_NOFILE).
    public var openFiles: UInt32
    /// CPU seconds per process (RLIMIT_CPU: SIGXCPU, then SIGKILL).
    public var cpuSeconds: UInt32
    /// A /tmp of its own (since 1.4): an empty tmpfs in a mount namespace of
    /// its own, and so a /dev/shm, with an IPC namespace of its own; gone when
    /// the command's last process ends.
    public var privateTmp: Bool
    /// Outlives its session (since 1.6): when the session ends (a new HELLO, the host gone), its
    /// stream is dropped but the process keeps running, as after restoring a saved state that
    /// had it. The warm Python interpreter is one.
    public var service: Bool
    /// The private /tmp's (and /dev/shm's) size in bytes (since 1.7; needs ``privateTmp``);
    /// nil: the memory limit, or no limit without one.
    public var tmpBytes: UInt64?

    public static let size = 32
    /// Bits of the options word: ``privateTmp``, ``service``, ``tmpBytes``.
    static let privateTmpOption: UInt32 = 1
    static let serviceOption: UInt32 = 2
    static let tmpSizeOption: UInt32 = 4
    static let knownOptions = privateTmpOption | serviceOption | tmpSizeOption
    /// The size block that precedes the policy block when ``tmpBytes`` is set.
    static let tmpSizeBlock = 8

    public init(
        uid: UInt32 = 0, gid: UInt32 = 0, memoryMax: UInt64 = 0, pidsMax: UInt32 = 0, openFiles: UInt32 = 0,
        cpuSeconds: UInt32 = 0, privateTmp: Bool = false, service: Bool = false, tmpBytes: UInt64? = nil
    ) {
        self.uid = uid
        self.gid = gid
        self.memoryMax = memoryMax
        self.pidsMax = pidsMax
        self.openFiles = openFiles
        self.cpuSeconds = cpuSeconds
        self.privateTmp = privateTmp
        self.service = service
        self.tmpBytes = tmpBytes
    }

    init(decoding p: ArraySlice<UInt8>) throws(ProtocolError) {
        let b = Array(p)
        let options = b.count == Self.size ? b.u32(at: 28) : 0
        guard b.count == Self.size, options & ~Self.knownOptions == 0,
            options & Self.tmpSizeOption == 0 || options & Self.privateTmpOption != 0
        else {
            throw .malformedPayload("EXEC policy")
        }
        self.init(
            uid: b.u32(at: 0), gid: b.u32(at: 4), memoryMax: b.u64(at: 8), pidsMax: b.u32(at: 16),
            openFiles: b.u32(at: 20), cpuSeconds: b.u32(at: 24), privateTmp: options & Self.privateTmpOption != 0,
            service: options & Self.serviceOption != 0, tmpBytes: options & Self.tmpSizeOption != 0 ? 0 : nil)
    }

    /// The size block (when ``tmpBytes`` is set), then the policy block.
    func encoded() throws(ProtocolError) -> [UInt8] {
        var p: [UInt8] = []
        if let tmpBytes {
            guard privateTmp, tmpBytes > 0 else {
                throw .invalidRequest("a /tmp size needs a private /tmp and at least one byte")
            }
            p.appendLE(tmpBytes)
        }
        p.appendLE(uid)
        p.appendLE(gid)
        p.appendLE(memoryMax)
        p.appendLE(pidsMax)
        p.appendLE(openFiles)
        p.appendLE(cpuSeconds)
        p.appendLE(
            (privateTmp ? Self.privateTmpOption : 0) | (service ? Self.serviceOption : 0)
                | (tmpBytes != nil ? Self.tmpSizeOption : 0))
        return p
    }
}

/// A terminal's size in character cells: the last block of a terminal EXEC
/// and the payload of RESIZE (since 1.5; both at least 1).
public struct TerminalSize: Sendable, Equatable, Codable {
    public var rows: UInt16
    public var columns: UInt16

    public static let size = 4

    public init(rows: UInt16, columns: UInt16) {
        self.rows = rows
        self.columns = columns
    }

    public init(decoding p: [UInt8]) throws(ProtocolError) {
        guard p.count == Self.size, p.u16(at: 0) > 0, p.u16(at: 2) > 0 else { throw .malformedPayload("terminal size") }
        self.init(rows: p.u16(at: 0), columns: p.u16(at: 2))
    }

    /// The payload bytes; throws for a zero dimension, which the guest refuses.
    public func encoded() throws(ProtocolError) -> [UInt8] {
        guard rows > 0, columns > 0 else {
            throw .invalidRequest("a terminal needs at least one row and one column, not \(rows)x\(columns)")
        }
        var p: [UInt8] = []
        p.appendLE(rows)
        p.appendLE(columns)
        return p
    }
}

/// EXEC: what to run, in which directory, with which environment.
public struct ExecRequest: Sendable, Equatable {
    public static let stdinFlag: UInt32 = 0x1
    public static let policyFlag: UInt32 = 0x2
    /// Since 1.5: the command runs on a terminal of this size (needs ``stdinFlag``).
    public static let terminalFlag: UInt32 = 0x4

    public var arguments: [String]
    public var environment: [String]
    public var workingDirectory: String
    /// Guest-side wall-clock limit in milliseconds; 0 for none.
    public var timeoutMilliseconds: UInt32
    /// Whether stdin is fed by DATA frames; otherwise it is /dev/null.
    public var hasStdin: Bool
    /// User and limits; nil runs as root without limits.
    public var policy: ExecPolicy?
    /// A terminal (a pty pair in the guest) of this size; nil: pipes. On a
    /// terminal, stdin and all output go through it: output arrives on stdout.
    public var terminal: TerminalSize?

    public init(
        arguments: [String], environment: [String] = [], workingDirectory: String = "/",
        timeoutMilliseconds: UInt32 = 0, hasStdin: Bool = false, policy: ExecPolicy? = nil,
        terminal: TerminalSize? = nil
    ) {
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.timeoutMilliseconds = timeoutMilliseconds
        self.hasStdin = hasStdin
        self.policy = policy
        self.terminal = terminal
    }

    public init(decoding payload: [UInt8]) throws(ProtocolError) {
        var p = payload
        guard p.count >= 12 else { throw .malformedPayload("EXEC") }
        let flags = p.u32(at: 0)
        timeoutMilliseconds = p.u32(at: 4)
        let argc = Int(p.u16(at: 8)), envc = Int(p.u16(at: 10))
        guard flags & ~(Self.stdinFlag | Self.policyFlag | Self.terminalFlag) == 0, argc >= 1,
            argc <= WireProtocol.maxArguments, envc <= WireProtocol.maxEnvironment
        else { throw .malformedPayload("EXEC") }
        hasStdin = flags & Self.stdinFlag != 0
        policy = nil
        terminal = nil
        var pos = 12
        if flags & Self.terminalFlag != 0 {
            guard hasStdin, p.count >= 12 + TerminalSize.size else { throw .malformedPayload("EXEC") }
            terminal = try TerminalSize(decoding: Array(p.suffix(TerminalSize.size)))
            p.removeLast(TerminalSize.size)
        }
        if flags & Self.policyFlag != 0 {
            guard p.count >= 12 + ExecPolicy.size else { throw .malformedPayload("EXEC") }
            policy = try ExecPolicy(decoding: p[(p.count - ExecPolicy.size)...])
            p.removeLast(ExecPolicy.size)
            if policy?.tmpBytes != nil {
                guard p.count >= 12 + ExecPolicy.tmpSizeBlock else { throw .malformedPayload("EXEC") }
                let size = p.u64(at: p.count - ExecPolicy.tmpSizeBlock)
                guard size > 0 else { throw .malformedPayload("EXEC") }
                policy?.tmpBytes = size
                p.removeLast(ExecPolicy.tmpSizeBlock)
            }
        }
        workingDirectory = try Self.string(p, &pos)
        arguments = []
        environment = []
        for i in 0..<(argc + envc) {
            let s = try Self.string(p, &pos)
            if i == 0 && s.isEmpty { throw .malformedPayload("EXEC") }
            if i < argc {
                arguments.append(s)
            } else {
                guard let eq = s.firstIndex(of: "="), eq != s.startIndex else { throw .malformedPayload("EXEC") }
                environment.append(s)
            }
        }
        guard pos == p.count else { throw .malformedPayload("EXEC") }
    }

    /// The payload bytes; throws when the request cannot be carried in one frame.
    public func encoded() throws(ProtocolError) -> [UInt8] {
        guard let first = arguments.first, !first.isEmpty else {
            throw .invalidRequest("a command needs a program name")
        }
        guard arguments.count <= WireProtocol.maxArguments, environment.count <= WireProtocol.maxEnvironment else {
            throw .invalidRequest(
                "at most \(WireProtocol.maxArguments) arguments and \(WireProtocol.maxEnvironment) environment entries")
        }
        for e in environment where e.firstIndex(of: "=").map({ $0 == e.startIndex }) ?? true {
            throw .invalidRequest("environment entry \"\(e)\" is not NAME=VALUE")
        }
        var p: [UInt8] = []
        if terminal != nil && !hasStdin {
            throw .invalidRequest("a command on a terminal takes its input through it: hasStdin must be set")
        }
        p.appendLE(
            (hasStdin ? Self.stdinFlag : 0) | (policy != nil ? Self.policyFlag : 0)
                | (terminal != nil ? Self.terminalFlag : 0))
        p.appendLE(timeoutMilliseconds)
        p.appendLE(UInt16(arguments.count))
        p.appendLE(UInt16(environment.count))
        for s in [workingDirectory] + arguments + environment {
            let bytes = Array(s.utf8)
            guard bytes.count <= Int(UInt16.max), !bytes.contains(0) else {
                throw .invalidRequest("argument \"\(s.prefix(40))…\" is too long or contains a NUL byte")
            }
            p.appendLE(UInt16(bytes.count))
            p.append(contentsOf: bytes)
        }
        if let policy { p += try policy.encoded() }
        if let terminal { p += try terminal.encoded() }
        guard p.count <= WireProtocol.maxPayload else {
            throw .invalidRequest(
                "command line and environment take \(p.count) bytes; at most \(WireProtocol.maxPayload) fit")
        }
        return p
    }

    private static func string(_ p: [UInt8], _ pos: inout Int) throws(ProtocolError) -> String {
        try p.wireString(at: &pos, in: "EXEC")
    }
}

extension [UInt8] {
    /// The encoded string (u16 length, bytes, no NUL) at `pos`, advancing past it.
    func wireString(at pos: inout Int, in what: String) throws(ProtocolError) -> String {
        guard count - pos >= 2 else { throw .malformedPayload(what) }
        let len = Int(u16(at: pos))
        guard count - pos - 2 >= len else { throw .malformedPayload(what) }
        let bytes = self[(pos + 2)..<(pos + 2 + len)]
        guard !bytes.contains(0) else { throw .malformedPayload(what) }
        pos += 2 + len
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends `s` as an encoded string (u16 length, bytes).
    mutating func appendWireString(_ s: String) {
        appendLE(UInt16(s.utf8.count))
        append(contentsOf: s.utf8)
    }
}

/// How a process ended.
public enum Termination: Sendable, Equatable {
    /// It exited with this code.
    case exited(Int32)
    /// A signal killed it.
    case signaled(Int32)
    /// It ran past its timeout; its process group was killed with this signal.
    case timedOut(Int32)
    /// The OOM killer ended it (with this signal) inside its memory limit.
    case outOfMemory(Int32)
}

/// EXIT: the end of a process, sent after its stdout and stderr ended.
public struct ExitStatus: Sendable, Equatable {
    public var termination: Termination
    /// Guest time from fork to reap, in nanoseconds.
    public var runNanoseconds: UInt64
    public var userMicroseconds: UInt64
    public var systemMicroseconds: UInt64
    /// Peak memory in KiB: of the command's cgroup (all its processes) where
    /// the guest has cgroups, else the main process's peak resident set.
    public var maxRSSKiB: UInt64

    public init(
        termination: Termination, runNanoseconds: UInt64 = 0, userMicroseconds: UInt64 = 0,
        systemMicroseconds: UInt64 = 0, maxRSSKiB: UInt64 = 0
    ) {
        self.termination = termination
        self.runNanoseconds = runNanoseconds
        self.userMicroseconds = userMicroseconds
        self.systemMicroseconds = systemMicroseconds
        self.maxRSSKiB = maxRSSKiB
    }

    public init(decoding p: [UInt8]) throws(ProtocolError) {
        guard p.count == WireProtocol.exitPayloadSize, p[0] <= 3, p[1] == 0, p[2] == 0, p[3] == 0 else {
            throw .malformedPayload("EXIT")
        }
        let value = Int32(bitPattern: p.u32(at: 4))
        switch p[0] {
        case 0: termination = .exited(value)
        case 1: termination = .signaled(value)
        case 2: termination = .timedOut(value)
        default: termination = .outOfMemory(value)
        }
        runNanoseconds = p.u64(at: 8)
        userMicroseconds = p.u64(at: 16)
        systemMicroseconds = p.u64(at: 24)
        maxRSSKiB = p.u64(at: 32)
    }

    public func encoded() -> [UInt8] {
        var p: [UInt8] = []
        switch termination {
        case .exited(let v): p += [0, 0, 0, 0]; p.appendLE(UInt32(bitPattern: v))
        case .signaled(let v): p += [1, 0, 0, 0]; p.appendLE(UInt32(bitPattern: v))
        case .timedOut(let v): p += [2, 0, 0, 0]; p.appendLE(UInt32(bitPattern: v))
        case .outOfMemory(let v): p += [3, 0, 0, 0]; p.appendLE(UInt32(bitPattern: v))
        }
        p.appendLE(runNanoseconds)
        p.appendLE(userMicroseconds)
        p.appendLE(systemMicroseconds)
        p.appendLE(maxRSSKiB)
        return p
    }
}

/// ERROR: a refused frame or a failed request, with the guest's errno.
public struct ErrorReply: Sendable, Equatable {
    public var code: ErrorCode
    public var rawCode: UInt32
    public var errno: Int32
    public var message: String

    public init(code: ErrorCode, errno: Int32 = 0, message: String) {
        self.code = code
        self.rawCode = code.rawValue
        self.errno = errno
        self.message = message
    }

    public init(decoding p: [UInt8]) throws(ProtocolError) {
        guard p.count >= 8, p.count <= 8 + 4096 else { throw .malformedPayload("ERROR") }
        rawCode = p.u32(at: 0)
        code = ErrorCode(rawValue: rawCode) ?? .unknown
        errno = Int32(bitPattern: p.u32(at: 4))
        message = String(decoding: p[8...], as: UTF8.self)
    }

    public func encoded() -> [UInt8] {
        var p: [UInt8] = []
        p.appendLE(rawCode)
        p.appendLE(UInt32(bitPattern: errno))
        p.append(contentsOf: Array(message.utf8.prefix(4096)))
        return p
    }
}

extension Array where Element == UInt8 {
    mutating func appendLE<T: FixedWidthInteger>(_ v: T) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }

    func u16(at i: Int) -> UInt16 { UInt16(self[i]) | UInt16(self[i + 1]) << 8 }
    func u32(at i: Int) -> UInt32 { UInt32(u16(at: i)) | UInt32(u16(at: i + 2)) << 16 }
    func u64(at i: Int) -> UInt64 { UInt64(u32(at: i)) | UInt64(u32(at: i + 4)) << 32 }

    /// A payload that is exactly one little-endian UInt32.
    func decodeU32() throws(ProtocolError) -> UInt32 {
        guard count == 4 else { throw .malformedPayload("u32") }
        return u32(at: 0)
    }
}
