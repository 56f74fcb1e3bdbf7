import Foundation
import Testing

@testable import PersistOverlay

@Suite("Diff of upper layers")
struct StoreDiffTests {
    func file(_ path: String, _ hash: String = "h", size: UInt64 = 1) -> UpperEntry {
        UpperEntry(
            path: path, kind: .file, mode: 0o644, uid: 0, gid: 0, size: size, mtime: 0, linkTarget: nil, sha256: hash,
            opaque: false)
    }
    func dir(_ path: String, opaque: Bool = false) -> UpperEntry {
        UpperEntry(
            path: path, kind: .directory, mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0, linkTarget: nil, sha256: nil,
            opaque: opaque)
    }
    func whiteout(_ path: String) -> UpperEntry {
        UpperEntry(
            path: path, kind: .whiteout, mode: 0, uid: 0, gid: 0, size: 0, mtime: 0, linkTarget: nil, sha256: nil, opaque: false)
    }
    func table(_ entries: [UpperEntry]) -> [String: UpperEntry] {
        Dictionary(uniqueKeysWithValues: entries.map { ($0.path, $0) })
    }
    func summary(_ changes: [StoreChange]) -> [String] { changes.map { "\($0.kind.rawValue) \($0.path)" } }

    let lower: Set<String> = ["/etc", "/etc/issue", "/etc/motd", "/usr", "/usr/share", "/usr/share/doc", "/usr/share/doc/x"]

    @Test(
        "since creation: whiteouts of lower files are deletions, lower paths changed, the rest added, copied-up parents are no change"
    )
    func sinceCreation() {
        let now = table([
            dir("/etc"), whiteout("/etc/issue"), file("/etc/motd"), file("/etc/new"), whiteout("/etc/never"),
            dir("/data"), file("/data/a"), dir("/usr/share/doc", opaque: true), file("/usr/share/doc/y"),
        ])
        let changes = StoreLease.changes(current: now, baseline: [:]) { lower.contains($0) }
        #expect(
            summary(changes) == [
                "added /data", "added /data/a", "deleted /etc/issue", "changed /etc/motd", "added /etc/new",
                "changed /usr/share/doc", "added /usr/share/doc/y",
            ])
    }

    @Test("since a snapshot: unchanged entries vanish, a removed upper file is deleted, a re-created deleted file is added")
    func sinceSnapshot() {
        let before = table([
            dir("/etc"), whiteout("/etc/issue"), file("/etc/motd", "old"), dir("/data"), file("/data/a"), file("/data/b"),
            dir("/usr/share/doc", opaque: true),
        ])
        let now = table([
            dir("/etc"), file("/etc/issue"), file("/etc/motd", "new", size: 9), dir("/data"), file("/data/a"),
            dir("/usr/share/doc", opaque: true), file("/usr/share/doc/x"),
        ])
        let changes = StoreLease.changes(current: now, baseline: before) { lower.contains($0) }
        #expect(
            summary(changes) == ["deleted /data/b", "added /etc/issue", "changed /etc/motd", "added /usr/share/doc/x"],
            "/usr/share/doc/x was hidden by the opaque directory at the snapshot, so it is new")
        #expect(changes.first { $0.path == "/etc/motd" }?.size == 9)
    }
}
