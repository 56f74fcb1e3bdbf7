import Foundation
import GRDB

/// Every change to the library and its trust store: when, who, what.
public enum LibraryLog {
    /// One change.
    public struct Entry: Sendable, Codable, Equatable {
        public var at: Date
        public var by: String
        /// install, activate, rollback, remove, gc, trust, distrust, revoke, policy.
        public var action: String
        public var name: String
        public var version: String?
        public var detail: String?
    }

    static func record(_ db: Database, by: String, action: String, name: String, version: String?, detail: String?) throws {
        try db.execute(
            sql: "INSERT INTO event (at, by, action, name, version, detail) VALUES (?, ?, ?, ?, ?, ?)",
            arguments: [Date().timeIntervalSince1970, by, action, name, version, detail])
    }

    static func entries(_ db: Database, limit: Int) throws -> [Entry] {
        try Row.fetchAll(db, sql: "SELECT * FROM event ORDER BY id DESC LIMIT ?", arguments: [limit]).map { row in
            Entry(
                at: Date(timeIntervalSince1970: row["at"]), by: row["by"], action: row["action"], name: row["name"],
                version: row["version"], detail: row["detail"])
        }
    }

    /// Who is asking, for the log: the user name, and who ran sudo when it was used.
    public static var currentUser: String {
        let env = ProcessInfo.processInfo.environment
        let name = getpwuid(geteuid()).flatMap { $0.pointee.pw_name.map { String(cString: $0) } } ?? "uid \(geteuid())"
        if let sudo = env["SUDO_USER"], !sudo.isEmpty, sudo != name { return "\(name) (sudo by \(sudo))" }
        return name
    }
}
