import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import ShardLibrary
import Testing
import VMExecClient
import VMExecServer
import VMExecService
import VMExecTestSupport
import VMExecutor

/// Every suite here talks to a real daemon (in this process) over its real
/// Unix socket and TCP port, with real guests behind it. They run one at a
/// time, as the other guest suites do.
@Suite("The daemon's API", .serialized, .enabled(if: TestImages.ready, "the guest images are not built: run make images"))
struct DaemonSuites {}

/// The one failure when the images are missing (the suites above are then off).
@Test("the guest images the daemon suites need are built")
func daemonImagesBuilt() {
    #expect(TestImages.missing == nil, "\(TestImages.missing ?? "")")
}

/// A daemon serving a temporary state folder: the Unix socket (owner
/// `local`) and TCP on 127.0.0.1 with two tokens, alice's and bob's.
final class TestDaemon: Sendable {
    static let aliceToken = "alice-token-0123456789abcdef"
    static let bobToken = "bob-token-0123456789abcdef"

    let directory: URL
    let socketPath: String
    let port: Int
    let registry: SandboxRegistry
    private let server: DaemonServer
    private let task: Task<Void, any Error>

    var local: DaemonClient { .unixSocket(socketPath) }
    var alice: DaemonClient { .tcp(baseURL, token: Self.aliceToken) }
    var bob: DaemonClient { .tcp(baseURL, token: Self.bobToken) }
    var baseURL: URL { URL(string: "http://127.0.0.1:\(port)")! }

    /// Starts a daemon over `directory` (a new temporary one when nil: a restart passes the old one).
    static func start(
        directory: URL? = nil, uploadLimit: Int = 1 << 20, pool: [PoolProfile] = [], maxSandboxes: Int = 16,
        allowedFolders: [String] = [], hosts: [HostSpec] = []
    ) async throws -> TestDaemon {
        let dir =
            directory
            ?? URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-daemon-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let tokens = dir.appendingPathComponent("tokens").path
        try "# test tokens\nalice \(aliceToken)\nbob \(bobToken)\n".write(toFile: tokens, atomically: true, encoding: .utf8)
        let images = try #require(TestImages.images)
        var config = ServiceConfiguration(stateDirectory: dir.appendingPathComponent("state"), images: images)
        config.storeSize = 256 << 20
        config.library = try ShardLibrary(directory: dir.appendingPathComponent("state/library"))
        config.pool = pool
        config.maxSandboxes = maxSandboxes
        config.allowedFolders = allowedFolders
        config.hosts = hosts
        var logger = Logger(label: "test.daemon")
        logger.logLevel = .warning
        let registry = try SandboxRegistry(configuration: config, logger: logger)
        var options = DaemonOptions(socketPath: dir.appendingPathComponent("d.sock").path)
        options.tcpHost = "127.0.0.1"
        options.tcpPort = 0
        options.tokens = try TokenBook(file: tokens)
        options.uploadLimit = uploadLimit
        let server = DaemonServer(registry: registry, options: options, logger: logger)
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let task = Task {
            try await server.run { port in
                if port > 0 { continuation.yield(port) }
            }
        }
        var port = 0
        for await p in ports {
            port = p
            break
        }
        return TestDaemon(
            directory: dir, socketPath: options.socketPath, port: port, registry: registry, server: server, task: task)
    }

    private init(
        directory: URL, socketPath: String, port: Int, registry: SandboxRegistry, server: DaemonServer,
        task: Task<Void, any Error>
    ) {
        self.server = server
        self.directory = directory
        self.socketPath = socketPath
        self.port = port
        self.registry = registry
        self.task = task
    }

    /// Stops the daemon (its guests with it) and waits until it has.
    func stop() async {
        await server.stop()
        _ = await task.result
    }

    /// Stops it and removes its folder.
    func remove() async {
        await stop()
        try? FileManager.default.removeItem(at: directory)
    }

    /// A raw request over TCP: the status and the body as text.
    func raw(
        _ method: HTTPMethod, _ path: String, token: String? = TestDaemon.aliceToken, contentType: String? = nil,
        body: [UInt8]? = nil
    ) async throws -> (status: Int, body: String) {
        var request = HTTPClientRequest(url: baseURL.absoluteString + path)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(120))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        return (Int(response.status.code), String(buffer: bytes))
    }
}

/// The JSON error body's `error` object.
func errorBody(_ text: String) -> [String: String] {
    let object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
    return (object?["error"] as? [String: String]) ?? [:]
}

/// Waits until `condition` holds, at most `seconds`.
func eventually(_ seconds: Double = 30, _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(100))
    }
    return false
}

/// Collects a job's events until its end: both streams' bytes and the final job.
func collect(_ events: AsyncThrowingStream<JobEvent, any Error>) async throws -> (stdout: String, stderr: String, job: JobInfo?) {
    var out: [UInt8] = []
    var err: [UInt8] = []
    var end: JobInfo?
    for try await event in events {
        switch event {
        case .output(.stdout, let bytes): out += bytes
        case .output(.stderr, let bytes): err += bytes
        case .end(let job): end = job
        case .callback: break
        }
    }
    return (String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self), end)
}
