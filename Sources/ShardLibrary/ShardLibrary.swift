import Foundation
import GRDB
import Logging
import SquashMounts

/// The host's shard library: a folder holding every installed version of every
/// shard, which version of each name is active, the keys it trusts, and a log of
/// every change and who made it.
///
/// ```
/// DIR/library.sqlite            versions, activations, trusted keys, policy, log (GRDB, WAL)
/// DIR/shards/NAME/VERSION.shard the files, read-only
/// DIR/incoming/                 copies being checked before they are installed
/// ```
///
/// The CLI and the daemon open the same folder; SQLite serialises their changes.
/// A version's content never changes: installing it again with other bytes is
/// refused. A running sandbox holds a shared `flock` on each file it uses
/// (``ShardLease``), so `remove` and `gc` never take a file from under a guest.
public final class ShardLibrary: Sendable {
    public let directory: URL
    /// The keys and policy that decide what may be installed and attached.
    public let trust: TrustStore
    let db: DatabaseQueue
    let logger: Logger

    /// One installed version, as `list` shows it.
    public struct Version: Sendable, Codable, Equatable {
        public var name: String
        public var version: String
        public var kind: ShardManifest.Kind
        public var architecture: String
        public var sha256: String
        public var path: String
        /// The trusted key that signed it when it was installed (fingerprint and name), if any.
        public var signer: String?
        public var installed: Date
        public var installedBy: String
        public var active: Bool
        public var manifest: ShardManifest
    }

    /// What `install` did.
    public struct Installation: Sendable, Codable {
        public var version: Version
        /// False when this exact shard was installed already.
        public var added: Bool
        /// The version active before, when the install activated another.
        public var replaced: String?
    }

    /// The library's folder: `$VMEXEC_LIBRARY`, else `library` in vmexec's state folder.
    public static func defaultDirectory(state: URL) -> URL {
        if let d = ProcessInfo.processInfo.environment["VMEXEC_LIBRARY"], !d.isEmpty { return URL(fileURLWithPath: d) }
        return state.appendingPathComponent("library")
    }

    /// Opens (creating if needed) the library at `directory`.
    public init(directory: URL, logger: Logger = Logger(label: "vmexec.library")) throws {
        self.directory = directory
        self.logger = logger
        do {
            for sub in ["", "shards", "incoming"] {
                try FileManager.default.createDirectory(
                    at: directory.appendingPathComponent(sub), withIntermediateDirectories: true,
                    attributes: [.posixPermissions: 0o700])
            }
            var config = Configuration()
            config.busyMode = .timeout(10)
            db = try DatabaseQueue(path: directory.appendingPathComponent("library.sqlite").path, configuration: config)
            try db.writeWithoutTransaction { try $0.execute(sql: "PRAGMA journal_mode = WAL") }
            try LibrarySchema.migrator.migrate(db)
        } catch {
            throw ShardError(.io, "opening the shard library at \(directory.path): \(error)")
        }
        trust = TrustStore(db: db)
    }

    // MARK: install

    /// Installs the shard file at `path`: checked against the trust store, copied
    /// into the library, the copy verified in full and checked again (so what is
    /// checked is what is kept), then recorded; with `activate`, made the active
    /// version of its name.
    public func install(_ path: String, activate: Bool = true, by user: String) throws -> Installation {
        let source = try Shard.open(path)
        _ = try trust.admit(source)
        let m = source.manifest
        if let existing = try version(m.name, m.version) {
            guard existing.sha256 == m.image?.sha256 else {
                throw ShardError(
                    .exists,
                    "\(m.name) \(m.version) is installed already with other content (sha256 \(existing.sha256)); a version never changes: give the new build a new version"
                )
            }
            var replaced: String?
            if activate && !existing.active { replaced = try self.activate(m.name, m.version, by: user) }
            return Installation(version: try version(m.name, m.version) ?? existing, added: false, replaced: replaced)
        }
        let incoming = directory.appendingPathComponent(
            "incoming/\(m.name)-\(m.version).\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        ).path
        defer { unlink(incoming) }
        try ShardFileCopy.copy(path, to: incoming)
        let copy = try Shard.open(incoming)
        guard copy.manifestSHA256 == source.manifestSHA256 else {
            throw ShardError(.checksumMismatch, "\(path) changed while it was being installed; install it again")
        }
        try copy.verify(deep: true)
        let admission = try trust.admit(copy)
        chmod(incoming, 0o444)
        let folder = directory.appendingPathComponent("shards/\(m.name)")
        let final = folder.appendingPathComponent("\(m.version).shard").path
        return try write { db in
            // Checked again inside the transaction: another install of the same version may have won.
            if try Row.fetchOne(
                db, sql: "SELECT 1 FROM shardVersion WHERE name = ? AND version = ?", arguments: [m.name, m.version]) != nil
            {
                throw ShardError(.exists, "\(m.name) \(m.version) was installed by someone else meanwhile; list the library")
            }
            try FileManager.default.createDirectory(
                at: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            guard rename(incoming, final) == 0 else {
                throw ShardError(.io, "moving the shard into \(final): \(String(cString: strerror(errno)))")
            }
            let signer = admission.signer.map { "\($0.fingerprint) \($0.name)" }
            try db.execute(
                sql: """
                    INSERT INTO shardVersion (name, version, kind, architecture, sha256, file, signer, installed, installedBy, manifest)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    m.name, m.version, m.kind.rawValue, m.architecture, m.image?.sha256 ?? "",
                    "shards/\(m.name)/\(m.version).shard", signer, Date().timeIntervalSince1970, user,
                    String(decoding: try JSONEncoder().encode(m), as: UTF8.self),
                ])
            try LibraryLog.record(
                db, by: user, action: "install", name: m.name, version: m.version,
                detail: signer.map { "signed by \($0)" } ?? "unsigned")
            var replaced: String?
            let current = try Self.activeVersion(db, m.name)
            if activate || current == nil {
                replaced = current
                try Self.setActive(db, m.name, m.version, by: user, action: "activate")
            }
            logger.notice(
                "installed shard \(m.name) \(m.version)",
                metadata: ["by": "\(user)", "signer": "\(signer ?? "none")", "active": "\(activate || current == nil)"])
            return Installation(
                version: try Self.versions(db, name: m.name, version: m.version, in: directory)[0], added: true,
                replaced: replaced)
        }
    }

    // MARK: versions

    /// Every installed version, by name, oldest first.
    public func list(name: String? = nil) throws -> [Version] {
        try read { db in try Self.versions(db, name: name, version: nil, in: directory) }
    }

    public func version(_ name: String, _ version: String) throws -> Version? {
        try read { db in try Self.versions(db, name: name, version: version, in: directory).first }
    }

    /// One more than the highest numbered version of `name` ("1" for a new name): programs'
    /// default version, so that each upload is a new one.
    public func nextNumberedVersion(of name: String) throws -> String {
        String((try list(name: name).compactMap { Int($0.version) }.max() ?? 0) + 1)
    }

    /// The active version of each name.
    public func active() throws -> [Version] { try list().filter(\.active) }

    /// Makes `version` the one `--use NAME` takes; returns the version active before.
    /// Sandboxes already running keep the versions they started with.
    @discardableResult
    public func activate(_ name: String, _ version: String, by user: String) throws -> String? {
        try write { db in
            guard try !Self.versions(db, name: name, version: version, in: directory).isEmpty else {
                throw try Self.notInstalled(db, name, version)
            }
            let before = try Self.activeVersion(db, name)
            if before != version { try Self.setActive(db, name, version, by: user, action: "activate") }
            logger.notice("activated shard \(name) \(version)", metadata: ["by": "\(user)", "was": "\(before ?? "none")"])
            return before
        }
    }

    /// Activates the version that was active before the current one (and still is installed).
    @discardableResult
    public func rollback(_ name: String, by user: String) throws -> (from: String, to: String) {
        try write { db in
            guard let current = try Self.activeVersion(db, name) else {
                throw ShardError(.notInstalled, "\(name) has no active version to roll back from")
            }
            guard let previous = try Self.rollbackTarget(db, name, current: current) else {
                throw ShardError(
                    .notInstalled,
                    "\(name) has no earlier version to roll back to (versions active before \(current) were removed, or there were none)"
                )
            }
            try Self.setActive(db, name, previous, by: user, action: "rollback")
            logger.notice("rolled shard \(name) back from \(current) to \(previous)", metadata: ["by": "\(user)"])
            return (current, previous)
        }
    }

    /// Removes one version (not the active one), or every version of `name`.
    /// Refused while a running sandbox uses one of them.
    public func remove(_ name: String, version: String? = nil, by user: String) throws -> [Version] {
        try write { db in
            let doomed = try Self.versions(db, name: name, version: version, in: directory)
            guard !doomed.isEmpty else { throw try Self.notInstalled(db, name, version) }
            if let version, doomed.contains(where: \.active) {
                throw ShardError(
                    .conflict,
                    "\(name) \(version) is the active version; activate another first (`vmexec shard activate \(name) VERSION`), or remove every version with `vmexec shard remove \(name)`"
                )
            }
            try Self.delete(db, doomed, by: user, action: "remove")
            if version == nil { try db.execute(sql: "DELETE FROM activeVersion WHERE name = ?", arguments: [name]) }
            logger.notice("removed shard \(name) \(version ?? "(every version)")", metadata: ["by": "\(user)"])
            return doomed
        }
    }

    /// Removes every version nothing uses: not active, not the one `rollback` would
    /// return to, not held by a running sandbox. Returns what it removed.
    public func gc(by user: String) throws -> [Version] {
        try write { db in
            var doomed: [Version] = []
            for v in try Self.versions(db, name: nil, version: nil, in: directory) where !v.active {
                if let current = try Self.activeVersion(db, v.name),
                    try Self.rollbackTarget(db, v.name, current: current) == v.version
                {
                    continue
                }
                if ShardLease.isHeld(v.path) { continue }
                doomed.append(v)
            }
            try Self.delete(db, doomed, by: user, action: "gc")
            return doomed
        }
    }

    /// The log of changes, newest first.
    public func history(limit: Int = 100) throws -> [LibraryLog.Entry] {
        try read { db in try LibraryLog.entries(db, limit: limit) }
    }

    // MARK: rows

    static func versions(_ db: Database, name: String?, version: String?, in directory: URL) throws -> [Version] {
        var sql = """
            SELECT v.*, (a.version IS NOT NULL) AS isActive FROM shardVersion v
            LEFT JOIN activeVersion a ON a.name = v.name AND a.version = v.version
            """
        var clauses: [String] = []
        var arguments: StatementArguments = []
        if let name {
            clauses.append("v.name = ?")
            arguments += [name]
        }
        if let version {
            clauses.append("v.version = ?")
            arguments += [version]
        }
        if !clauses.isEmpty { sql += " WHERE " + clauses.joined(separator: " AND ") }
        sql += " ORDER BY v.name, v.installed"
        return try Row.fetchAll(db, sql: sql, arguments: arguments).map { row in
            Version(
                name: row["name"], version: row["version"], kind: ShardManifest.Kind(rawValue: row["kind"]) ?? .data,
                architecture: row["architecture"], sha256: row["sha256"],
                path: directory.appendingPathComponent(row["file"] as String).path, signer: row["signer"],
                installed: Date(timeIntervalSince1970: row["installed"]), installedBy: row["installedBy"],
                active: row["isActive"],
                manifest: try JSONDecoder().decode(ShardManifest.self, from: Data((row["manifest"] as String).utf8)))
        }
    }

    static func activeVersion(_ db: Database, _ name: String) throws -> String? {
        try String.fetchOne(db, sql: "SELECT version FROM activeVersion WHERE name = ?", arguments: [name])
    }

    static func setActive(_ db: Database, _ name: String, _ version: String, by user: String, action: String) throws {
        try db.execute(
            sql: "INSERT OR REPLACE INTO activeVersion (name, version) VALUES (?, ?)", arguments: [name, version])
        try db.execute(
            sql: "INSERT INTO activation (name, version, at, by) VALUES (?, ?, ?, ?)",
            arguments: [name, version, Date().timeIntervalSince1970, user])
        try LibraryLog.record(db, by: user, action: action, name: name, version: version, detail: nil)
    }

    /// The version active most recently before `current` that is still installed.
    static func rollbackTarget(_ db: Database, _ name: String, current: String) throws -> String? {
        try String.fetchOne(
            db,
            sql: """
                SELECT a.version FROM activation a JOIN shardVersion v ON v.name = a.name AND v.version = a.version
                WHERE a.name = ? AND a.version != ? ORDER BY a.id DESC LIMIT 1
                """,
            arguments: [name, current])
    }

    /// Deletes files and rows; refused as a whole if a sandbox holds any of the files.
    static func delete(_ db: Database, _ versions: [Version], by user: String, action: String) throws {
        var locks: [ShardLease] = []
        for v in versions {
            guard let lock = try ShardLease.exclusive(v.path) else {
                throw ShardError(
                    .inUse,
                    "\(v.name) \(v.version) is in use by a running sandbox; stop it (or let the daemon's sandbox be deleted) first"
                )
            }
            locks.append(lock)
        }
        for v in versions {
            try db.execute(sql: "DELETE FROM shardVersion WHERE name = ? AND version = ?", arguments: [v.name, v.version])
            try LibraryLog.record(db, by: user, action: action, name: v.name, version: v.version, detail: nil)
        }
        // The files go once the rows are gone for good: a transaction that fails
        // to commit leaves rows and files as they were. The locks, held by the
        // closure, keep sandboxes from taking a version until its file is gone.
        let paths = versions.map(\.path)
        let held = locks
        db.afterNextTransaction { _ in
            for path in paths { unlink(path) }
            _ = held
        }
    }

    static func notInstalled(_ db: Database, _ name: String, _ version: String?) throws -> ShardError {
        let installed = try String.fetchAll(db, sql: "SELECT version FROM shardVersion WHERE name = ?", arguments: [name])
        if installed.isEmpty {
            let names = try String.fetchAll(db, sql: "SELECT DISTINCT name FROM shardVersion ORDER BY name")
            return ShardError(
                .notInstalled,
                "no shard named \(name) is installed in the library\(names.isEmpty ? " (it is empty)" : "; installed: \(names.joined(separator: ", "))"); install it with `vmexec shard install FILE`"
            )
        }
        return ShardError(
            .notInstalled,
            "\(name) \(version ?? "") is not installed; installed versions of \(name): \(installed.joined(separator: ", "))")
    }

    func read<T>(_ body: (Database) throws -> T) throws -> T {
        do { return try db.read(body) } catch let error as ShardError { throw error } catch {
            throw ShardError(.io, "reading the shard library at \(directory.path): \(error)")
        }
    }

    func write<T>(_ body: (Database) throws -> T) throws -> T {
        do { return try db.write(body) } catch let error as ShardError { throw error } catch {
            throw ShardError(.io, "changing the shard library at \(directory.path): \(error)")
        }
    }
}
