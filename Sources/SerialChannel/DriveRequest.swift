/// MOUNT, UNMOUNT and LAYERS: what the guest does with the read-only drives
/// (shards) the host attaches; STORE, SYNC, FREEZE, THAW: its writable one;
/// FOLDER: a host folder shared over virtiofs. The guest finds a drive by its serial and
/// answers DONE, or ERROR with code MOUNT or BUSY, on the request's stream.
public enum DriveRequest: Sendable, Equatable {
    /// Mount the drive with `serial` read-only (nodev, nosuid) at `target` in the guest's root.
    case mount(serial: String, target: String)
    /// Unmount the drive with `serial`; refused with BUSY while something uses it.
    case unmount(serial: String)
    /// Rebuild the guest's root with these drives as read-only layers above the
    /// base, bottom first; refused with BUSY while processes run.
    case layers([String])
    /// Mount the writable drive with `serial` (ext4) and make it the root's upper
    /// layer; refused with BUSY while processes run.
    case store(serial: String)
    /// Write everything the guest holds for its store through to the drive
    /// (syncfs, which also flushes the drive's cache to the host's file).
    case sync
    /// Quiesce the store: sync it and block every write (FIFREEZE) until `thaw`
    /// or until the host's connection ends, so its image can be copied whole.
    case freeze
    case thaw
    /// Mount the host folder shared under virtiofs tag `tag` at `target` in the guest's root:
    /// read-only, read-write, or overlaid (changes kept in the guest, the folder untouched).
    case folder(tag: String, target: String, mode: FolderMode)

    /// How the guest sees a host folder (FOLDER's mode byte).
    public enum FolderMode: String, Sendable, Equatable, CaseIterable {
        case ro, rw, overlay

        /// The wire byte: 0, 1, 2.
        public var byte: UInt8 {
            switch self {
            case .ro: 0
            case .rw: 1
            case .overlay: 2
            }
        }

        public init?(byte: UInt8) {
            guard let mode = Self.allCases.first(where: { $0.byte == byte }) else { return nil }
            self = mode
        }
    }

    /// The longest serial a drive keeps (QEMU's scsi-hd limit).
    public static let maxSerial = 36
    public static let maxLayers = 16

    public var frameType: FrameType {
        switch self {
        case .mount: return .mount
        case .unmount: return .unmount
        case .layers: return .layers
        case .store: return .store
        case .sync: return .sync
        case .freeze: return .freeze
        case .thaw: return .thaw
        case .folder: return .folder
        }
    }

    /// Whether `serial` is 1-36 of `[A-Za-z0-9._-]`.
    public static func isValidSerial(_ serial: String) -> Bool {
        !serial.isEmpty && serial.utf8.count <= maxSerial
            && serial.utf8.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
                    || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
            }
    }

    public init(_ type: FrameType, decoding p: [UInt8]) throws(ProtocolError) {
        var pos = 0
        func string() throws(ProtocolError) -> String { try p.wireString(at: &pos, in: "drive request") }
        func serial() throws(ProtocolError) -> String {
            let s = try string()
            guard Self.isValidSerial(s) else { throw .malformedPayload("drive serial") }
            return s
        }
        switch type {
        case .mount:
            let s = try serial()
            let target = try string()
            guard target.hasPrefix("/"), target.utf8.count >= 2, target.utf8.count <= 255 else {
                throw .malformedPayload("MOUNT target")
            }
            self = .mount(serial: s, target: target)
        case .unmount:
            self = .unmount(serial: try serial())
        case .store:
            self = .store(serial: try serial())
        case .sync:
            self = .sync
        case .freeze:
            self = .freeze
        case .thaw:
            self = .thaw
        case .folder:
            let tag = try serial()
            let target = try string()
            guard target.hasPrefix("/"), target.utf8.count >= 2, target.utf8.count <= 255, pos < p.count,
                let mode = FolderMode(byte: p[pos])
            else { throw .malformedPayload("FOLDER") }
            pos += 1
            self = .folder(tag: tag, target: target, mode: mode)
        case .layers:
            guard p.count >= 2 else { throw .malformedPayload("LAYERS") }
            let count = Int(p.u16(at: 0))
            guard count <= Self.maxLayers else { throw .malformedPayload("LAYERS") }
            pos = 2
            var serials: [String] = []
            for _ in 0..<count { serials.append(try serial()) }
            self = .layers(serials)
        default:
            throw .malformedPayload("drive request")
        }
        guard pos == p.count else { throw .malformedPayload("drive request") }
    }

    /// The payload bytes; throws for a request the guest would refuse as malformed.
    public func encoded() throws(ProtocolError) -> [UInt8] {
        var p: [UInt8] = []
        func put(_ s: String) { p.appendWireString(s) }
        switch self {
        case .mount(let serial, let target):
            guard Self.isValidSerial(serial), target.hasPrefix("/"), (2...255).contains(target.utf8.count),
                !target.utf8.contains(0)
            else { throw .invalidRequest("cannot mount drive '\(serial)' at '\(target)'") }
            put(serial)
            put(target)
        case .unmount(let serial), .store(let serial):
            guard Self.isValidSerial(serial) else { throw .invalidRequest("bad drive serial '\(serial)'") }
            put(serial)
        case .sync, .freeze, .thaw:
            break
        case .folder(let tag, let target, let mode):
            guard Self.isValidSerial(tag), target.hasPrefix("/"), (2...255).contains(target.utf8.count),
                !target.utf8.contains(0)
            else { throw .invalidRequest("cannot mount folder '\(tag)' at '\(target)'") }
            put(tag)
            put(target)
            p.append(mode.byte)
        case .layers(let serials):
            guard serials.count <= Self.maxLayers, serials.allSatisfy(Self.isValidSerial) else {
                throw .invalidRequest("at most \(Self.maxLayers) layers, each a valid drive serial")
            }
            p.appendLE(UInt16(serials.count))
            serials.forEach(put)
        }
        return p
    }
}
