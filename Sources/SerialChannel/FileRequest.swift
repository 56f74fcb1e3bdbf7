/// PUT, GET, STAT, LIST, MKDIR, DELETE and MOVE: what the host asks of the
/// guest's files. The guest resolves every path inside the root commands run
/// in (a planted `..` or symlink cannot lead out of it) and answers on the
/// request's stream; see docs/PROTOCOL.md, "Files".
///
/// All seven share one payload layout:
/// `u32 flags | u32 mode | u32 uid | u32 gid | u64 size | str path [| str to]`.
public struct FileRequest: Sendable, Equatable {
    /// Flags; each request accepts some (``allowedFlags(for:)``).
    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// PUT, MOVE: fail with EEXIST instead of replacing what is there.
        public static let noReplace = Flags(rawValue: 0x1)
        /// PUT, MKDIR: create missing parent directories.
        public static let parents = Flags(rawValue: 0x2)
        /// STAT: describe a final symlink itself.
        public static let noFollow = Flags(rawValue: 0x4)
        /// DELETE: a directory and everything in it.
        public static let recursive = Flags(rawValue: 0x8)
        /// MKDIR: an existing directory is success.
        public static let existOK = Flags(rawValue: 0x10)
    }

    public static let fixedSize = 24
    /// The longest path the guest takes, in bytes.
    public static let maxPath = 4095

    public var type: FrameType
    public var flags: Flags = []
    public var mode: UInt32 = 0
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    /// PUT: the bytes that follow; GET: the largest file accepted; LIST: the most entries (0: no cap).
    public var size: UInt64 = 0
    public var path: String
    /// MOVE's destination.
    public var to: String?

    public init(
        _ type: FrameType, path: String, flags: Flags = [], mode: UInt32 = 0, uid: UInt32 = 0,
        gid: UInt32 = 0, size: UInt64 = 0, to: String? = nil
    ) {
        self.type = type
        self.path = path
        self.flags = flags
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.to = to
    }

    public static func put(
        _ path: String, size: UInt64, mode: UInt32, uid: UInt32, gid: UInt32,
        flags: Flags = []
    ) -> FileRequest {
        FileRequest(.put, path: path, flags: flags, mode: mode, uid: uid, gid: gid, size: size)
    }
    public static func get(_ path: String, maxSize: UInt64) -> FileRequest {
        FileRequest(.get, path: path, size: maxSize)
    }
    public static func stat(_ path: String, followSymlink: Bool = true) -> FileRequest {
        FileRequest(.stat, path: path, flags: followSymlink ? [] : .noFollow)
    }
    public static func list(_ path: String, maxEntries: UInt64) -> FileRequest {
        FileRequest(.list, path: path, size: maxEntries)
    }
    public static func mkdir(_ path: String, mode: UInt32, uid: UInt32, gid: UInt32, flags: Flags = []) -> FileRequest {
        FileRequest(.mkdir, path: path, flags: flags, mode: mode, uid: uid, gid: gid)
    }
    public static func delete(_ path: String, recursive: Bool = false) -> FileRequest {
        FileRequest(.delete, path: path, flags: recursive ? .recursive : [])
    }
    public static func move(_ path: String, to: String, replace: Bool = true) -> FileRequest {
        FileRequest(.move, path: path, flags: replace ? [] : .noReplace, to: to)
    }

    /// The frame types that carry a file request.
    public static let types: Set<FrameType> = [.put, .get, .stat, .list, .mkdir, .delete, .move]

    public static func allowedFlags(for type: FrameType) -> Flags {
        switch type {
        case .put: [.noReplace, .parents]
        case .mkdir: [.parents, .existOK]
        case .stat: .noFollow
        case .delete: .recursive
        case .move: .noReplace
        default: []
        }
    }

    /// The rules the guest checks (mirrors `vx_file_decode`); nil when they hold.
    func problem() -> String? {
        guard Self.types.contains(type) else { return "not a file request" }
        if !flags.isSubset(of: Self.allowedFlags(for: type)) { return "flags not allowed for \(type)" }
        let owns = type == .put || type == .mkdir
        if mode > 0o7777 { return "mode \(String(mode, radix: 8)) has bits beyond 07777" }
        if !owns && (mode != 0 || uid != 0 || gid != 0) { return "\(type) takes no mode or owner" }
        if size != 0 && ![.put, .get, .list].contains(type) { return "\(type) takes no size" }
        for p in [path] + (to.map { [$0] } ?? []) {
            if p.utf8.isEmpty || p.utf8.count > Self.maxPath { return "a path must have 1 to \(Self.maxPath) bytes" }
            if p.utf8.contains(0) { return "a path cannot contain a NUL byte" }
        }
        if (type == .move) != (to != nil) { return "MOVE, and only MOVE, has a destination" }
        return nil
    }

    public init(_ type: FrameType, decoding p: [UInt8]) throws(ProtocolError) {
        guard p.count >= Self.fixedSize else { throw .malformedPayload("\(type) request") }
        self.type = type
        flags = Flags(rawValue: p.u32(at: 0))
        mode = p.u32(at: 4)
        uid = p.u32(at: 8)
        gid = p.u32(at: 12)
        size = p.u64(at: 16)
        var pos = Self.fixedSize
        path = try p.wireString(at: &pos, in: "\(type) path")
        to = type == .move ? try p.wireString(at: &pos, in: "MOVE destination") : nil
        guard pos == p.count, problem() == nil else { throw .malformedPayload("\(type) request") }
    }

    /// The payload; throws for a request the guest would refuse as malformed.
    public func encoded() throws(ProtocolError) -> [UInt8] {
        if let why = problem() { throw .invalidRequest("\(type) \(path): \(why)") }
        var p: [UInt8] = []
        p.appendLE(flags.rawValue)
        p.appendLE(mode)
        p.appendLE(uid)
        p.appendLE(gid)
        p.appendLE(size)
        p.appendWireString(path)
        if let to { p.appendWireString(to) }
        return p
    }
}

/// KILL: a signal to one guest process, or to its whole process group.
public struct KillRequest: Sendable, Equatable {
    public var pid: UInt32
    public var signal: UInt32
    public var group: Bool

    public init(pid: UInt32, signal: UInt32, group: Bool) {
        self.pid = pid
        self.signal = signal
        self.group = group
    }

    public init(decoding p: [UInt8]) throws(ProtocolError) {
        guard p.count == 12 else { throw .malformedPayload("KILL") }
        pid = p.u32(at: 0)
        signal = p.u32(at: 4)
        let flags = p.u32(at: 8)
        group = flags & 1 != 0
        guard pid >= 2, pid <= 0x3fff_ffff, (1...64).contains(signal), flags & ~1 == 0 else {
            throw .malformedPayload("KILL")
        }
    }

    public func encoded() throws(ProtocolError) -> [UInt8] {
        guard pid >= 2, pid <= 0x3fff_ffff else {
            throw .invalidRequest("cannot signal pid \(pid): PID 1 and below are the init's")
        }
        guard (1...64).contains(signal) else { throw .invalidRequest("signal \(signal) is not 1...64") }
        var p: [UInt8] = []
        p.appendLE(pid)
        p.appendLE(signal)
        p.appendLE(UInt32(group ? 1 : 0))
        return p
    }
}
