import Foundation
import VMExecService
import VMExecutor

// Conversions between the core's types and the API's generated ones. The
// API speaks seconds, octal mode strings and named streams; the core speaks
// nanoseconds, mode bits and enums.

extension Components.Schemas.Sandbox {
    init(_ s: SandboxStatus) {
        let spec = s.record.spec
        self.init(
            name: s.record.name, state: .init(rawValue: s.state.rawValue) ?? .failed, shards: spec.shards,
            store: spec.store, memoryMiB: spec.memoryMiB, cpus: spec.cpus,
            limits: spec.limits.map(Components.Schemas.Limits.init),
            network: spec.network, concurrency: spec.concurrency, idleTimeoutSeconds: spec.idleTimeoutSeconds,
            lifetimeSeconds: spec.lifetimeSeconds, created: s.record.created, jobsQueued: s.jobsQueued,
            jobsRunning: s.jobsRunning, lastError: s.lastError, host: s.record.host ?? HostSpec.local.name,
            hostname: spec.hostname, entrypoint: spec.entrypoint,
            mounts: spec.folders.map { $0.map { .init(host: $0.host, guest: $0.guest, mode: .init(rawValue: $0.mode)) } })
    }
}

extension Components.Schemas.Host {
    init(_ h: HostStatus) {
        self.init(
            name: h.name, uri: h.uri, up: h.up, reason: h.reason, guests: h.guests,
            maxGuests: h.maxGuests > 0 ? h.maxGuests : nil, guestMemoryMiB: h.guestMemoryMiB, freeMemoryMiB: h.freeMemoryMiB)
    }
}

extension Components.Schemas.Limits {
    init(_ l: Limits) {
        self.init(
            memoryBytes: l.memoryBytes.map(Int.init), processes: l.processes.map(Int.init),
            openFiles: l.openFiles.map(Int.init), cpuSeconds: l.cpuSeconds.map(Int.init),
            stdinBytes: l.stdinBytes.map(Int.init), tmpBytes: l.tmpBytes.map(Int.init))
    }

    /// The core's limits, each checked against the spec's bounds (the generated code checks types, not ranges).
    func limits() throws -> Limits {
        func check(_ value: Int?, _ name: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let value else { return nil }
            guard range.contains(value) else {
                throw VMExecError(.invalidRequest, "limits.\(name) must be \(range.lowerBound)-\(range.upperBound), not \(value)")
            }
            return value
        }
        return Limits(
            memoryBytes: try check(memoryBytes, "memoryBytes", 1 << 20...1 << 40).map(UInt64.init),
            processes: try check(processes, "processes", 1...65536).map(UInt32.init),
            openFiles: try check(openFiles, "openFiles", 16...1 << 20).map(UInt32.init),
            cpuSeconds: try check(cpuSeconds, "cpuSeconds", 1...31_536_000).map(UInt32.init),
            stdinBytes: try check(stdinBytes, "stdinBytes", 0...1 << 40).map(UInt64.init),
            tmpBytes: try check(tmpBytes, "tmpBytes", 1 << 20...1 << 40).map(UInt64.init))
    }
}

extension Components.Schemas.Job {
    /// `callbacks`: a running Python job's callbacks waiting for an answer (the runner's, not the store's).
    init(_ r: JobRecord, sandbox: String, callbacks: [PendingCallback] = []) {
        self.init(
            id: r.id, sandbox: sandbox, state: .init(rawValue: r.state.rawValue) ?? .failed, argv: r.request.arguments,
            created: r.created, started: r.started, ended: r.ended, exit: r.outcome.map(Components.Schemas.Exit.init),
            reason: r.reason, failureCode: r.failureCode, stdout: .init(bytes: r.stdoutBytes, truncated: r.stdoutTruncated),
            stderr: .init(bytes: r.stderrBytes, truncated: r.stderrTruncated),
            code: r.code.map(Components.Schemas.CodeOutcome.init),
            callbacks: r.request.code == nil ? nil : callbacks.map(Components.Schemas.PendingCallback.init))
    }
}

extension Components.Schemas.PendingCallback {
    init(_ c: PendingCallback) {
        self.init(id: c.id, name: c.name, args: c.arguments, kwargs: c.keywordArguments, since: c.since)
    }
}

extension Components.Schemas.CodeOutcome {
    init(_ o: CodeOutcome) {
        func value(_ v: PythonValue) -> Components.Schemas.PythonValue { .init(repr: v.repr, json: v.json) }
        func error(_ e: PythonException) -> Components.Schemas.PythonException {
            .init(_type: e.type, message: e.message, traceback: e.traceback)
        }
        self.init(
            value: o.value.map(value), exception: o.exception.map(error),
            steps: o.steps.map { .init(line: $0.line, variables: .init(additionalProperties: $0.variables.mapValues(value))) },
            ignoredErrors: o.ignoredErrors.map { .init(line: $0.line, error: error($0.error)) },
            loopLimits: o.loopLimits.map { .init(line: $0.line, limit: $0.limit) },
            watched: .init(additionalProperties: o.watched.mapValues(value)),
            shared: .init(additionalProperties: o.shared.mapValues(value)),
            outputs: o.outputs.map { .init(mimeType: $0.mimeType, data: Data($0.data).base64EncodedString()) },
            dropped: .init(additionalProperties: o.dropped))
    }
}

extension PythonControl {
    /// The API's control object; absent: no control.
    init(_ c: Components.Schemas.PythonControl?) throws {
        self.init()
        guard let c else { return }
        if let seconds = c.timeLimitSeconds {
            guard seconds > 0, seconds <= 31_536_000 else {
                throw VMExecError(.invalidRequest, "timeLimitSeconds must be more than 0 and at most a year")
            }
            timeLimit = .milliseconds(Int64((seconds * 1000).rounded(.up)))
        }
        maxOuterLoopIterations = c.maxOuterLoops
        maxInnerLoopIterations = c.maxInnerLoops
        onLoopLimit = c.onLoopLimit.flatMap { LoopLimitAction(rawValue: $0.rawValue) } ?? .raise
        loopFrequency = c.loopHz
        trace = c.trace ?? false
        watch = c.watch ?? []
        traceLimit = c.traceLimit ?? 10_000
        onError = c.onError.flatMap { ErrorPolicy(rawValue: $0.rawValue) } ?? .raise
        restricted = c.restricted ?? false
        allowedModules = c.allowModules ?? []
        allowedBuiltins = c.allowBuiltins ?? []
    }
}

extension Components.Schemas.Exit {
    init(_ o: JobOutcome) {
        self.init(
            termination: .init(rawValue: o.termination) ?? .exited, exitCode: Int(o.exitCode),
            wallSeconds: Double(o.wallNanoseconds) / 1e9, userSeconds: Double(o.userMicroseconds) / 1e6,
            systemSeconds: Double(o.systemMicroseconds) / 1e6, maxRssKiB: Int(o.maxRSSKiB))
    }
}

/// How a page's bytes travel in JSON.
enum PageEncoding: String {
    case text, base64

    /// The encoding a request asked for (text when it did not say).
    init(_ asked: Components.Schemas.Encoding?) { self = asked == .base64 ? .base64 : .text }

    /// The bytes of `page` this encoding sends: all of them for base64; for
    /// text, up to the last whole UTF-8 character unless the stream ends here
    /// (the next page starts at the cut, so no character is split).
    func encode(_ bytes: [UInt8], final: Bool) -> (data: String, used: Int) {
        switch self {
        case .base64: return (Data(bytes).base64EncodedString(), bytes.count)
        case .text:
            let used = final ? bytes.count : Self.wholeCharacters(bytes)
            return (String(decoding: bytes[..<used], as: UTF8.self), used)
        }
    }

    /// Bytes up to the end of the last complete UTF-8 sequence (all of them if
    /// cutting would leave nothing, or if the tail is not the start of a valid sequence).
    static func wholeCharacters(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        var i = n - 1
        var back = 0
        while i >= 0 && back < 4 && bytes[i] & 0xC0 == 0x80 {
            i -= 1
            back += 1
        }
        guard i >= 0, back < 4 else { return n }
        let lead = bytes[i]
        let needed = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
        return back + 1 >= needed || i == 0 ? n : i
    }
}

extension Components.Schemas.OutputPage {
    init(_ page: OutputPage, stream: JobStream, encoding: PageEncoding) {
        let (data, used) = encoding.encode(page.bytes, final: page.complete)
        let next = page.offset + used
        self.init(
            stream: stream == .stdout ? .stdout : .stderr, offset: page.offset, nextOffset: next,
            complete: page.complete && used == page.bytes.count, encoding: encoding == .base64 ? .base64 : .text,
            data: data)
    }
}

extension Components.Schemas.FileEntry {
    init(_ e: FileEntry, path: String) {
        let kind: Components.Schemas.FileEntry._TypePayload =
            switch e.kind {
            case .regular: .file
            case .directory: .directory
            case .symlink: .symlink
            case .fifo: .fifo
            case .socket: .socket
            case .characterDevice: .characterDevice
            case .blockDevice: .blockDevice
            case .unknown: .unknown
            }
        self.init(
            path: path, name: e.name.isEmpty ? (path as NSString).lastPathComponent : e.name, _type: kind,
            size: Int(e.size), mode: String(e.permissions, radix: 8), uid: Int(e.uid), gid: Int(e.gid),
            modified: Date(timeIntervalSince1970: Double(e.modifiedNanoseconds) / 1e9),
            linkTarget: e.linkTarget.isEmpty ? nil : e.linkTarget)
    }
}

extension Components.Schemas.Process {
    init(_ p: ProcessEntry) {
        self.init(
            pid: Int(p.pid), ppid: Int(p.parentPID), pgid: Int(p.processGroup), uid: Int(p.uid), state: p.state,
            cpuSeconds: Double(p.cpuMicroseconds) / 1e6, rssKiB: Int(p.residentKiB), argv: p.arguments)
    }
}
