import Foundation
import GRDB
import VMExecutor

/// Every job and its output, in one SQLite file (through GRDB), so that a
/// daemon restart loses nothing: a job is written before it runs, its
/// output as it arrives (each stream capped, the cut recorded), its end
/// once. ``recover()`` settles what a stopped daemon left behind.
///
/// Writes go through one `DatabaseQueue` (serialised, WAL journal); every
/// method is safe to call from any task.
public final class JobStore: Sendable {
    private let db: DatabaseQueue

    /// Opens (creating if needed) the store at `path`; `nil` keeps it in memory (tests).
    public init(path: String?) throws {
        do {
            var config = Configuration()
            config.busyMode = .timeout(10)
            if let path {
                try FileManager.default.createDirectory(
                    atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true,
                    attributes: [.posixPermissions: 0o700])
                db = try DatabaseQueue(path: path, configuration: config)
                // WAL with synchronous=NORMAL: a commit survives the daemon's crash (SIGKILL
                // included); only a power loss may undo the last ones. FULL fsyncs every
                // commit, several per job.
                try db.writeWithoutTransaction {
                    try $0.execute(sql: "PRAGMA journal_mode = WAL")
                    try $0.execute(sql: "PRAGMA synchronous = NORMAL")
                }
            } else {
                db = try DatabaseQueue(configuration: config)
            }
            try Self.migrator.migrate(db)
        } catch {
            throw Self.failure("open the job store at \(path ?? "memory")", error)
        }
    }

    private static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE job (
                        id TEXT PRIMARY KEY, sandbox TEXT NOT NULL, seq INTEGER NOT NULL,
                        request TEXT NOT NULL, outputLimit INTEGER NOT NULL, state TEXT NOT NULL, outcome TEXT, reason TEXT,
                        created REAL NOT NULL, started REAL, ended REAL,
                        stdoutBytes INTEGER NOT NULL DEFAULT 0, stderrBytes INTEGER NOT NULL DEFAULT 0,
                        stdoutTruncated INTEGER NOT NULL DEFAULT 0, stderrTruncated INTEGER NOT NULL DEFAULT 0);
                    CREATE INDEX job_by_sandbox ON job(sandbox, seq);
                    CREATE TABLE output (
                        job TEXT NOT NULL REFERENCES job(id) ON DELETE CASCADE, stream INTEGER NOT NULL,
                        offset INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (job, stream, offset));
                    """)
        }
        m.registerMigration("v2-sandboxes") { db in
            try db.execute(
                sql: """
                    CREATE TABLE sandbox (
                        id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
                        created REAL NOT NULL, UNIQUE (owner, name));
                    """)
        }
        m.registerMigration("v3-failure-code") { db in
            try db.execute(sql: "ALTER TABLE job ADD COLUMN failureCode TEXT")
        }
        m.registerMigration("v4-code-outcome") { db in
            try db.execute(sql: "ALTER TABLE job ADD COLUMN code TEXT")
        }
        m.registerMigration("v5-sandbox-host") { db in
            try db.execute(sql: "ALTER TABLE sandbox ADD COLUMN host TEXT")
        }
        return m
    }

    // MARK: sandboxes

    /// Records a new sandbox; a name its owner already uses is refused.
    public func insertSandbox(_ record: SandboxRecord) throws {
        try write("record sandbox \(record.name)") { db in
            if try Bool.fetchOne(
                db, sql: "SELECT 1 FROM sandbox WHERE owner = ? AND name = ?", arguments: [record.owner, record.name])
                ?? false
            {
                throw VMExecError(
                    .alreadyExists, "a sandbox named \(record.name) exists already; choose another name or delete it first")
            }
            try db.execute(
                sql: "INSERT INTO sandbox (id, owner, name, spec, created, host) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [
                    record.id, record.owner, record.name, try Self.json(record.spec), record.created.timeIntervalSince1970,
                    record.host,
                ])
        }
    }

    /// Records a sandbox's changed spec (a shard attached or detached), for the next daemon.
    public func updateSandbox(_ id: String, spec: SandboxSpec) throws {
        try write("update sandbox \(id)") { db in
            try db.execute(sql: "UPDATE sandbox SET spec = ? WHERE id = ?", arguments: [try Self.json(spec), id])
        }
    }

    /// Every sandbox, oldest first.
    public func sandboxes() throws -> [SandboxRecord] {
        try read("read the sandboxes") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM sandbox ORDER BY created").map { row in
                SandboxRecord(
                    id: row["id"], owner: row["owner"], name: row["name"],
                    spec: try Self.decode(SandboxSpec.self, row["spec"]),
                    created: Date(timeIntervalSince1970: row["created"]), host: row["host"])
            }
        }
    }

    /// Forgets a sandbox and its jobs with their output.
    public func deleteSandbox(_ id: String) throws {
        try write("delete sandbox \(id)") { db in
            try db.execute(sql: "DELETE FROM output WHERE job IN (SELECT id FROM job WHERE sandbox = ?)", arguments: [id])
            try db.execute(sql: "DELETE FROM job WHERE sandbox = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM sandbox WHERE id = ?", arguments: [id])
        }
    }

    // MARK: jobs

    /// Records a new queued job for `sandbox`; returns it.
    public func submit(_ request: JobRequest, sandbox: String) throws -> JobRecord {
        let record = JobRecord(
            id: UUID().uuidString.lowercased(), sandbox: sandbox, request: request, state: .queued, outcome: nil,
            reason: nil, failureCode: nil, created: Date(), started: nil, ended: nil, stdoutBytes: 0, stderrBytes: 0,
            stdoutTruncated: false, stderrTruncated: false, code: nil)
        try write("record a job") { db in
            let seq = try Int.fetchOne(db, sql: "SELECT COALESCE(MAX(seq), 0) + 1 FROM job") ?? 1
            try db.execute(
                sql: "INSERT INTO job (id, sandbox, seq, request, outputLimit, state, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                arguments: [
                    record.id, sandbox, seq, try Self.json(request), max(0, request.outputLimit), record.state.rawValue,
                    record.created.timeIntervalSince1970,
                ])
        }
        return record
    }

    /// Marks a queued job running; false when it is no longer queued (cancelled meanwhile).
    public func start(_ id: String) throws -> Bool {
        try write("start job \(id)") { db in
            try db.execute(
                sql: "UPDATE job SET state = 'running', started = ? WHERE id = ? AND state = 'queued'",
                arguments: [Date().timeIntervalSince1970, id])
            return db.changesCount == 1
        }
    }

    /// Keeps `bytes` of a running job's `stream`, up to the job's output
    /// limit; the part past it is dropped and the job marked truncated.
    public func append(_ bytes: [UInt8], to stream: JobStream, of id: String) throws {
        guard !bytes.isEmpty else { return }
        let column = stream == .stdout ? "stdout" : "stderr"
        try write("keep output of job \(id)") { db in
            guard
                let row = try Row.fetchOne(
                    db, sql: "SELECT outputLimit, \(column)Bytes AS kept FROM job WHERE id = ? AND state = 'running'",
                    arguments: [id])
            else { return }
            let limit: Int = row["outputLimit"]
            let kept: Int = row["kept"]
            let room = max(0, limit - kept)
            let take = bytes.prefix(room)
            if !take.isEmpty {
                try db.execute(
                    sql: "INSERT INTO output (job, stream, offset, data) VALUES (?, ?, ?, ?)",
                    arguments: [id, stream.rawValue, kept, Data(take)])
            }
            try db.execute(
                sql: """
                    UPDATE job SET \(column)Bytes = \(column)Bytes + ?,
                    \(column)Truncated = \(column)Truncated OR ? WHERE id = ?
                    """,
                arguments: [take.count, take.count < bytes.count, id])
        }
    }

    /// Ends a job once: `exited` with its outcome, or `failed`/`cancelled`
    /// with a reason. A job already ended stays as it ended (false).
    @discardableResult
    public func finish(
        _ id: String, state: JobState, outcome: JobOutcome? = nil, reason: String? = nil, failureCode: String? = nil,
        code: CodeOutcome? = nil
    ) throws -> Bool {
        precondition(state.isFinal, "finish takes a final state")
        return try write("end job \(id)") { db in
            try db.execute(
                sql: """
                    UPDATE job SET state = ?, outcome = ?, reason = ?, failureCode = ?, ended = ?, code = ?
                    WHERE id = ? AND state IN ('queued', 'running')
                    """,
                arguments: [
                    state.rawValue, try outcome.map { try Self.json($0) }, reason, failureCode,
                    Date().timeIntervalSince1970, try code.map { try Self.json($0) }, id,
                ])
            return db.changesCount == 1
        }
    }

    /// The job, or nil.
    public func job(_ id: String) throws -> JobRecord? {
        try read("read job \(id)") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM job WHERE id = ?", arguments: [id]).map(Self.record)
        }
    }

    /// A sandbox's jobs, oldest first.
    public func jobs(sandbox: String) throws -> [JobRecord] {
        try read("list the jobs of \(sandbox)") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM job WHERE sandbox = ? ORDER BY seq", arguments: [sandbox])
                .map(Self.record)
        }
    }

    /// Up to `limit` bytes of a stream from `offset`, also while the job runs.
    public func output(_ id: String, stream: JobStream, offset: Int, limit: Int) throws -> OutputPage {
        try read("read the output of job \(id)") { db in
            guard let job = try Row.fetchOne(db, sql: "SELECT * FROM job WHERE id = ?", arguments: [id]).map(Self.record)
            else { throw VMExecError(.notFound, "no job \(id); list the sandbox's jobs for their ids") }
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT offset, data FROM output WHERE job = ? AND stream = ? AND offset + length(data) > ?
                    ORDER BY offset
                    """,
                arguments: [id, stream.rawValue, offset])
            var bytes: [UInt8] = []
            for row in rows where bytes.count < limit {
                let start: Int = row["offset"]
                let data: Data = row["data"]
                let from = max(0, offset - start)
                bytes += data.dropFirst(from).prefix(limit - bytes.count)
            }
            let total = stream == .stdout ? job.stdoutBytes : job.stderrBytes
            let next = min(total, offset + bytes.count)
            return OutputPage(offset: offset, bytes: bytes, nextOffset: next, complete: job.state.isFinal && next >= total)
        }
    }

    /// After a restart: jobs that were running when the daemon stopped are
    /// failed with that reason (they are never run again: they may have had
    /// effects); the queued ones are returned, oldest first, to run now.
    public func recover() throws -> [JobRecord] {
        try write("recover the jobs of a stopped daemon") { db in
            try db.execute(
                sql:
                    "UPDATE job SET state = 'failed', reason = ?, failureCode = 'daemonStopped', ended = ? WHERE state = 'running'",
                arguments: [
                    "the daemon stopped while the job ran; it was not run again",
                    Date().timeIntervalSince1970,
                ])
            return try Row.fetchAll(db, sql: "SELECT * FROM job WHERE state = 'queued' ORDER BY seq").map(Self.record)
        }
    }

    /// Removes ended jobs older than `age` and, per sandbox, all but the newest `keep` ended ones.
    public func prune(olderThan age: TimeInterval, keepPerSandbox keep: Int) throws {
        try write("prune old jobs") { db in
            try db.execute(sql: "PRAGMA foreign_keys = ON")
            try db.execute(
                sql: "DELETE FROM job WHERE state NOT IN ('queued', 'running') AND ended < ?",
                arguments: [Date().timeIntervalSince1970 - age])
            try db.execute(
                sql: """
                    DELETE FROM job WHERE state NOT IN ('queued', 'running') AND id NOT IN (
                        SELECT id FROM job AS j WHERE j.sandbox = job.sandbox AND j.state NOT IN ('queued', 'running')
                        ORDER BY seq DESC LIMIT ?)
                    """,
                arguments: [keep])
            try db.execute(sql: "DELETE FROM output WHERE job NOT IN (SELECT id FROM job)")
        }
    }

    // MARK: plumbing

    private static func record(_ row: Row) throws -> JobRecord {
        JobRecord(
            id: row["id"], sandbox: row["sandbox"], request: try decode(JobRequest.self, row["request"]),
            state: JobState(rawValue: row["state"]) ?? .failed,
            outcome: try (row["outcome"] as String?).map { try decode(JobOutcome.self, $0) }, reason: row["reason"],
            failureCode: row["failureCode"],
            created: Date(timeIntervalSince1970: row["created"]),
            started: (row["started"] as Double?).map(Date.init(timeIntervalSince1970:)),
            ended: (row["ended"] as Double?).map(Date.init(timeIntervalSince1970:)),
            stdoutBytes: row["stdoutBytes"], stderrBytes: row["stderrBytes"],
            stdoutTruncated: row["stdoutTruncated"], stderrTruncated: row["stderrTruncated"],
            code: try (row["code"] as String?).map { try decode(CodeOutcome.self, $0) })
    }

    private static func json<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
    }

    private static func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(text.utf8))
    }

    private func write<T>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        do { return try db.write(body) } catch let e as VMExecError { throw e } catch { throw Self.failure(what, error) }
    }

    private func read<T>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        do { return try db.read(body) } catch let e as VMExecError { throw e } catch { throw Self.failure(what, error) }
    }

    private static func failure(_ what: String, _ error: any Error) -> VMExecError {
        VMExecError(
            .stateFailed, "cannot \(what): \(error); check the daemon's state directory (disk full? permissions?)",
            cause: error)
    }
}
