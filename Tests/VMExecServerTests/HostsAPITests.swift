import Foundation
import Testing
import VMExecClient
import VMExecService
import VMExecTestSupport
import VMExecutor

extension DaemonSuites {
    /// The daemon over two libvirt hosts, each a libvirtd in a network namespace of the test's
    /// own (10.237.2.0/24 and 10.237.3.0/24 on veth pairs), reached over qemu+tcp, beside this
    /// machine's QEMU.
    @Suite(
        "Sandboxes on several libvirt hosts", .timeLimit(.minutes(10)),
        .enabled(if: LibvirtTestHost.unavailable == nil, "libvirt hosts cannot be started here"))
    struct HostsAPITests {
        @Test(
            "sandboxes spread by room; a store's stays here; a host's daemon killed fails its jobs, the other carries on, new sandboxes go to the live host, and the host is used again"
        )
        func placement() async throws {
            let a = try LibvirtTestHost.start("hosts-a-\(getpid())", network: 2)
            let b = try LibvirtTestHost.start("hosts-b-\(getpid())", network: 3)
            defer {
                try? a.stop()
                try? b.stop()
            }
            let daemon = try await TestDaemon.start(hosts: [
                HostSpec(name: "local", uri: nil, maxGuests: 1), HostSpec(name: "a", uri: a.uri, maxGuests: 2),
                HostSpec(name: "b", uri: b.uri, maxGuests: 2),
            ])
            let client = daemon.alice
            var hosts = try await client.hosts()
            #expect(hosts.map(\.name) == ["local", "a", "b"])
            #expect(hosts.allSatisfy { $0.up }, "\(hosts)")

            // A store's image is a file here: its sandbox stays on this machine.
            let stored = try await client.createSandbox(SandboxRequest(name: "stored", store: "kept"))
            #expect(stored.host == "local")
            // The others go where there is room: local takes one guest only, a and b two each.
            let one = try await client.createSandbox(SandboxRequest(name: "one"))
            let two = try await client.createSandbox(SandboxRequest(name: "two"))
            #expect(Set([one.host, two.host]) == ["a", "b"], "spread over both: \(one.host ?? "-"), \(two.host ?? "-")")
            let onA = one.host == "a" ? "one" : "two"
            let onB = one.host == "a" ? "two" : "one"
            hosts = try await client.hosts()
            #expect(hosts.first { $0.name == "a" }?.guests == 1 && hosts.first { $0.name == "b" }?.guests == 1)
            #expect(
                try await client.sandboxes().first { $0.name == "stored" }?.host == "local", "the API shows each sandbox's host")

            // Host a's daemon dies under a running job.
            let doomed = try await client.submit(onA, JobSubmission(["sleep", "60"]))
            let survivor = try await client.submit(onB, JobSubmission(["sh", "-c", "sleep 6; echo carried on"]))
            try await Task.sleep(for: .seconds(1))
            let killedAt = ContinuousClock.now
            try a.killDaemon()
            var failed = try await client.job(onA, doomed.id)
            while !failed.isFinal && ContinuousClock.now - killedAt < .seconds(30) {
                try await Task.sleep(for: .milliseconds(100))
                failed = try await client.job(onA, doomed.id)
            }
            let took = ContinuousClock.now - killedAt
            #expect(failed.state == "failed", "\(failed)")
            #expect(took < .seconds(6), "the job on the lost host failed after \(took)")
            #expect(failed.reason?.contains("10.237.2.2") == true, "the reason names the host: \(failed.reason ?? "")")
            let carried = try await client.submit(onB, JobSubmission(["true"]), wait: true)
            #expect(carried.exitCode == 0)
            var other = try await client.job(onB, survivor.id)
            while !other.isFinal {
                try await Task.sleep(for: .milliseconds(200))
                other = try await client.job(onB, survivor.id)
            }
            #expect(other.exitCode == 0, "the other host's job carried on: \(other)")
            #expect(try await eventually(10) { try await client.hosts().first { $0.name == "a" }?.up == false })

            // New sandboxes go to the live host (b has room for one more; local is full).
            let three = try await client.createSandbox(SandboxRequest(name: "three"))
            #expect(three.host == "b")
            // Now only a could take one, and it is down: a clear refusal.
            let refused = await #expect(throws: (any Error).self) { try await client.createSandbox(SandboxRequest(name: "four")) }
            #expect("\(String(describing: refused))".contains("a is down"), "\(String(describing: refused))")

            // Host a comes back: it is up again, and takes the next sandbox.
            try a.restartDaemon()
            #expect(try await eventually(20) { try await client.hosts().first { $0.name == "a" }?.up == true })
            let four = try await client.createSandbox(SandboxRequest(name: "four"))
            #expect(four.host == "a")
            let back = try await client.submit("four", JobSubmission(["echo", "back"]), wait: true)
            #expect(back.exitCode == 0)
            // The sandbox whose host died runs again there on its next job.
            let again = try await client.submit(onA, JobSubmission(["true"]), wait: true)
            #expect(again.exitCode == 0, "\(again)")
            // The guest the dead daemon left running was ended when the host came back: two guests there.
            #expect(a.qemuProcessIDs.count == 2, "QEMUs on host a: \(a.qemuProcessIDs)")
            await daemon.remove()
        }

        @Test("a local libvirt host keeps saved states: the first sandbox there boots, the next restores")
        func savedStatesOnALocalHost() async throws {
            let here = try LibvirtTestHost.start("hosts-here-\(getpid())")
            defer { try? here.stop() }
            let daemon = try await TestDaemon.start(hosts: [HostSpec(name: "here", uri: here.uri, maxGuests: 2)])
            let client = daemon.alice
            // The state's key holds the host's URI, a folder of this test's own: no state exists yet.
            for name in ["first", "second"] {
                #expect(try await client.createSandbox(SandboxRequest(name: name)).host == "here")
                let job = try await client.submit(name, JobSubmission(["echo", name]), wait: true)
                #expect(job.exitCode == 0, "\(job)")
                let out = try await client.output(name, job.id, stream: .stdout, offset: 0).bytes
                #expect(out == Array("\(name)\n".utf8))
            }
            let first = try await daemon.registry.sandbox(owner: "alice", name: "first")
            let second = try await daemon.registry.sandbox(owner: "alice", name: "second")
            #expect(await first.restoredFromSavedState == false, "the first start boots and saves the state")
            #expect(await second.restoredFromSavedState == true, "the next start on the host restores it")
            await daemon.remove()
        }
    }
}
