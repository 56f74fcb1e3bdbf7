import GRDB

/// The library database's tables, migrated in order.
enum LibrarySchema {
    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE shardVersion (
                        name TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL, architecture TEXT NOT NULL,
                        sha256 TEXT NOT NULL, file TEXT NOT NULL, signer TEXT, installed REAL NOT NULL,
                        installedBy TEXT NOT NULL, manifest TEXT NOT NULL, PRIMARY KEY (name, version));
                    CREATE TABLE activeVersion (name TEXT PRIMARY KEY, version TEXT NOT NULL);
                    CREATE TABLE activation (
                        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL,
                        at REAL NOT NULL, by TEXT NOT NULL);
                    CREATE TABLE trustedKey (
                        fingerprint TEXT PRIMARY KEY, name TEXT NOT NULL, publicKey BLOB NOT NULL,
                        added REAL NOT NULL, addedBy TEXT NOT NULL, revoked REAL, revokedBy TEXT);
                    CREATE TABLE trustPolicy (kind TEXT PRIMARY KEY, requirement TEXT NOT NULL);
                    CREATE TABLE event (
                        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, by TEXT NOT NULL, action TEXT NOT NULL,
                        name TEXT NOT NULL, version TEXT, detail TEXT);
                    """)
        }
        return m
    }
}
