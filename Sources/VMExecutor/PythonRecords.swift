import Foundation

/// The runner's JSON-line records, read from its stdout as they come.
struct PythonRecords {
    enum Record: Equatable {
        case stdout([UInt8])
        case stderr([UInt8])
        case step(PythonStep)
        case ignoredError(PythonIgnoredError)
        case loopLimit(PythonLoopLimit)
        case output(PythonOutput)
        /// The code called a host function and waits for the answer.
        case callback(Callback)
        /// A worker loaded its code (nil), or could not (why).
        case ready(PythonException?)
        case result(Ending)
    }

    /// A host function's call: its arguments kept as the JSON text the code sent.
    struct Callback: Equatable {
        var id: Int
        var name: String
        var arguments: String
        var keywordArguments: String
    }

    /// A result record's fields.
    struct Ending: Equatable, Decodable {
        var value: PythonValue?
        var error: PythonException?
        var watched: [String: PythonValue]?
        var shared: [String: PythonValue]?
        var dropped: [String: Int]?
        /// A worker's call: its id and what it used.
        var id: Int?
        var usage: CallUsage?
        /// "warm": forked from the zygote; "cold" (or absent, an older runner): started for the job.
        var start: String?

        init(
            value: PythonValue? = nil, error: PythonException? = nil, watched: [String: PythonValue]? = nil,
            shared: [String: PythonValue]? = nil, dropped: [String: Int]? = nil, id: Int? = nil, usage: CallUsage? = nil
        ) {
            self.value = value
            self.error = error
            self.watched = watched
            self.shared = shared
            self.dropped = dropped
            self.id = id
            self.usage = usage
        }
    }

    struct CallUsage: Equatable, Decodable {
        var wall_ns: UInt64
        var user_us: UInt64
        var system_us: UInt64
        var max_rss_kib: UInt64
        var usage: Usage {
            Usage(wallNanoseconds: wall_ns, userMicroseconds: user_us, systemMicroseconds: system_us, maxRSSKiB: max_rss_kib)
        }
    }

    private var pending: [UInt8] = []
    /// Where the unread part of `pending` starts (lines are taken without moving the rest each time).
    private var start = 0
    /// Longest record line taken. The code runs in the runner's process and can write to the
    /// record channel itself; a line without end must not grow the host's memory without bound.
    static let maxLine = 32 << 20
    /// The last result record, once it came.
    private(set) var result: Ending?

    private struct Line: Decodable {
        var type: String
        var data: String?
        var line: Int?
        var vars: [String: PythonValue]?
        var limit: Int?
        var error: PythonException?
        var mime: String?
    }

    /// The records completed by `bytes`.
    mutating func take(_ bytes: [UInt8]) throws -> [Record] {
        var records: [Record] = []
        var searchFrom = pending.count  // only new bytes can end a line
        pending += bytes
        while let newline = pending[searchFrom...].firstIndex(of: UInt8(ascii: "\n")) {
            let line = pending[start..<newline]
            start = newline + 1
            searchFrom = start
            if let record = try Self.record(line) {
                if case .result(let ending) = record { result = ending }
                records.append(record)
            }
        }
        pending.removeFirst(start)
        start = 0
        if pending.count > Self.maxLine {
            pending.removeAll()
            throw VMExecError(
                .protocolError,
                "the Python runner wrote a record line longer than \(Self.maxLine >> 20) MiB; the job's output is not trusted")
        }
        return records
    }

    private static func record(_ line: ArraySlice<UInt8>) throws -> Record? {
        let decoder = JSONDecoder()
        let kind: Line
        do {
            kind = try decoder.decode(Line.self, from: Data(line))
        } catch {
            throw VMExecError(
                .protocolError,
                "the Python runner wrote a line that is not a record: \(String(decoding: line.prefix(200), as: UTF8.self))")
        }
        func need<T>(_ value: T?) throws -> T {
            guard let value else {
                throw VMExecError(
                    .protocolError,
                    "the Python runner wrote a \(kind.type) record without its fields: \(String(decoding: line.prefix(200), as: UTF8.self))"
                )
            }
            return value
        }
        switch kind.type {
        case "stdout", "stderr":
            let data = Array(Data(base64Encoded: kind.data ?? "") ?? Data())
            return kind.type == "stdout" ? .stdout(data) : .stderr(data)
        case "step":
            return .step(PythonStep(line: try need(kind.line), variables: kind.vars ?? [:]))
        case "ignored":
            return .ignoredError(PythonIgnoredError(line: try need(kind.line), error: try need(kind.error)))
        case "loop_limit":
            return .loopLimit(PythonLoopLimit(line: try need(kind.line), limit: try need(kind.limit)))
        case "ready":
            return .ready(kind.error)
        case "output":
            guard let data = Data(base64Encoded: kind.data ?? "") else {
                throw VMExecError(.protocolError, "the Python runner wrote an output record whose data is not base64")
            }
            return .output(PythonOutput(mimeType: try need(kind.mime), data: Array(data)))
        case "callback":
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                let id = object["id"] as? Int, let name = object["name"] as? String,
                let arguments = object["args"] as? [Any], let keywordArguments = object["kwargs"] as? [String: Any],
                let argumentsText = try? JSONSerialization.data(withJSONObject: arguments, options: .fragmentsAllowed),
                let keywordText = try? JSONSerialization.data(withJSONObject: keywordArguments)
            else {
                throw VMExecError(
                    .protocolError,
                    "the Python runner wrote a callback record without its fields: \(String(decoding: line.prefix(200), as: UTF8.self))"
                )
            }
            return .callback(
                Callback(
                    id: id, name: name, arguments: String(decoding: argumentsText, as: UTF8.self),
                    keywordArguments: String(decoding: keywordText, as: UTF8.self)))
        case "result":
            do {
                return .result(try decoder.decode(Ending.self, from: Data(line)))
            } catch {
                throw VMExecError(.protocolError, "the Python runner wrote a result record that does not parse: \(error)")
            }
        default:
            return nil  // a record of a newer runner: skipped
        }
    }
}

/// A job's result as its records come: each stream kept up to the output limit, each kind of
/// report up to its cap (the events carry everything).
struct PythonResultParts {
    let outputLimit: Int
    var stdout: [UInt8] = []
    var stderr: [UInt8] = []
    var stdoutTruncated = false
    var stderrTruncated = false
    var steps: [PythonStep] = []
    var ignoredErrors: [PythonIgnoredError] = []
    var loopLimits: [PythonLoopLimit] = []
    var outputs: [PythonOutput] = []
    private var outputBytes = 0
    /// Reports kept at most, per kind: a forged record stream must not grow the host's memory.
    static let reportCap = 10_000
    /// Outputs kept at most (their bytes count against the output limit too).
    static let outputCap = 100

    init(outputLimit: Int) { self.outputLimit = outputLimit }

    /// Keeps what a record brings; the event to pass on, if any.
    mutating func add(_ record: PythonRecords.Record) -> PythonEvent? {
        switch record {
        case .stdout(let b):
            Self.keep(b, in: &stdout, truncated: &stdoutTruncated, limit: outputLimit)
            return .stdout(b)
        case .stderr(let b):
            Self.keep(b, in: &stderr, truncated: &stderrTruncated, limit: outputLimit)
            return .stderr(b)
        case .step(let s):
            if steps.count < Self.reportCap { steps.append(s) }
            return .step(s)
        case .ignoredError(let e):
            if ignoredErrors.count < Self.reportCap { ignoredErrors.append(e) }
            return .ignoredError(e)
        case .loopLimit(let l):
            if loopLimits.count < Self.reportCap { loopLimits.append(l) }
            return .loopLimit(l)
        case .output(let o):
            if outputs.count < Self.outputCap, outputBytes + o.data.count <= outputLimit {
                outputs.append(o)
                outputBytes += o.data.count
            }
            return .output(o)
        case .ready, .result, .callback:
            return nil
        }
    }

    static func keep(_ bytes: [UInt8], in kept: inout [UInt8], truncated: inout Bool, limit: Int) {
        let room = max(0, limit - kept.count)
        if bytes.count > room { truncated = true }
        kept += bytes.prefix(room)
    }

    /// The result, with the result record's fields and how the process (or call) ended.
    func result(_ ending: PythonRecords.Ending?, termination: Termination, usage: Usage) -> PythonResult {
        PythonResult(
            stdout: stdout, stderr: stderr, stdoutTruncated: stdoutTruncated, stderrTruncated: stderrTruncated,
            value: ending?.value, exception: ending?.error, steps: steps, ignoredErrors: ignoredErrors,
            loopLimits: loopLimits, watched: ending?.watched ?? [:], shared: ending?.shared ?? [:], outputs: outputs,
            dropped: ending?.dropped ?? [:],
            termination: termination, usage: usage, warmStart: ending?.start == "warm")
    }
}
