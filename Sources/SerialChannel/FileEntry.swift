/// ENTRY: one file's facts, as the guest's `lstat` (LIST, STAT with
/// `noFollow`) or `stat` (STAT, GET) saw them.
///
/// `u32 mode | u32 uid | u32 gid | u32 nlink | u64 size | i64 mtime_ns | str name | str link`
public struct FileEntry: Sendable, Equatable, Hashable, Codable {
    /// The file type and permission bits (`st_mode`).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var linkCount: UInt32
    public var size: UInt64
    /// Last modification, nanoseconds since the epoch (guest clock).
    public var modifiedNanoseconds: Int64
    /// The last component of the path ("/" for the root).
    public var name: String
    /// A symlink's target, as stored; empty for everything else.
    public var linkTarget: String

    public static let fixedSize = 32

    /// What kind of file it is, from the type bits of ``mode``.
    public enum Kind: String, Sendable, Codable {
        case regular, directory, symlink, fifo, socket, characterDevice, blockDevice, unknown
    }

    public var kind: Kind {
        switch mode & 0o170000 {
        case 0o100000: .regular
        case 0o040000: .directory
        case 0o120000: .symlink
        case 0o010000: .fifo
        case 0o140000: .socket
        case 0o020000: .characterDevice
        case 0o060000: .blockDevice
        default: .unknown
        }
    }

    /// The permission bits, setuid, setgid and sticky included.
    public var permissions: UInt32 { mode & 0o7777 }

    public init(
        mode: UInt32, uid: UInt32, gid: UInt32, linkCount: UInt32, size: UInt64,
        modifiedNanoseconds: Int64, name: String, linkTarget: String = ""
    ) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.linkCount = linkCount
        self.size = size
        self.modifiedNanoseconds = modifiedNanoseconds
        self.name = name
        self.linkTarget = linkTarget
    }

    public init(decoding p: [UInt8]) throws(ProtocolError) {
        guard p.count >= Self.fixedSize else { throw .malformedPayload("ENTRY") }
        mode = p.u32(at: 0)
        uid = p.u32(at: 4)
        gid = p.u32(at: 8)
        linkCount = p.u32(at: 12)
        size = p.u64(at: 16)
        modifiedNanoseconds = Int64(bitPattern: p.u64(at: 24))
        var pos = Self.fixedSize
        name = try p.wireString(at: &pos, in: "ENTRY name")
        let nameBytes = pos - Self.fixedSize - 2
        linkTarget = try p.wireString(at: &pos, in: "ENTRY link")
        guard pos == p.count, nameBytes <= 255, linkTarget.utf8.count <= FileRequest.maxPath else {
            throw .malformedPayload("ENTRY")
        }
    }

    public func encoded() -> [UInt8] {
        var p: [UInt8] = []
        p.appendLE(mode)
        p.appendLE(uid)
        p.appendLE(gid)
        p.appendLE(linkCount)
        p.appendLE(size)
        p.appendLE(modifiedNanoseconds)
        p.appendWireString(name)
        p.appendWireString(linkTarget)
        return p
    }
}

/// PROCESS: one process of the guest, as its /proc shows it (PS).
///
/// `u32 pid | u32 ppid | u32 pgid | u32 uid | u32 stream | u8 state | 3 zero |
///  u64 start_ns | u64 cpu_us | u64 rss_kb | u16 argc | argc × str`
public struct ProcessEntry: Sendable, Equatable, Hashable, Codable {
    public var pid: UInt32
    public var parentPID: UInt32
    public var processGroup: UInt32
    public var uid: UInt32
    /// The stream of the command whose process group it is in; 0 for none.
    public var stream: UInt32
    /// /proc's state letter: R running, S sleeping, D disk wait, Z zombie, T stopped, ...
    public var state: String
    /// When it started, nanoseconds since the epoch (guest clock).
    public var startNanoseconds: UInt64
    /// User plus system CPU time.
    public var cpuMicroseconds: UInt64
    /// Resident memory.
    public var residentKiB: UInt64
    /// Its arguments (empty for a zombie), at most 4096 bytes of them.
    public var arguments: [String]

    public static let fixedSize = 48

    public init(
        pid: UInt32, parentPID: UInt32, processGroup: UInt32, uid: UInt32, stream: UInt32,
        state: String, startNanoseconds: UInt64, cpuMicroseconds: UInt64, residentKiB: UInt64,
        arguments: [String]
    ) {
        self.pid = pid
        self.parentPID = parentPID
        self.processGroup = processGroup
        self.uid = uid
        self.stream = stream
        self.state = state
        self.startNanoseconds = startNanoseconds
        self.cpuMicroseconds = cpuMicroseconds
        self.residentKiB = residentKiB
        self.arguments = arguments
    }

    public init(decoding p: [UInt8]) throws(ProtocolError) {
        guard p.count >= Self.fixedSize + 2, p[21] == 0, p[22] == 0, p[23] == 0,
            (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(p[20])
        else { throw .malformedPayload("PROCESS") }
        pid = p.u32(at: 0)
        parentPID = p.u32(at: 4)
        processGroup = p.u32(at: 8)
        uid = p.u32(at: 12)
        stream = p.u32(at: 16)
        state = String(Unicode.Scalar(p[20]))
        startNanoseconds = p.u64(at: 24)
        cpuMicroseconds = p.u64(at: 32)
        residentKiB = p.u64(at: 40)
        let argc = Int(p.u16(at: Self.fixedSize))
        guard p.count - Self.fixedSize - 2 <= 4096 + 2 * argc else { throw .malformedPayload("PROCESS") }
        var pos = Self.fixedSize + 2
        arguments = []
        for _ in 0..<argc { arguments.append(try p.wireString(at: &pos, in: "PROCESS argv")) }
        guard pos == p.count else { throw .malformedPayload("PROCESS") }
    }

    public func encoded() -> [UInt8] {
        var p: [UInt8] = []
        p.appendLE(pid)
        p.appendLE(parentPID)
        p.appendLE(processGroup)
        p.appendLE(uid)
        p.appendLE(stream)
        p.append(state.utf8.first ?? UInt8(ascii: "S"))
        p.append(contentsOf: [0, 0, 0])
        p.appendLE(startNanoseconds)
        p.appendLE(cpuMicroseconds)
        p.appendLE(residentKiB)
        p.appendLE(UInt16(arguments.count))
        for argument in arguments { p.appendWireString(argument) }
        return p
    }
}
