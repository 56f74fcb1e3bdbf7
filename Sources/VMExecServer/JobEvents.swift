import Foundation
import OpenAPIRuntime
import VMExecService

/// A job's live event stream as NDJSON: `output` events with the bytes
/// from the client's offsets on, as the job writes them, then one `end`
/// event with the final job. It reads the job store (so a client that
/// reconnects with the offsets it saw loses nothing and sees nothing twice)
/// and waits on the runner between changes: no polling while the job is quiet.
struct JobEvents: Sendable {
    let runner: JobRunner
    let store: JobStore
    let jobID: String
    let sandbox: String
    let offsets: (stdout: Int, stderr: Int)
    let encoding: PageEncoding

    /// The body: produced while the client reads it, stopped when it goes away.
    func body() -> HTTPBody {
        let (stream, continuation) = AsyncThrowingStream<ArraySlice<UInt8>, any Error>.makeStream(
            bufferingPolicy: .bufferingOldest(16))
        let producer = Task {
            do {
                try await produce { line in
                    // Waits while the client is slow rather than buffering without bound.
                    while case .dropped = continuation.yield(ArraySlice(line)) {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in producer.cancel() }
        return HTTPBody(stream, length: .unknown, iterationBehavior: .single)
    }

    private func produce(_ emit: (_ line: [UInt8]) async throws -> Void) async throws {
        var next = [JobStream.stdout: offsets.stdout, .stderr: offsets.stderr]
        var announced: Set<Int> = []  // callbacks this stream has shown
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        while !Task.isCancelled {
            let version = await runner.version(of: jobID)
            guard let record = try store.job(jobID) else { return }
            for stream in [JobStream.stdout, .stderr] {
                let page = try store.output(jobID, stream: stream, offset: next[stream]!, limit: 64 << 10)
                guard !page.bytes.isEmpty else { continue }
                let converted = Components.Schemas.OutputPage(page, stream: stream, encoding: encoding)
                guard converted.nextOffset > page.offset else { continue }  // only part of a character so far
                let event = Components.Schemas.Event(
                    _type: .output, stream: converted.stream, offset: page.offset, encoding: converted.encoding,
                    data: converted.data)
                try await emit(Array(try encoder.encode(event)) + [0x0A])
                next[stream] = converted.nextOffset
            }
            // A Python job's callbacks waiting for the client, each shown once, after the output before it.
            for callback in await runner.pendingCallbacks(of: jobID) where !announced.contains(callback.id) {
                announced.insert(callback.id)
                let event = Components.Schemas.Event(_type: .callback, callback: .init(callback))
                try await emit(Array(try encoder.encode(event)) + [0x0A])
            }
            // The record was read before the pages: once it is final, its counts are all there is.
            if record.state.isFinal {
                if next[.stdout]! >= record.stdoutBytes && next[.stderr]! >= record.stderrBytes {
                    let end = Components.Schemas.Event(_type: .end, job: .init(record, sandbox: sandbox))
                    try await emit(Array(try encoder.encode(end)) + [0x0A])
                    return
                }
                continue  // more output to send first
            }
            await runner.change(of: jobID, since: version)
            if await runner.version(of: jobID) == version, (try store.job(jobID))?.state.isFinal == false {
                try await Task.sleep(for: .milliseconds(100))  // not the runner's (yet): look again shortly
            }
        }
    }
}
