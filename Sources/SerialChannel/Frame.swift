import NIOCore

/// Constants of the vmexec wire protocol (docs/PROTOCOL.md).
public enum WireProtocol {
    public static let major: UInt16 = 1
    public static let minor: UInt16 = 8
    /// Bytes in a frame header: length, type, sub, reserved, stream.
    public static let headerSize = 12
    /// Hard cap on a frame's payload. A header claiming more is fatal.
    public static let maxPayload = 65536
    /// Size of the fixed part of a HELLO payload, before the info text.
    public static let helloFixedSize = 20
    public static let maxInfo = 1024
    public static let maxArguments = 1024
    public static let maxEnvironment = 1024
    public static let exitPayloadSize = 40
    public static let helloMagic: [UInt8] = Array("VMXC".utf8)
}

/// Frame types. Unknown values are kept as raw bytes in ``Frame/type``.
public enum FrameType: UInt8, Sendable, CaseIterable {
    case hello = 0x01, ping = 0x02, pong = 0x03, error = 0x04, shutdown = 0x05, bye = 0x06
    case exec = 0x10, started = 0x11, data = 0x12, eof = 0x13, window = 0x14, signal = 0x15, exit = 0x16
    case resize = 0x17
    case mount = 0x20, unmount = 0x21, layers = 0x22, done = 0x23, store = 0x24, sync = 0x25
    case freeze = 0x26, thaw = 0x27, folder = 0x28
    case put = 0x30, get = 0x31, stat = 0x32, list = 0x33, mkdir = 0x34, delete = 0x35, move = 0x36
    case entry = 0x37, ps = 0x38, process = 0x39, kill = 0x3a

    /// Frames that belong to the connection (stream 0) rather than a process.
    var isControl: Bool { [.hello, .ping, .pong, .shutdown, .bye].contains(self) }
    /// Frames whose `sub` byte names stdin, stdout or stderr.
    var usesSubStream: Bool { [.data, .eof, .window].contains(self) }
}

/// The standard streams of a process, as carried in a frame's `sub` byte.
public enum SubStream: UInt8, Sendable {
    case stdin = 0, stdout = 1, stderr = 2
}

/// One protocol frame: a header and its payload, as delimited on the wire.
public struct Frame: Sendable, Equatable {
    /// Raw type byte; ``kind`` is nil for a type this side does not know.
    public var type: UInt8
    public var sub: UInt8
    public var stream: UInt32
    public var payload: [UInt8]

    public init(type: UInt8, sub: UInt8 = 0, stream: UInt32 = 0, payload: [UInt8] = []) {
        self.type = type
        self.sub = sub
        self.stream = stream
        self.payload = payload
    }

    public init(_ kind: FrameType, sub: UInt8 = 0, stream: UInt32 = 0, payload: [UInt8] = []) {
        self.init(type: kind.rawValue, sub: sub, stream: stream, payload: payload)
    }

    public var kind: FrameType? { FrameType(rawValue: type) }

    /// The frame's bytes on the wire.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(WireProtocol.headerSize + payload.count)
        out.appendLE(UInt32(payload.count))
        out.append(type)
        out.append(sub)
        out.appendLE(UInt16(0))
        out.appendLE(stream)
        out.append(contentsOf: payload)
        return out
    }

    /// Type-specific rules for a delimited frame: nil when the frame is valid,
    /// otherwise the error code the receiver replies with. Mirrors the C
    /// `vx_frame_check`; the golden vectors hold both to the same answers.
    public func violation() -> ErrorCode? {
        guard let kind else { return .unknownType }
        if kind.isControl && stream != 0 { return .badStream }
        if !kind.isControl && kind != .error && stream == 0 { return .badStream }
        if kind.usesSubStream ? sub > SubStream.stderr.rawValue : sub != 0 { return .malformed }
        do {
            switch kind {
            case .hello: _ = try Hello(decoding: payload)
            case .shutdown, .bye, .eof, .done, .ps: if !payload.isEmpty { return .malformed }
            case .put, .get, .stat, .list, .mkdir, .delete, .move: _ = try FileRequest(kind, decoding: payload)
            case .entry: _ = try FileEntry(decoding: payload)
            case .process: _ = try ProcessEntry(decoding: payload)
            case .kill: _ = try KillRequest(decoding: payload)
            case .mount, .unmount, .layers, .store, .sync, .freeze, .thaw, .folder:
                _ = try DriveRequest(kind, decoding: payload)
            case .error: _ = try ErrorReply(decoding: payload)
            case .exec: _ = try ExecRequest(decoding: payload)
            case .started: _ = try payload.decodeU32()
            case .data: if payload.isEmpty { return .malformed }
            case .window: if try payload.decodeU32() == 0 { return .malformed }
            case .signal: if !(1...64).contains(try payload.decodeU32()) { return .malformed }
            case .exit: _ = try ExitStatus(decoding: payload)
            case .resize: _ = try TerminalSize(decoding: payload)
            case .ping, .pong: break
            }
        } catch {
            return .malformed
        }
        return nil
    }
}

/// Incremental frame parsing over a byte buffer; shared by the NIO decoder,
/// the fuzz tests and the golden vectors. Never allocates more than the
/// frame cap, whatever the header claims.
public enum FrameParser {
    /// Parses one frame from the front of `buffer`, consuming it.
    /// Returns nil (consuming nothing) when more bytes are needed.
    /// Throws ``ProtocolError/frameTooLarge(_:)`` or ``ProtocolError/malformedHeader``
    /// for a header that makes the stream unusable.
    public static func parse(_ buffer: inout ByteBuffer) throws(ProtocolError) -> Frame? {
        guard buffer.readableBytes >= WireProtocol.headerSize,
            let length = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self),
            let reserved = buffer.getInteger(at: buffer.readerIndex + 6, endianness: .little, as: UInt16.self)
        else { return nil }
        if length > WireProtocol.maxPayload { throw .frameTooLarge(Int(length)) }
        if reserved != 0 { throw .malformedHeader }
        guard buffer.readableBytes >= WireProtocol.headerSize + Int(length) else { return nil }
        let start = buffer.readerIndex
        let type = buffer.getInteger(at: start + 4, as: UInt8.self)!
        let sub = buffer.getInteger(at: start + 5, as: UInt8.self)!
        let stream = buffer.getInteger(at: start + 8, endianness: .little, as: UInt32.self)!
        let payload = buffer.getBytes(at: start + WireProtocol.headerSize, length: Int(length))!
        buffer.moveReaderIndex(forwardBy: WireProtocol.headerSize + Int(length))
        return Frame(type: type, sub: sub, stream: stream, payload: payload)
    }
}

/// NIO decoder: bytes to ``Frame``s. A fatal header error is thrown into the
/// pipeline, which closes the connection.
public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Frame
    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try FrameParser.parse(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(
        context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool
    ) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// NIO encoder: ``Frame``s to bytes.
public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame
    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) throws {
        out.writeInteger(UInt32(data.payload.count), endianness: .little)
        out.writeInteger(data.type)
        out.writeInteger(data.sub)
        out.writeInteger(UInt16(0), endianness: .little)
        out.writeInteger(data.stream, endianness: .little)
        out.writeBytes(data.payload)
    }
}
