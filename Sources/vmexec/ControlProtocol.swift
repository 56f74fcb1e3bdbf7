import Foundation
import NIOCore
import VMExecutor

/// The local control socket of a guest kept alive by `vmexec run --keep-alive
/// NAME`: how `vmexec cp`, `ps`, `kill`, `exec` and `stop` reach it.
///
/// One request per connection. Frames are `u8 kind | u32 length (LE) |
/// payload`, at most 1 MiB: the client sends a REQUEST (JSON), then for an
/// upload its DATA and an END; the server answers with a HEADER (JSON: the
/// file of a download) and DATA/STDERR/END where they apply, and always
/// last a RESULT (JSON). Both ends stream through NIO with backpressure, so
/// a file of any size passes in bounded memory. The socket is created mode
/// 0600 in a directory only its owner can enter.
enum Control {
    enum Kind: UInt8 { case request = 1, data = 2, stderr = 3, end = 4, result = 5, header = 6 }

    static let maxFrame = 1 << 20

    /// `$VMEXEC_RUNTIME`, else `$XDG_RUNTIME_DIR/vmexec`, else `/tmp/vmexec-UID`.
    static func directory() -> String {
        let env = ProcessInfo.processInfo.environment
        if let d = env["VMEXEC_RUNTIME"], !d.isEmpty { return d }
        if let d = env["XDG_RUNTIME_DIR"], !d.isEmpty { return d + "/vmexec" }
        return "/tmp/vmexec-\(getuid())"
    }

    static func socketPath(_ name: String) -> String { directory() + "/\(name).sock" }

    static func validate(name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
                    || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
            } && name.first != "."
    }
}

struct ControlFrame: Sendable {
    var kind: Control.Kind
    var payload: ByteBuffer

    /// `bytes` as frames of `kind` of at most ``Control/maxFrame`` bytes each
    /// (a chunk of guest output can be as large as the channel's window).
    static func split(_ kind: Control.Kind, _ bytes: [UInt8]) -> [ControlFrame] {
        stride(from: 0, to: bytes.count, by: Control.maxFrame).map { start in
            ControlFrame(kind: kind, payload: ByteBuffer(bytes: bytes[start..<min(start + Control.maxFrame, bytes.count)]))
        }
    }

    static func json<T: Encodable>(_ kind: Control.Kind, _ value: T) throws -> ControlFrame {
        ControlFrame(kind: kind, payload: ByteBuffer(bytes: Array(try JSONEncoder().encode(value))))
    }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(type, from: Data(payload.readableBytesView))
    }
}

struct ControlFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ControlFrame

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= 5,
            let raw = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            let length = buffer.getInteger(at: buffer.readerIndex + 1, endianness: .little, as: UInt32.self)
        else { return .needMoreData }
        guard let kind = Control.Kind(rawValue: raw), Int(length) <= Control.maxFrame else {
            throw VMExecError(.protocolError, "the control socket sent a bad frame (kind \(raw), \(length) bytes)")
        }
        guard buffer.readableBytes >= 5 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 5)
        let payload = buffer.readSlice(length: Int(length))!
        context.fireChannelRead(Self.wrapInboundOut(ControlFrame(kind: kind, payload: payload)))
        return .continue
    }
}

struct ControlFrameEncoder: MessageToByteEncoder {
    typealias OutboundIn = ControlFrame

    func encode(data: ControlFrame, out: inout ByteBuffer) throws {
        out.writeInteger(data.kind.rawValue)
        out.writeInteger(UInt32(data.payload.readableBytes), endianness: .little)
        var payload = data.payload
        out.writeBuffer(&payload)
    }
}

/// What a client asks.
struct ControlRequest: Codable, Sendable {
    enum Operation: String, Codable, Sendable { case put, get, ps, kill, exec, stop }
    var op: Operation
    var path: String?
    var size: UInt64?
    var mode: UInt32?
    var parents: Bool?
    var pid: UInt32?
    var signal: Int32?
    var group: Bool?
    var argv: [String]?
    var env: [String: String]?
    var workdir: String?
    var timeoutSeconds: Double?
    /// Who runs it; nil: the sandbox's default user.
    var uid: UInt32?
    var gid: UInt32?
    /// Limits set by the client's options; the others keep the guest's defaults.
    var limits: Limits?
    var sharedTmp: Bool?
    /// exec: the client sends the command's stdin as DATA frames, then END.
    var stdin: Bool?
}

/// How a request ended.
struct ControlResult: Codable, Sendable {
    var ok: Bool
    var code: String?
    var message: String?
    var exitCode: Int32?
    var entry: FileEntry?
    var processes: [ProcessEntry]?

    /// Throws the failure a RESULT reports, as the VMExecError the keeper had.
    func check() throws -> ControlResult {
        guard ok else {
            let code = self.code.flatMap(VMExecError.Code.init(rawValue:)) ?? .invalidRequest
            throw VMExecError(code, message ?? "the guest's keeper refused the request")
        }
        return self
    }

    static func failure(_ error: any Error) -> ControlResult {
        if let e = error as? VMExecError { return ControlResult(ok: false, code: e.code.rawValue, message: e.message) }
        return ControlResult(ok: false, code: VMExecError.Code.invalidRequest.rawValue, message: ErrorReport.message(for: error))
    }
}
