import Crypto
import Foundation
import HTTPTypes
import OpenAPIRuntime
import VMExecutor

/// The bearer tokens the TCP listener accepts, each naming its owner.
///
/// Read from a file of lines `OWNER TOKEN` (`#` starts a comment). Tokens
/// are kept as SHA-256 digests and compared in constant time; a token must
/// be at least 16 characters, an owner a name of a-z 0-9 _ -.
public struct TokenBook: Sendable {
    private let entries: [(owner: String, digest: [UInt8])]

    public init(file: String) throws {
        let text: String
        do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
            throw VMExecError(.invalidRequest, "cannot read the tokens file \(file): \(error.localizedDescription)")
        }
        var entries: [(String, [UInt8])] = []
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.isEmpty { continue }
            guard fields.count == 2, fields[1].count >= 16, Self.isOwner(String(fields[0])) else {
                throw VMExecError(
                    .invalidRequest,
                    "\(file) line \(number + 1): write OWNER TOKEN, the owner a name of a-z 0-9 _ - and the token 16 characters or more"
                )
            }
            entries.append((String(fields[0]), Array(SHA256.hash(data: Data(fields[1].utf8)))))
        }
        guard !entries.isEmpty else { throw VMExecError(.invalidRequest, "the tokens file \(file) names no token") }
        self.entries = entries
    }

    /// The owner of `token`, or nil. Every entry is compared, each in constant time.
    public func owner(of token: Substring) -> String? {
        let digest = Array(SHA256.hash(data: Data(token.utf8)))
        var found: String?
        for entry in entries {
            var difference: UInt8 = 0
            for (a, b) in zip(entry.digest, digest) { difference |= a ^ b }
            if difference == 0 { found = entry.owner }
        }
        return found
    }

    static func isOwner(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 40
            && s.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 45 }
    }
}

/// Sets ``Caller/owner`` for the request: `local` on the Unix socket (its
/// mode, 0600, is the check), the token's owner on TCP. A request on TCP
/// without a known token is answered 401 before any route runs.
struct CallerMiddleware: ServerMiddleware {
    /// nil: the Unix socket.
    let tokens: TokenBook?

    func intercept(
        _ request: HTTPRequest, body: HTTPBody?, metadata: ServerRequestMetadata, operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, ServerRequestMetadata) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        guard let tokens else { return try await Caller.$owner.withValue("local") { try await next(request, body, metadata) } }
        let header = request.headerFields[.authorization] ?? ""
        guard header.hasPrefix("Bearer "), let owner = tokens.owner(of: header.dropFirst(7)) else {
            let why = header.isEmpty ? "the request has no token" : "the token is not one the daemon knows"
            let failure = FailureMiddleware.failure(
                VMExecError(.unauthorized, "\(why): send Authorization: Bearer TOKEN with a token from the daemon's tokens file"))
            return FailureMiddleware.response(failure)
        }
        return try await Caller.$owner.withValue(owner) { try await next(request, body, metadata) }
    }
}
