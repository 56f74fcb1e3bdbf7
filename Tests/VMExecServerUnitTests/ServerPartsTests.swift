import Foundation
import Testing
import VMExecutor

@testable import VMExecServer

/// The HTTP harness's own parts, host only: what it checks, how it encodes
/// and how it maps errors. The routes themselves are tested on real guests
/// (VMExecServerTests) and by schemathesis.
@Suite("Server parts")
struct ServerPartsTests {
    @Test("a text page never ends inside a UTF-8 character unless the stream ends there")
    func wholeCharacters() {
        let text = Array("aé€😀".utf8)  // 1 + 2 + 3 + 4 bytes
        for cut in 0...text.count {
            let kept = PageEncoding.wholeCharacters(Array(text[..<cut]))
            #expect([0, 1, 3, 6, 10].contains(kept) || kept == cut, "cut \(cut) kept \(kept)")
            #expect(String(validating: text[..<kept], as: UTF8.self) != nil || kept == cut)
        }
        #expect(PageEncoding.wholeCharacters([0xF0]) == 1, "a lone lead byte is kept: cutting would leave nothing")
        let (data, used) = PageEncoding.text.encode(Array("ab€".utf8.dropLast()), final: false)
        #expect(data == "ab" && used == 2)
        #expect(PageEncoding.base64.encode([0xFF, 0], final: false) == ("/wA=", 2))
    }

    @Test("signals by name, SIG name or number; anything else refused")
    func signals() throws {
        #expect(try SignalName.number("TERM") == 15 && SignalName.number("SIGINT") == 2 && SignalName.number("9") == 9)
        for bad in ["", "0", "65", "TERMINATE", "sigterm", "-1"] {
            #expect(throws: VMExecError.self, "\(bad)") { try SignalName.number(bad) }
        }
    }

    @Test("guest paths must be absolute, without .. and NUL")
    func guestPaths() throws {
        #expect(try ServiceAPI.guestPath("/home/vmexec/a..b") == "/home/vmexec/a..b")
        for bad in ["relative", "/a/../b", "/..", "/a\0b", "/" + String(repeating: "x", count: 4096)] {
            #expect(throws: VMExecError.self) { try ServiceAPI.guestPath(bad) }
        }
        #expect(try ServiceAPI.mode("755") == 0o755)
        #expect(throws: VMExecError.self) { try ServiceAPI.mode("9") }
    }

    @Test("tokens: owners by token, short tokens and bad owners refused, unknown tokens answer nil")
    func tokens() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-tokens-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("tokens").path
        try "# comment\nalice 0123456789abcdef0123\n\nbob\tfedcba9876543210fedc # trailing\n".write(
            toFile: file, atomically: true, encoding: .utf8)
        let book = try TokenBook(file: file)
        #expect(book.owner(of: "0123456789abcdef0123") == "alice" && book.owner(of: "fedcba9876543210fedc") == "bob")
        #expect(book.owner(of: "0123456789abcdef012") == nil && book.owner(of: "") == nil)
        for bad in ["alice short", "Alice 0123456789abcdef0123", "alice 0123456789abcdef0123 extra", "# only a comment"] {
            try bad.write(toFile: file, atomically: true, encoding: .utf8)
            #expect(throws: VMExecError.self, "\(bad)") { try TokenBook(file: file) }
        }
    }

    @Test("each failure kind has its status; a few codes have their own")
    func statuses() {
        func status(_ code: VMExecError.Code) -> Int { FailureMiddleware.status(VMExecError(code, "x")) }
        #expect(status(.invalidRequest) == 400 && status(.notFound) == 404 && status(.alreadyExists) == 409)
        #expect(status(.storeBusy) == 409 && status(.fileRefused) == 422 && status(.guestStopped) == 503)
        #expect(status(.fileTooLarge) == 413 && status(.limitReached) == 429 && status(.unauthorized) == 401)
        #expect(status(.bootTimeout) == 504 && status(.unsupported) == 501 && status(.launchFailed) == 500)
        let decoding = FailureMiddleware.failure(
            DecodingError.keyNotFound(
                JSONKey("argv"), .init(codingPath: [], debugDescription: "missing")))
        #expect(decoding.status == 400 && decoding.message.contains("argv is required"), "\(decoding.message)")
    }

    struct JSONKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}
