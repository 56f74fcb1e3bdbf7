import NIOCore
import SerialChannel
import Testing

/// The host decoder fed random and mutated bytes: it must never crash,
/// never hand out a payload beyond the cap, and refuse an oversized header
/// from the header alone, before any payload bytes arrive.
@Suite("Decoder under garbage")
struct DecoderFuzzTests {
    /// A small deterministic generator so that a failure can be replayed.
    struct SplitMix64: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// Parses like the channel does; returns frames, or stops at a fatal error.
    static func drain(_ bytes: [UInt8]) -> (frames: [Frame], fatal: ProtocolError?) {
        var buffer = ByteBuffer(bytes: bytes)
        var frames: [Frame] = []
        while true {
            do {
                guard let f = try FrameParser.parse(&buffer) else { return (frames, nil) }
                frames.append(f)
            } catch {
                return (frames, error)
            }
        }
    }

    @Test("random bytes never crash the decoder or exceed the cap")
    func randomBytes() {
        var rng = SplitMix64(state: 0x766D_6578_6563)
        for _ in 0..<20_000 {
            let n = Int.random(in: 0...256, using: &rng)
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let (frames, _) = Self.drain(bytes)
            for f in frames {
                #expect(f.payload.count <= WireProtocol.maxPayload)
                _ = f.violation()
                _ = try? Hello(decoding: f.payload)
                _ = try? ExecRequest(decoding: f.payload)
                _ = try? ExitStatus(decoding: f.payload)
                _ = try? ErrorReply(decoding: f.payload)
            }
        }
    }

    @Test("mutations of every golden vector are parsed or refused, never crash")
    func mutatedVectors() {
        var rng = SplitMix64(state: 42)
        for v in GoldenVector.all where !v.bytes.isEmpty {
            for _ in 0..<300 {
                var b = v.bytes
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: b[Int.random(in: 0..<b.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
                case 1: b.removeLast(Int.random(in: 0...b.count, using: &rng))
                case 2: b += (0..<Int.random(in: 1...32, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                default: b.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...b.count, using: &rng))
                }
                let (frames, _) = Self.drain(b)
                for f in frames {
                    #expect(f.payload.count <= WireProtocol.maxPayload)
                    _ = f.violation()
                    _ = FrameDescription.describe(f.encoded())
                }
            }
        }
    }

    @Test("a header claiming 4 GiB is refused from its 12 bytes alone")
    func hugeHeaderRefusedEarly() throws {
        let header: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0x12, 0x01, 0, 0, 1, 0, 0, 0]
        var buffer = ByteBuffer(bytes: header)
        #expect(throws: ProtocolError.frameTooLarge(Int(UInt32.max))) { try FrameParser.parse(&buffer) }
        var atCap = ByteBuffer(bytes: [0, 0, 1, 0, 0x12, 0x01, 0, 0, 1, 0, 0, 0])  // exactly 65536: waits
        #expect(try FrameParser.parse(&atCap) == nil)
        var overCap = ByteBuffer(bytes: [1, 0, 1, 0, 0x12, 0x01, 0, 0, 1, 0, 0, 0])  // 65537: refused
        #expect(throws: ProtocolError.frameTooLarge(65537)) { try FrameParser.parse(&overCap) }
    }

    @Test("frames split at every byte boundary decode the same")
    func splitDelivery() throws {
        let bytes = GoldenVector.all.filter { !$0.meaning.hasPrefix("fatal") && !$0.meaning.hasPrefix("incomplete") }
            .flatMap(\.bytes)
        let whole = Self.drain(bytes).frames
        var buffer = ByteBuffer()
        var pieces: [Frame] = []
        for b in bytes {
            buffer.writeInteger(b)
            while let f = try FrameParser.parse(&buffer) { pieces.append(f) }
        }
        #expect(pieces == whole)
        #expect(
            whole.count == GoldenVector.all.filter { !$0.meaning.hasPrefix("fatal") && !$0.meaning.hasPrefix("incomplete") }.count
        )
    }
}
