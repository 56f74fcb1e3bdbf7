import Foundation
import Hummingbird
import Logging
import NIOCore
import OpenAPIRuntime
import Synchronization
import Testing

@testable import VMExecClient

/// The client's uploads against a real HTTP server on a Unix socket: no daemon,
/// no guest; what is measured is how far the client reads ahead of what it sends.
@Suite("Daemon client uploads")
struct PacedUploadTests {
    /// Bytes the server has taken, and the upload's source's pulls.
    final class Counts: Sendable {
        let received = Atomic<Int>(0)
        let pulled = Atomic<Int>(0)
    }

    /// The server's logger: its complaints about being cancelled at the end are not the test's.
    static let quiet: Logger = {
        var logger = Logger(label: "paced-upload-server")
        logger.logLevel = .critical
        return logger
    }()

    @Test("an upload reads its source no further ahead than the client's event loop has sent")
    func pacedBySentBytes() async throws {
        let counts = Counts()
        let socket = NSTemporaryDirectory() + "vmexec-paced-\(UUID().uuidString.prefix(8)).sock"
        defer { unlink(socket) }
        let router = Router()
        router.put("/v1/sandboxes/:sandbox/files") { request, _ -> Response in
            for try await chunk in request.body { counts.received.add(chunk.readableBytes, ordering: .relaxed) }
            let entry =
                #"{"path":"/f","name":"f","type":"file","size":0,"mode":"644","uid":0,"gid":0,"modified":"2026-01-01T00:00:00Z"}"#
            return Response(
                status: .created, headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: entry)))
        }
        let listening = AsyncStream<Void>.makeStream()
        let app = Application(
            router: router, configuration: .init(address: .unixDomainSocket(path: socket)),
            onServerRunning: { _ in listening.continuation.finish() }, logger: Self.quiet)
        let server = Task { try await app.runService(gracefulShutdownSignals: []) }
        defer { server.cancel() }
        for await _ in listening.stream {}

        // 48 MiB in 64 KiB chunks, one a millisecond: slower than the socket takes them, so
        // the channel never fills and never asks the client to pause; only pacing can stop it.
        let chunk = 64 << 10, chunks = 768
        let source = AsyncStream<HTTPBody.ByteChunk>(unfolding: {
            try? await Task.sleep(for: .milliseconds(1))
            let n = counts.pulled.add(1, ordering: .relaxed).newValue
            return n <= chunks ? ArraySlice(repeating: 7, count: chunk) : nil
        })
        let client = DaemonClient.unixSocket(socket)
        let upload = Task {
            try await client.upload(
                "box", path: "/f",
                bytes: HTTPBody(source, length: .known(Int64(chunk * chunks)), iterationBehavior: .single))
        }
        for _ in 0..<2000 where counts.received.load(ordering: .relaxed) < 4 * chunk {
            try await Task.sleep(for: .milliseconds(5))
        }
        try #require(counts.received.load(ordering: .relaxed) >= 4 * chunk, "the upload did not start within 10 s")

        // The client's loop held up, as on a busy machine: the source must wait for it too.
        let during = try await DaemonClient.loops.next().submit {
            let before = counts.pulled.load(ordering: .relaxed)
            usleep(500_000)
            return counts.pulled.load(ordering: .relaxed) - before
        }.get()
        #expect(during <= 1, "the source was read \(during) chunks ahead while the loop could send none")

        _ = try await upload.value
        #expect(counts.received.load(ordering: .relaxed) == chunk * chunks, "every byte arrived")
    }
}
