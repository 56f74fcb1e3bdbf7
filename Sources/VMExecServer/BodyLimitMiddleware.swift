import Foundation
import Hummingbird
import NIOCore
import VMExecutor

/// Caps the bodies the generated routes collect in memory (JSON): a body
/// announced larger is answered 413 before it is read, one that grows past
/// the cap while it streams fails its request. Octet-stream bodies (file
/// uploads, stdin) pass as they are: their routes stream them within their
/// own limits.
struct BodyLimitMiddleware<Context: RequestContext>: RouterMiddleware {
    let limit: Int

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        if request.headers[.contentType]?.hasPrefix("application/octet-stream") == true {
            return try await next(request, context)
        }
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
            let failure = FailureMiddleware.failure(Self.tooLarge(limit))
            let bytes = (try? JSONEncoder().encode(failure)) ?? Data()
            return Response(
                status: .contentTooLarge, headers: [.contentType: "application/json; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        }
        var request = request
        request.body = RequestBody(asyncSequence: LimitedBody(base: request.body, limit: limit))
        return try await next(request, context)
    }

    static func tooLarge(_ limit: Int) -> VMExecError {
        VMExecError(.fileTooLarge, "the request body is over \(limit) bytes; send large inputs as files (PUT .../files)")
    }
}

/// A request body that fails once more than `limit` bytes have come.
struct LimitedBody: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let base: RequestBody
    let limit: Int

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: RequestBody.AsyncIterator
        let limit: Int
        var seen = 0

        mutating func next() async throws -> ByteBuffer? {
            guard let buffer = try await base.next() else { return nil }
            seen += buffer.readableBytes
            if seen > limit { throw BodyLimitMiddleware<BasicRequestContext>.tooLarge(limit) }
            return buffer
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator(), limit: limit) }
}
