import Foundation
import NIOCore
import SerialChannel
import Testing

/// One line of Tests/Vectors/frames.vec.
struct GoldenVector: CustomTestStringConvertible, Sendable {
    let name: String
    let bytes: [UInt8]
    let meaning: String
    var testDescription: String { name }

    static let all: [GoldenVector] = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../Vectors/frames.vec").standardized
        let text = try! String(contentsOf: url, encoding: .utf8)
        return text.split(separator: "\n").compactMap { line in
            if line.hasPrefix("#") || line.trimmingCharacters(in: .whitespaces).isEmpty { return nil }
            let parts = line.split(separator: "|", maxSplits: 2, omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces) }
            let hex = Array(parts[1].replacingOccurrences(of: " ", with: ""))
            let bytes = stride(from: 0, to: hex.count, by: 2).map { UInt8(String(hex[$0...$0 + 1]), radix: 16)! }
            return GoldenVector(name: parts[0], bytes: bytes, meaning: parts[2])
        }
    }()
}

@Suite("Golden vectors")
struct GoldenVectorTests {
    @Test("the vector file is there and covers every frame type")
    func coverage() {
        #expect(GoldenVector.all.count >= 60)
        for type in FrameType.allCases {
            let name = FrameDescription.name(type)
            #expect(GoldenVector.all.contains { $0.meaning.hasPrefix(name + " ") }, "no valid vector for \(name)")
        }
    }

    @Test("the Swift codec reads each vector as the spec says", arguments: GoldenVector.all)
    func decode(_ v: GoldenVector) {
        let (text, consumed) = FrameDescription.describe(v.bytes)
        #expect(text == v.meaning)
        if consumed > 0 { #expect(consumed == v.bytes.count) }
    }

    @Test("re-encoding a valid vector gives its bytes back", arguments: GoldenVector.all)
    func roundTrip(_ v: GoldenVector) throws {
        var buffer = ByteBuffer(bytes: v.bytes)
        guard let frame = try? FrameParser.parse(&buffer), frame.violation() == nil else { return }
        #expect(frame.encoded() == v.bytes)
        // Typed payloads re-encode to the same bytes too.
        switch frame.kind! {
        case .hello: #expect(try Hello(decoding: frame.payload).encoded() == frame.payload)
        case .exec: #expect(try ExecRequest(decoding: frame.payload).encoded() == frame.payload)
        case .exit: #expect(try ExitStatus(decoding: frame.payload).encoded() == frame.payload)
        case .resize: #expect(try TerminalSize(decoding: frame.payload).encoded() == frame.payload)
        case .error:
            let e = try ErrorReply(decoding: frame.payload)
            #expect(e.encoded() == frame.payload)
        default: break
        }
    }
}
