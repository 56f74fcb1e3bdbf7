import Foundation
import HTTPTypes
import Logging
import OpenAPIRuntime
import VMExecutor

/// Turns every error a route throws into the API's one error body,
/// `{"error": {"code", "kind", "message"}}`, with the status its kind (or,
/// for a few codes, the code) calls for; and logs each request with an id,
/// its caller, status and time.
struct FailureMiddleware: ServerMiddleware {
    let logger: Logger

    func intercept(
        _ request: HTTPRequest, body: HTTPBody?, metadata: ServerRequestMetadata, operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, ServerRequestMetadata) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        let started = ContinuousClock.now
        var log = logger
        log[metadataKey: "request"] = "\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        log[metadataKey: "operation"] = "\(operationID)"
        log[metadataKey: "caller"] = "\(Caller.owner)"
        let response: (HTTPResponse, HTTPBody?)
        do {
            response = try await next(request, body, metadata)
        } catch {
            let failure = Self.failure(error)
            log.info("request failed: \(failure.message)", metadata: ["code": "\(failure.code)"])
            response = Self.response(failure)
        }
        log.debug(
            "request answered",
            metadata: ["status": "\(response.0.status.code)", "time": "\(ContinuousClock.now - started)"])
        return response
    }

    /// What the error says, as the API shows it.
    struct Failure: Encodable {
        var status: Int
        var code: String
        var kind: String
        var message: String

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Key.self)
            var e = c.nestedContainer(keyedBy: Key.self, forKey: .error)
            try e.encode(code, forKey: .code)
            try e.encode(kind, forKey: .kind)
            try e.encode(message, forKey: .message)
        }

        enum Key: String, CodingKey { case error, code, kind, message }
    }

    static func failure(_ error: any Error) -> Failure {
        var underlying: any Error = error
        if let server = error as? ServerError { underlying = server.underlyingError }
        if let failure = underlying as? any VMExecFailure {
            return Failure(
                status: status(failure), code: failure.failureCode, kind: failure.kind.rawValue,
                message: failure.explanation)
        }
        // Anything else was thrown while the request was read: its body, parameters or content type.
        let message = "the request is malformed: \(decodingDetail(underlying) ?? "\(underlying)")"
        return Failure(status: 400, code: "invalidRequest", kind: FailureKind.invalidRequest.rawValue, message: message)
    }

    /// The one place a failure becomes an HTTP status.
    static func status(_ failure: any VMExecFailure) -> Int {
        switch failure.failureCode {
        case "fileTooLarge": return 413
        case "limitReached": return 429
        case "unauthorized": return 401
        default: break
        }
        switch failure.kind {
        case .invalidRequest: return 400
        case .notFound: return 404
        case .conflict, .busy: return 409
        case .refused: return 422
        case .unavailable: return 503
        case .timeout: return 504
        case .unsupported: return 501
        case .hostFailure: return 500
        case .guestFailure: return 502
        }
    }

    static func response(_ failure: Failure) -> (HTTPResponse, HTTPBody?) {
        let bytes = (try? JSONEncoder().encode(failure)) ?? Data("{}".utf8)
        var fields = HTTPFields()
        fields[.contentType] = "application/json; charset=utf-8"
        if failure.status == 401 { fields[.wwwAuthenticate] = "Bearer" }
        return (HTTPResponse(status: .init(code: failure.status), headerFields: fields), HTTPBody(bytes))
    }

    /// A sentence for a JSON decoding error: which field, what was wrong.
    private static func decodingDetail(_ error: any Error) -> String? {
        guard let e = error as? DecodingError else { return nil }
        func at(_ path: [any CodingKey]) -> String {
            path.isEmpty ? "the body" : path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch e {
        case .dataCorrupted(let c): return "\(at(c.codingPath)): \(c.debugDescription)"
        case .keyNotFound(let key, let c): return "\(at(c.codingPath + [key])) is required"
        case .typeMismatch(_, let c), .valueNotFound(_, let c): return "\(at(c.codingPath)): \(c.debugDescription)"
        @unknown default: return "\(e)"
        }
    }
}
