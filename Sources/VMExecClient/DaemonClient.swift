import AsyncHTTPClient
import Foundation
import HTTPTypes
import NIOCore
import NIOPosix
import OpenAPIAsyncHTTPClient
import OpenAPIRuntime
import VMExecFailure

/// A client of the vmexec daemon, over its Unix socket or over TCP with a
/// bearer token. Its requests are generated from docs/openapi.yaml, as the
/// daemon's routes are; an error the daemon answers comes back as a
/// ``DaemonError`` with the daemon's code, kind and message.
public struct DaemonClient: Sendable {
    let api: Client
    /// Where the daemon is: its socket, or its URL and token (for the terminal's WebSocket).
    let endpoint: Endpoint

    enum Endpoint: Sendable {
        case unixSocket(String)
        case tcp(URL, token: String)
    }

    /// The daemon on the Unix socket at `path` (the owner is `local`).
    public static func unixSocket(_ path: String) -> DaemonClient {
        let host = path.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? path
        return DaemonClient(url: URL(string: "http+unix://\(host)")!, token: nil, endpoint: .unixSocket(path))
    }

    /// The daemon at `url` (http://HOST:PORT), as the owner of `token`.
    public static func tcp(_ url: URL, token: String) -> DaemonClient {
        DaemonClient(url: url, token: token, endpoint: .tcp(url, token: token))
    }

    private init(url: URL, token: String?, endpoint: Endpoint) {
        self.endpoint = endpoint
        // A job waited for or an event stream may take as long as the job: the deadline is the job's, not the client's.
        let transport = AsyncHTTPClientTransport(configuration: .init(client: Self.http, timeout: .hours(24 * 365)))
        api = Client(
            serverURL: url, transport: transport, middlewares: token.map { [BearerToken(token: $0)] } ?? [])
    }

    /// One HTTP client for the process. A refused connection fails the request at once instead of
    /// being retried until the request's deadline (a year, for waits as long as a job): the daemon is
    /// there or it is not, and a caller must hear which.
    private static let http: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout = .init(connect: .seconds(10))
        return HTTPClient(eventLoopGroup: loops, configuration: configuration)
    }()

    /// One event loop for all of the client's connections: one thread is plenty for the
    /// connections of one process to one daemon, and uploads are paced by it (``PacedBody``).
    static let loops = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    // MARK: daemon

    public func health() async throws -> DaemonHealth {
        let h = try Self.check(try await api.getHealth()).ok.body.json
        return DaemonHealth(
            sandboxes: h.sandboxes, guestsRunning: h.guestsRunning, jobsQueued: h.jobsQueued, jobsRunning: h.jobsRunning)
    }

    /// The hosts sandboxes are placed on, with their load.
    public func hosts() async throws -> [HostInfo] {
        try Self.check(try await api.listHosts()).ok.body.json.map(HostInfo.init)
    }

    public func version() async throws -> String {
        try Self.check(try await api.getVersion()).ok.body.json.version
    }

    // MARK: sandboxes

    public func createSandbox(_ r: SandboxRequest) async throws -> SandboxInfo {
        let body = Components.Schemas.SandboxCreate(
            name: r.name, shards: r.shards, store: r.store, memoryMiB: r.memoryMiB, cpus: r.cpus, limits: nil,
            network: r.network, concurrency: r.concurrency, idleTimeoutSeconds: r.idleTimeoutSeconds,
            lifetimeSeconds: r.lifetimeSeconds, hostname: r.hostname, entrypoint: r.entrypoint,
            mounts: r.mounts.isEmpty
                ? nil : r.mounts.map { .init(host: $0.host, guest: $0.guest, mode: .init(rawValue: $0.mode)) })
        return SandboxInfo(try Self.check(try await api.createSandbox(body: .json(body))).created.body.json)
    }

    public func sandboxes() async throws -> [SandboxInfo] {
        try Self.check(try await api.listSandboxes()).ok.body.json.map(SandboxInfo.init)
    }

    public func sandbox(_ name: String) async throws -> SandboxInfo {
        SandboxInfo(try Self.check(try await api.getSandbox(path: .init(sandbox: name))).ok.body.json)
    }

    public func deleteSandbox(_ name: String) async throws {
        _ = try Self.check(try await api.deleteSandbox(path: .init(sandbox: name))).noContent
    }

    // MARK: jobs

    /// Submits a job; with `wait`, returns once it has ended.
    public func submit(_ sandbox: String, _ job: JobSubmission, wait: Bool = false) async throws -> JobInfo {
        let body = Components.Schemas.JobSubmit(
            argv: job.arguments, env: .init(additionalProperties: job.environment), workdir: job.workingDirectory,
            user: job.user, limits: job.limits.map(Components.Schemas.Limits.init), timeoutSeconds: job.timeoutSeconds,
            outputLimitBytes: job.outputLimitBytes, stdinBase64: job.stdin.map { Data($0).base64EncodedString() },
            stdinOpen: job.stdinOpen, sharedTmp: job.sharedTmp, wait: wait)
        let output = try Self.check(try await api.submitJob(path: .init(sandbox: sandbox), body: .json(body)))
        switch output {
        case .ok(let ok): return JobInfo(try ok.body.json.job)
        case .accepted(let accepted): return JobInfo(try accepted.body.json.job)
        case .default: throw DaemonError.unexpected
        }
    }

    public func job(_ sandbox: String, _ id: String) async throws -> JobInfo {
        JobInfo(try Self.check(try await api.getJob(path: .init(sandbox: sandbox, job: id))).ok.body.json)
    }

    public func jobs(_ sandbox: String) async throws -> [JobInfo] {
        try Self.check(try await api.listJobs(path: .init(sandbox: sandbox))).ok.body.json.map(JobInfo.init)
    }

    /// A page of one stream's bytes from `offset`: the bytes, where the next page starts, whether the stream is complete.
    public func output(_ sandbox: String, _ id: String, stream: JobEvent.Stream, offset: Int, limit: Int = 1 << 20)
        async throws -> (bytes: [UInt8], next: Int, complete: Bool)
    {
        let page = try Self.check(
            try await api.getJobOutput(
                path: .init(sandbox: sandbox, job: id),
                query: .init(stream: stream == .stdout ? .stdout : .stderr, offset: offset, limit: limit, encoding: .base64))
        ).ok.body.json
        return (Array(Data(base64Encoded: page.data) ?? Data()), page.nextOffset, page.complete)
    }

    /// The job's output from the offsets on as it comes, then its end.
    public func events(_ sandbox: String, _ id: String, stdoutOffset: Int = 0, stderrOffset: Int = 0) async throws
        -> AsyncThrowingStream<JobEvent, any Error>
    {
        let output = try Self.check(
            try await api.streamJobEvents(
                path: .init(sandbox: sandbox, job: id),
                query: .init(stdoutOffset: stdoutOffset, stderrOffset: stderrOffset, encoding: .base64)))
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let lines = try output.ok.body.applicationXNdjson.asDecodedJSONLines(
            of: Components.Schemas.Event.self, decoder: decoder)
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    for try await event in lines {
                        switch event._type {
                        case .output:
                            let bytes = Array(Data(base64Encoded: event.data ?? "") ?? Data())
                            continuation.yield(.output(event.stream == .stderr ? .stderr : .stdout, bytes))
                        case .callback:
                            if let c = event.callback {
                                continuation.yield(
                                    .callback(id: c.id, name: c.name, arguments: c.args, keywordArguments: c.kwargs))
                            }
                        case .end:
                            if let job = event.job { continuation.yield(.end(JobInfo(job))) }
                        }
                    }
                    continuation.finish()
                } catch is CancellationError {
                    continuation.finish()
                } catch {
                    // The connection broke under the stream: the daemon stopped, or the network did.
                    continuation.finish(
                        throwing: DaemonError(
                            status: 0, failureCode: "daemonUnreachable", kind: .unavailable,
                            message:
                                "the daemon's event stream of job \(id) broke (\(error)): the daemon or the connection stopped; vmexec logs \(sandbox) \(id) shows how the job ended once a daemon answers again"
                        ))
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Answers a Python job's waiting callback with JSON text, or an error message the code
    /// gets as `CallbackError` (one of them).
    public func answerCallback(_ sandbox: String, _ job: String, _ callback: Int, value: String?, error: String?)
        async throws
    {
        let parsed = try value.map { try JSONDecoder().decode(OpenAPIValueContainer.self, from: Data($0.utf8)) }
        _ = try Self.check(
            try await api.answerCallback(
                path: .init(sandbox: sandbox, job: job, callback: callback),
                body: .json(.init(value: parsed, error: error)))
        ).noContent
    }

    public func writeStdin(_ sandbox: String, _ id: String, _ bytes: [UInt8]) async throws {
        _ = try Self.check(
            try await api.writeJobStdin(path: .init(sandbox: sandbox, job: id), body: .binary(HTTPBody(bytes)))
        ).noContent
    }

    public func closeStdin(_ sandbox: String, _ id: String) async throws {
        _ = try Self.check(try await api.closeJobStdin(path: .init(sandbox: sandbox, job: id))).noContent
    }

    /// Sends a signal (a name such as TERM, or a number) to the job's process group.
    public func signal(_ sandbox: String, _ id: String, _ signal: String) async throws {
        _ = try Self.check(
            try await api.signalJob(path: .init(sandbox: sandbox, job: id), body: .json(.init(signal: signal)))
        ).noContent
    }

    public func cancel(_ sandbox: String, _ id: String) async throws -> JobInfo {
        JobInfo(try Self.check(try await api.cancelJob(path: .init(sandbox: sandbox, job: id))).ok.body.json)
    }

    // MARK: files and processes

    /// Writes `bytes` to `path` in the guest, whole or not at all.
    public func upload(
        _ sandbox: String, path: String, bytes: HTTPBody, overwrite: Bool = false, parents: Bool = false,
        mode: UInt32? = nil
    ) async throws -> FileInfo {
        FileInfo(
            try Self.check(
                try await api.uploadFile(
                    path: .init(sandbox: sandbox),
                    query: .init(
                        path: path, overwrite: overwrite, parents: parents, mode: mode.map { String($0, radix: 8) }),
                    body: .binary(bytes.paced(by: Self.loops.next())))
            ).created.body.json)
    }

    /// A file's bytes as they come, and its size.
    public func download(_ sandbox: String, path: String) async throws -> HTTPBody {
        try Self.check(try await api.downloadFile(path: .init(sandbox: sandbox), query: .init(path: path))).ok.body.binary
    }

    public func stat(_ sandbox: String, path: String) async throws -> FileInfo {
        FileInfo(try Self.check(try await api.statFile(path: .init(sandbox: sandbox), query: .init(path: path))).ok.body.json)
    }

    public func list(_ sandbox: String, path: String) async throws -> [FileInfo] {
        try Self.check(try await api.listFiles(path: .init(sandbox: sandbox), query: .init(path: path))).ok.body.json
            .map(FileInfo.init)
    }

    public func makeDirectory(_ sandbox: String, path: String, parents: Bool = false) async throws -> FileInfo {
        FileInfo(
            try Self.check(
                try await api.makeDirectory(path: .init(sandbox: sandbox), body: .json(.init(path: path, parents: parents)))
            ).created.body.json)
    }

    public func delete(_ sandbox: String, path: String, recursive: Bool = false) async throws {
        _ = try Self.check(
            try await api.deleteFile(path: .init(sandbox: sandbox), query: .init(path: path, recursive: recursive))
        ).noContent
    }

    // MARK: snapshots of a sandbox's store

    public func snapshots(_ sandbox: String) async throws -> [SandboxSnapshot] {
        try Self.check(try await api.listSnapshots(path: .init(sandbox: sandbox))).ok.body.json.map(SandboxSnapshot.init)
    }

    /// Snapshots the sandbox's store while its guest runs.
    public func createSnapshot(_ sandbox: String, _ name: String) async throws -> SandboxSnapshot {
        SandboxSnapshot(
            try Self.check(try await api.createSnapshot(path: .init(sandbox: sandbox), body: .json(.init(name: name))))
                .created.body.json)
    }

    /// Puts the store back as the snapshot holds it; the guest restarts.
    public func restoreSnapshot(_ sandbox: String, _ name: String) async throws {
        _ = try Self.check(try await api.restoreSnapshot(path: .init(sandbox: sandbox, snapshot: name))).noContent
    }

    public func processes(_ sandbox: String) async throws -> [GuestProcess] {
        try Self.check(try await api.listProcesses(path: .init(sandbox: sandbox))).ok.body.json.map(GuestProcess.init)
    }

    public func signalProcess(_ sandbox: String, pid: Int, _ signal: String, group: Bool = false) async throws {
        _ = try Self.check(
            try await api.signalProcess(path: .init(sandbox: sandbox, pid: pid), body: .json(.init(signal: signal, group: group)))
        ).noContent
    }
}

/// Adds `Authorization: Bearer TOKEN` to every request.
struct BearerToken: ClientMiddleware {
    let token: String

    func intercept(
        _ request: HTTPRequest, body: HTTPBody?, baseURL: URL, operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, URL) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        var request = request
        request.headerFields[.authorization] = "Bearer \(token)"
        return try await next(request, body, baseURL)
    }
}
