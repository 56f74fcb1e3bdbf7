import Foundation
import ShardLibrary
import SquashMounts
import Testing

/// Install, list, activate, rollback, remove, gc, leases and resolution by name.
@Suite("Shard library")
struct LibraryTests {
    @Test("install copies, verifies and records; the first version of a name becomes active; reinstall is a no-op")
    func install() throws {
        let f = try LibraryFixture()
        let file = try f.shard("numpy", "1.0", provides: ["numpy==1.0"], requires: ["python3.11"], signer: f.vendor)
        let result = try f.library.install(file, by: "alice")
        #expect(result.added && result.version.active)
        #expect(result.version.installedBy == "alice")
        #expect(result.version.path.hasPrefix(f.library.directory.path))
        #expect(FileManager.default.fileExists(atPath: result.version.path))
        unlink(file)  // the library has its own copy
        #expect(try Shard.open(result.version.path).verify().name == "numpy")
        let again = try f.shard(
            "numpy", "1.0", provides: ["numpy==1.0"], requires: ["python3.11"], signer: f.vendor, content: "rebuilt")
        // Same name and version but other bytes (another build): refused.
        let error = shardError { _ = try f.library.install(again, by: "alice") }
        #expect(error?.code == .exists)
        #expect(try f.library.list().count == 1)
        #expect(try f.library.install(result.version.path, by: "alice").added == false)
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: f.library.directory.appendingPathComponent("incoming").path)
                .isEmpty)
    }

    @Test("activate, rollback, remove and gc; everything survives reopening the library; the log says who")
    func lifecycle() throws {
        let f = try LibraryFixture()
        for v in ["1.0", "2.0", "3.0"] {
            _ = try f.library.install(try f.shard("numpy", v, signer: f.vendor), activate: v != "3.0", by: "alice")
        }
        #expect(try f.library.active().map(\.version) == ["2.0"])
        #expect(try f.library.activate("numpy", "3.0", by: "bob") == "2.0")
        let rolled = try f.library.rollback("numpy", by: "carol")
        #expect(rolled.from == "3.0" && rolled.to == "2.0")
        #expect(shardError { try f.library.activate("numpy", "9.9", by: "bob") }?.code == .notInstalled)
        // The active version cannot be removed on its own.
        #expect(shardError { _ = try f.library.remove("numpy", version: "2.0", by: "bob") }?.code == .conflict)
        // gc keeps the active (2.0) and the rollback target (3.0), removes 1.0.
        #expect(try f.library.gc(by: "dave").map(\.version) == ["1.0"])
        let reopened = try ShardLibrary(directory: f.library.directory)
        #expect(try reopened.list().map(\.version) == ["2.0", "3.0"])
        #expect(try reopened.active().map(\.version) == ["2.0"])
        _ = try reopened.remove("numpy", version: "3.0", by: "erin")
        #expect(shardError { _ = try reopened.rollback("numpy", by: "x") }?.code == .notInstalled)
        _ = try reopened.remove("numpy", by: "erin")
        #expect(try reopened.list().isEmpty)
        let log = try reopened.history()
        #expect(log.contains { $0.action == "rollback" && $0.by == "carol" && $0.version == "2.0" })
        #expect(log.contains { $0.action == "gc" && $0.by == "dave" && $0.version == "1.0" })
        #expect(log.contains { $0.action == "install" && $0.by == "alice" && $0.detail?.contains("signed by") == true })
    }

    @Test("a version a running sandbox holds is neither removed nor collected")
    func leases() throws {
        let f = try LibraryFixture()
        _ = try f.library.install(try f.shard("numpy", "1.0", signer: f.vendor), by: "t")
        _ = try f.library.install(try f.shard("numpy", "2.0", signer: f.vendor), by: "t")
        _ = try f.library.install(try f.shard("numpy", "3.0", signer: f.vendor), by: "t")
        do {
            let checkout = try f.library.checkout(["numpy==1.0"], architecture: "x86_64")
            #expect(checkout.versions.map(\.version) == ["1.0"])
            #expect(try f.library.gc(by: "t").isEmpty)  // 1.0 held, 2.0 the rollback target
            #expect(shardError { _ = try f.library.remove("numpy", version: "1.0", by: "t") }?.code == .inUse)
            withExtendedLifetime(checkout) {}
        }
        #expect(try f.library.gc(by: "t").map(\.version) == ["1.0"])
    }

    @Test("names resolve to active versions, with the shards their requirements need")
    func resolve() throws {
        let f = try LibraryFixture()
        _ = try f.library.install(try f.sdk("3.11.2", python: "python3.11"), by: "t")
        _ = try f.library.install(
            try f.shard("numpy", "1.26.4", provides: ["numpy==1.26.4"], requires: ["python3.11"], signer: f.vendor), by: "t")
        _ = try f.library.install(
            try f.shard("matplotlib", "3.8.4", requires: ["python3.11", "numpy==1.26.4"], signer: f.vendor), by: "t")
        let names = try f.library.resolve(["matplotlib"], architecture: "x86_64").map(\.name)
        #expect(names == ["matplotlib", "cpython", "numpy"])
        let pinned = try f.library.checkout(["numpy==1.26.4", "cpython"], architecture: "x86_64")
        #expect(pinned.shards.map(\.manifest.name) == ["numpy", "cpython"])
        let missing = shardError { _ = try f.library.resolve(["pandas"], architecture: "x86_64") }
        #expect(missing?.code == .notInstalled)
        #expect(missing?.message.contains("installed: cpython, matplotlib, numpy") == true)
    }

    @Test("a libs shard is replaced while the SDK stays, and the SDK while the libs stay")
    func separateUpdates() throws {
        let f = try LibraryFixture()
        _ = try f.library.install(try f.sdk("3.11.2", python: "python3.11"), by: "t")
        _ = try f.library.install(try f.shard("numpy", "1.26.4", requires: ["python3.11"], signer: f.vendor), by: "t")
        let before = try f.library.resolve(["numpy"], architecture: "x86_64").map { "\($0.name) \($0.version)" }
        #expect(before == ["numpy 1.26.4", "cpython 3.11.2"])
        // A new numpy for the same Python: the SDK stays.
        _ = try f.library.install(try f.shard("numpy", "1.26.5", requires: ["python3.11"], signer: f.vendor), by: "t")
        #expect(try f.library.resolve(["numpy"], architecture: "x86_64").map(\.version) == ["1.26.5", "3.11.2"])
        // A patched SDK (same python3.11): the libs stay.
        _ = try f.library.install(try f.sdk("3.11.9", python: "python3.11"), by: "t")
        #expect(try f.library.resolve(["numpy"], architecture: "x86_64").map(\.version) == ["1.26.5", "3.11.9"])
    }

    @Test("a requirement no active shard meets is refused naming both shards, and the versions that would serve")
    func mismatch() throws {
        let f = try LibraryFixture()
        _ = try f.library.install(try f.sdk("3.11.2", python: "python3.11"), by: "t")
        _ = try f.library.install(try f.shard("numpy", "2.1", requires: ["python3.12"], signer: f.vendor), by: "t")
        let error = shardError { _ = try f.library.resolve(["numpy"], architecture: "x86_64") }
        #expect(error?.code == .unmetRequirement)
        let message = error?.message ?? ""
        #expect(message.contains("numpy 2.1 requires python3.12"), "\(message)")
        #expect(message.contains("cpython 3.11.2 provides python3, python3.11"), "\(message)")
        #expect(message.contains("No installed shard provides it"), "\(message)")
        // Once a 3.12 SDK is installed but not active, the error says which version would serve.
        _ = try f.library.install(try f.sdk("3.12.1", python: "python3.12"), activate: false, by: "t")
        let again = shardError { _ = try f.library.resolve(["numpy"], architecture: "x86_64") }
        #expect(again?.message.contains("vmexec shard activate cpython 3.12.1") == true, "\(again?.message ?? "")")
        try f.library.activate("cpython", "3.12.1", by: "t")
        #expect(try f.library.resolve(["numpy"], architecture: "x86_64").map(\.version) == ["2.1", "3.12.1"])
    }
}
