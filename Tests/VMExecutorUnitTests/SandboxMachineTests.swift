import Foundation
import Logging
import SquashMounts
import Testing
import VMExecutor

/// ``Sandbox``'s own logic against ``FakeHypervisor``: no QEMU, no images,
/// each failure of a machine provoked on purpose.
@Suite("Sandbox over a machine double", .timeLimit(.minutes(1)))
struct SandboxMachineTests {
    /// A configuration with placeholder image files (the fake never reads them).
    static func configuration(_ hypervisor: FakeHypervisor, states: URL) throws -> SandboxConfiguration {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-fake-images-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for name in ["vmlinux", "vmlinuz", "Image", "initramfs.cpio", "rootfs.sqfs"] {
            _ = FileManager.default.createFile(atPath: dir.appendingPathComponent(name).path, contents: Data())
        }
        var c = SandboxConfiguration()
        c.hypervisor = hypervisor
        c.images = GuestImages(directory: dir, architecture: .host)
        c.accelerator = .tcg
        c.bootStateDirectory = states
        return c
    }

    static func scratch() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-fake-states-\(UUID().uuidString)")
    }

    static func quiet() -> Logger {
        var l = Logger(label: "fake")
        l.logLevel = .critical
        return l
    }

    /// A small real shard (mounted at /opt/NAME), as a user would build one.
    static func shard(_ name: String = "x") throws -> Shard {
        let tree = FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-fake-tree-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tree, withIntermediateDirectories: true)
        try Data("x\n".utf8).write(to: tree.appendingPathComponent("file"))
        let path = tree.path + ".shard"
        try ShardBuilder.create(
            from: tree.path, to: path,
            manifest: ShardManifest(name: name, version: "1", kind: .data, placement: .mount("/opt/\(name)")))
        return try Shard.open(path)
    }

    @Test("a cold boot saves a state; the next start restores it")
    func savesAndRestores() async throws {
        let fake = FakeHypervisor()
        let states = Self.scratch()
        let config = try Self.configuration(fake, states: states)
        let first = Sandbox(configuration: config, logger: Self.quiet())
        try await first.start()
        #expect(await first.restoredFromSavedState == false)
        await first.shutdown()
        let second = Sandbox(configuration: config, logger: Self.quiet())
        try await second.start()
        #expect(await second.restoredFromSavedState == true)
        #expect(fake.launches.withLock { $0 } == [false, true])
        await second.shutdown()
    }

    @Test("a state that does not restore is removed and the guest boots afresh, saving a new one")
    func restoreFailure() async throws {
        let fake = FakeHypervisor()
        let states = Self.scratch()
        let config = try Self.configuration(fake, states: states)
        let first = Sandbox(configuration: config, logger: Self.quiet())
        try await first.start()
        await first.shutdown()
        fake.faults.withLock { $0.restoreFails = true }
        let second = Sandbox(configuration: config, logger: Self.quiet())
        try await second.start()
        #expect(await second.isRunning)
        #expect(await second.restoredFromSavedState == false)
        #expect(fake.launches.withLock { $0 } == [false, true, false], "restore tried, then a cold boot")
        let saved = try FileManager.default.contentsOfDirectory(atPath: states.path).filter { $0.hasSuffix(".state") }
        #expect(saved.count == 1, "the cold boot saved a fresh state: \(saved)")
        await second.shutdown()
        // Where the cold boot cannot save one, the state that failed is gone too.
        fake.faults.withLock { $0.canSave = false }
        let third = Sandbox(configuration: config, logger: Self.quiet())
        try await third.start()
        #expect(fake.launches.withLock { $0 } == [false, true, false, true, false])
        let left = try FileManager.default.contentsOfDirectory(atPath: states.path).filter { $0.hasSuffix(".state") }
        #expect(left.isEmpty, "a state that does not restore is removed: \(left)")
        await third.shutdown()
    }

    @Test("a machine that cannot save states still starts; nothing is saved")
    func savingUnsupported() async throws {
        let fake = FakeHypervisor(.init(canSave: false))
        let states = Self.scratch()
        let s = Sandbox(configuration: try Self.configuration(fake, states: states), logger: Self.quiet())
        try await s.start()
        try await s.ping()
        let saved = (try? FileManager.default.contentsOfDirectory(atPath: states.path)) ?? []
        #expect(saved.filter { $0.hasSuffix(".state") }.isEmpty)
        await s.shutdown()
    }

    @Test("a machine that ends under a waiting command fails it within a second with guestStopped")
    func crashWhileWaiting() async throws {
        let fake = FakeHypervisor()
        let s = Sandbox(configuration: try Self.configuration(fake, states: Self.scratch()), logger: Self.quiet())
        try await s.start()
        let machine = try #require(fake.lastMachine)
        let waiting = Task { try await s.exec(Command(["sleep", "forever"])) }
        try await Task.sleep(for: .milliseconds(100))
        let crashed = ContinuousClock.now
        machine.end("the fake machine crashed", killed: true)
        await #expect {
            _ = try await waiting.value
        } throws: { error in
            (error as? VMExecError)?.code == .guestStopped && "\(error)".contains("crashed")
        }
        #expect(ContinuousClock.now - crashed < .seconds(1))
        #expect(await s.isRunning == false)
        // A later call says so, and start() brings up a fresh machine.
        await #expect(throws: VMExecError.self) { try await s.ping() }
        try await s.start()
        try await s.ping()
        #expect(fake.machines.withLock { $0.count } == 2)
        await s.shutdown()
    }

    @Test("a refused hot-plug fails attach with the machine's reason and records nothing")
    func hotPlugFailure() async throws {
        let fake = FakeHypervisor()
        let s = Sandbox(configuration: try Self.configuration(fake, states: Self.scratch()), logger: Self.quiet())
        try await s.start()
        let shard = try Self.shard()
        let failing = FakeHypervisor(.init(plugFails: true))
        let t = Sandbox(configuration: try Self.configuration(failing, states: Self.scratch()), logger: Self.quiet())
        try await t.start()
        await #expect {
            try await t.attach(shard)
        } throws: { error in
            "\(error)".contains("refused device")
        }
        #expect(await t.shards.isEmpty, "a shard that did not attach is not kept for later starts")
        try await t.ping()
        // The same shard attaches where the machine accepts it.
        try await s.attach(shard)
        #expect(fake.lastMachine?.disks.map(\.readOnly) == [true])
        try await s.detach("x")
        #expect(fake.lastMachine?.disks.isEmpty == true)
        await s.shutdown()
        await t.shutdown()
    }

    @Test("attach and detach run one at a time: concurrent calls never interleave their hot-plugs")
    func operationsSerialised() async throws {
        let fake = FakeHypervisor(.init(plugDelay: .milliseconds(50)))
        let s = Sandbox(configuration: try Self.configuration(fake, states: Self.scratch()), logger: Self.quiet())
        try await s.start()
        let (x, y) = (try Self.shard("x"), try Self.shard("y"))
        async let a: Void = s.attach(x)
        async let b: Void = s.attach(y)
        _ = try await (a, b)
        async let c: Void = s.detach("x")
        async let d: Void = s.attach(try Self.shard("z"))
        _ = try await (c, d)
        let events = try #require(fake.lastMachine).events.withLock { $0 }
        #expect(events.count == 8)
        for pair in stride(from: 0, to: events.count - 1, by: 2) {
            let (begin, end) = (events[pair].split(separator: " "), events[pair + 1].split(separator: " "))
            #expect(begin[1] == end[1] && end[0] == begin[0] + "ged", "operations interleaved: \(events)")
        }
        #expect(await s.shards.map(\.manifest.name).sorted() == ["y", "z"])
        await s.shutdown()
    }

    @Test("a guest that dies during an attach gives guestStopped, a VMExecError, not the channel's own error")
    func deathDuringAttach() async throws {
        let fake = FakeHypervisor(.init(diesOnMount: true))
        let s = Sandbox(configuration: try Self.configuration(fake, states: Self.scratch()), logger: Self.quiet())
        try await s.start()
        await #expect {
            try await s.attach(try Self.shard())
        } throws: { error in
            (error as? VMExecError)?.code == .guestStopped
        }
        #expect(await s.shards.isEmpty)
    }

    @Test("a machine without hot-plug answers unsupported, not a hypervisor branch in Sandbox")
    func unsupportedOperation() async throws {
        let fake = FakeHypervisor(.init(canPlug: false))
        var config = try Self.configuration(fake, states: Self.scratch())
        config.shards = [try Self.shard()]
        let s = Sandbox(configuration: config, logger: Self.quiet())
        await #expect {
            try await s.start()
        } throws: { error in
            (error as? VMExecError)?.code == .unsupported
        }
        #expect(await s.isRunning == false, "a start that could not attach its shards leaves no machine running")
        #expect(fake.lastMachine?.ending != nil)
    }
}
