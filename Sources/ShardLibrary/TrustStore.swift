import Foundation
import GRDB
import SquashMounts

/// The public keys this host trusts to sign shards, the ones it revoked, and
/// the policy of which shards need a signature; kept in the library's database.
///
/// A removed key is simply no longer trusted; a revoked key is remembered, so
/// that its shards are refused by name ("revoked on … by …") even if someone
/// adds the key again without meaning to (`add` refuses a revoked key).
public struct TrustStore: Sendable {
    let db: DatabaseQueue

    /// A key in the store.
    public struct Key: Sendable, Codable, Equatable {
        public var fingerprint: String
        public var name: String
        /// Raw 32-byte Ed25519 public key.
        public var publicKey: [UInt8]
        public var added: Date
        public var addedBy: String
        public var revoked: Date?
        public var revokedBy: String?
    }

    /// Who vouches for an admitted shard: the trusted key that signed it, or nobody when none was needed.
    public struct Admission: Sendable, Equatable {
        public var signer: Key?
    }

    // MARK: keys

    /// Trusts `key`. Adding a key that is trusted already changes nothing; a revoked key is refused.
    @discardableResult
    public func add(_ key: ShardPublicKey, name: String? = nil, by user: String) throws -> Key {
        try write { db in
            if let existing = try Self.key(db, key.fingerprint) {
                if let revoked = existing.revoked {
                    throw ShardError(
                        .revokedSigner,
                        "key \(existing.fingerprint) (\(existing.name)) was revoked on \(revoked.formatted(.iso8601)) by \(existing.revokedBy ?? "?"); a revoked key cannot be trusted again: sign with a new key"
                    )
                }
                return existing
            }
            let name = name ?? (key.name.isEmpty ? key.fingerprint : key.name)
            let row = Key(
                fingerprint: key.fingerprint, name: name, publicKey: key.raw, added: Date(), addedBy: user, revoked: nil,
                revokedBy: nil)
            try db.execute(
                sql: "INSERT INTO trustedKey (fingerprint, name, publicKey, added, addedBy) VALUES (?, ?, ?, ?, ?)",
                arguments: [row.fingerprint, row.name, Data(row.publicKey), row.added.timeIntervalSince1970, user])
            try LibraryLog.record(db, by: user, action: "trust", name: name, version: nil, detail: "key \(row.fingerprint)")
            return row
        }
    }

    /// Every key, trusted and revoked, oldest first.
    public func keys() throws -> [Key] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM trustedKey ORDER BY added").map(Self.key(from:))
        }
    }

    /// Forgets a trusted key (by fingerprint, a prefix of at least 8 digits, or name): its shards become untrusted.
    public func remove(_ which: String, by user: String) throws -> Key {
        try write { db in
            let key = try Self.find(db, which)
            try db.execute(sql: "DELETE FROM trustedKey WHERE fingerprint = ?", arguments: [key.fingerprint])
            try LibraryLog.record(
                db, by: user, action: "distrust", name: key.name, version: nil, detail: "key \(key.fingerprint)")
            return key
        }
    }

    /// Revokes a key: every shard it signed is refused from now on, at install and at attach.
    public func revoke(_ which: String, by user: String) throws -> Key {
        try write { db in
            var key = try Self.find(db, which)
            guard key.revoked == nil else { return key }
            key.revoked = Date()
            key.revokedBy = user
            try db.execute(
                sql: "UPDATE trustedKey SET revoked = ?, revokedBy = ? WHERE fingerprint = ?",
                arguments: [key.revoked!.timeIntervalSince1970, user, key.fingerprint])
            try LibraryLog.record(db, by: user, action: "revoke", name: key.name, version: nil, detail: "key \(key.fingerprint)")
            return key
        }
    }

    /// Adds a revoked key (from a revocation list brought to the host): known only to be refused.
    public func revoke(_ key: ShardPublicKey, by user: String) throws -> Key {
        try write { db in
            if try Self.key(db, key.fingerprint) == nil {
                try db.execute(
                    sql: "INSERT INTO trustedKey (fingerprint, name, publicKey, added, addedBy) VALUES (?, ?, ?, ?, ?)",
                    arguments: [
                        key.fingerprint, key.name.isEmpty ? key.fingerprint : key.name, Data(key.raw),
                        Date().timeIntervalSince1970, user,
                    ])
            }
        }
        return try revoke(key.fingerprint, by: user)
    }

    // MARK: policy

    public func policy() throws -> TrustPolicy { try read(Self.policy) }

    static func policy(_ db: Database) throws -> TrustPolicy {
        do {
            var policy = TrustPolicy.default
            for row in try Row.fetchAll(db, sql: "SELECT kind, requirement FROM trustPolicy") {
                if let kind = ShardManifest.Kind(rawValue: row["kind"]),
                    let requirement = TrustPolicy.Requirement(rawValue: row["requirement"])
                {
                    policy.requirements[kind] = requirement
                }
            }
            return policy
        }
    }

    public func setPolicy(_ kind: ShardManifest.Kind, _ requirement: TrustPolicy.Requirement, by user: String) throws {
        try write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO trustPolicy (kind, requirement) VALUES (?, ?)",
                arguments: [kind.rawValue, requirement.rawValue])
            try LibraryLog.record(
                db, by: user, action: "policy", name: kind.rawValue, version: nil, detail: requirement.rawValue)
        }
    }

    // MARK: admission

    /// Checks `shard`'s signatures against the keys and the policy; throws the
    /// sentence that says which case refused it. Every signature present must be
    /// valid (an invalid one means the file changed after signing); where the
    /// policy wants one, a trusted, unrevoked key must have signed it.
    public func admit(_ shard: Shard) throws -> Admission {
        let (keys, policy) = try read { db in
            (try Row.fetchAll(db, sql: "SELECT * FROM trustedKey").map(Self.key(from:)), try Self.policy(db))
        }
        return try Self.admit(shard, keys: keys, policy: policy)
    }

    static func admit(_ shard: Shard, keys: [Key], policy: TrustPolicy) throws(ShardError) -> Admission {
        let m = shard.manifest
        let what = "shard \(m.name) \(m.version) (\(m.kind.rawValue), \(shard.path))"
        if let forged = shard.signatures.first(where: { !$0.isValid(for: shard) }) {
            throw ShardError(
                .badSignature,
                "\(what) was changed after it was signed: its signature by key \(forged.fingerprint) does not match its manifest; do not use this file, get the shard again from its maker"
            )
        }
        let byFingerprint = Dictionary(keys.map { ($0.fingerprint, $0) }, uniquingKeysWith: { a, _ in a })
        let signers = shard.signatures.compactMap { byFingerprint[$0.fingerprint] }
        let trusted = signers.first { $0.revoked == nil }
        guard let reason = policy.signatureReason(for: m) else { return Admission(signer: trusted) }
        if let trusted { return Admission(signer: trusted) }
        if shard.signatures.isEmpty {
            throw ShardError(
                .unsigned,
                "\(what) is not signed, and \(reason); sign it on the build machine (`vmexec shard sign --key KEY.key FILE`) and bring it again"
            )
        }
        if let revoked = signers.first(where: { $0.revoked != nil }) {
            throw ShardError(
                .revokedSigner,
                "\(what) is signed by key \(revoked.fingerprint) (\(revoked.name)), which was revoked on \(revoked.revoked!.formatted(.iso8601)) by \(revoked.revokedBy ?? "?"); \(reason): get a build signed by a current key"
            )
        }
        let fingerprints = shard.signatures.map(\.fingerprint).joined(separator: ", ")
        throw ShardError(
            .untrustedSigner,
            "\(what) is signed by key \(fingerprints), which this host does not trust, and \(reason); if that key is yours, trust it with `vmexec trust add KEY.pub`"
        )
    }

    // MARK: rows

    static func key(_ db: Database, _ fingerprint: String) throws -> Key? {
        try Row.fetchOne(db, sql: "SELECT * FROM trustedKey WHERE fingerprint = ?", arguments: [fingerprint]).map(key(from:))
    }

    static func find(_ db: Database, _ which: String) throws -> Key {
        let rows = try Row.fetchAll(
            db, sql: "SELECT * FROM trustedKey WHERE name = ? OR (length(?) >= 8 AND fingerprint LIKE ? || '%')",
            arguments: [which, which, which]
        ).map(key(from:))
        guard rows.count == 1, let key = rows.first else {
            throw ShardError(
                rows.isEmpty ? .notInstalled : .invalidArgument,
                rows.isEmpty
                    ? "no key \(which) in the trust store; `vmexec trust list` shows them"
                    : "\(which) names \(rows.count) keys; give more of the fingerprint")
        }
        return key
    }

    static func key(from row: Row) -> Key {
        Key(
            fingerprint: row["fingerprint"], name: row["name"], publicKey: [UInt8](row["publicKey"] as Data),
            added: Date(timeIntervalSince1970: row["added"]), addedBy: row["addedBy"],
            revoked: (row["revoked"] as Double?).map(Date.init(timeIntervalSince1970:)), revokedBy: row["revokedBy"])
    }

    func read<T>(_ body: (Database) throws -> T) throws -> T {
        do { return try db.read(body) } catch let error as ShardError { throw error } catch {
            throw ShardError(.io, "reading the trust store: \(error)")
        }
    }

    func write<T>(_ body: (Database) throws -> T) throws -> T {
        do { return try db.write(body) } catch let error as ShardError { throw error } catch {
            throw ShardError(.io, "changing the trust store: \(error)")
        }
    }
}
