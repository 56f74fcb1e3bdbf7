import Testing
import VMExecutor

@testable import VMExecService

@Suite("hosts")
struct HostSpecTests {
    @Test("--host values: a URI, NAME=URI, a guest limit, local; what is no URI is refused")
    func parse() throws {
        #expect(
            try HostSpec.parse("qemu+tls://c2.example/system")
                == HostSpec(name: "c2.example", uri: "qemu+tls://c2.example/system"))
        #expect(
            try HostSpec.parse("a=qemu+ssh://vmexec@c3/system,guests=3")
                == HostSpec(name: "a", uri: "qemu+ssh://vmexec@c3/system", maxGuests: 3))
        #expect(try HostSpec.parse("qemu:///system") == HostSpec(name: "libvirt-local", uri: "qemu:///system"))
        #expect(try HostSpec.parse("local") == HostSpec.local)
        #expect(try HostSpec.parse("local,guests=2") == HostSpec(name: "local", uri: nil, maxGuests: 2))
        for bad in ["", "c2.example", "qemu+tls://h/system,guests=0", "qemu+tls://h/system,memory=3"] {
            #expect(throws: VMExecError.self, "\(bad)") { try HostSpec.parse(bad) }
        }
    }

    @Test("a daemon without hosts places nothing: every sandbox is this machine's QEMU's")
    func localOnly() async throws {
        let pool = HostPool([], logger: .init(label: "test"))
        #expect(await pool.onlyLocal)
        #expect(await pool.list().map(\.name) == ["local"])
        #expect(try await pool.hypervisor(on: "local") == nil)
        await #expect(throws: VMExecError.self) { try await pool.hypervisor(on: "elsewhere") }
    }
}

extension HostSpecTests {
    @Test("a sandbox's host is kept with it, for the next daemon")
    func recordedHost() throws {
        let path = JobStoreTests.scratch()
        let spec = SandboxSpec(shards: [], store: nil, memoryMiB: 256, concurrency: 1)
        try JobStore(path: path).insertSandbox(
            SandboxRecord(id: "x", owner: "o", name: "n", spec: spec, created: .now, host: "a"))
        try JobStore(path: path).insertSandbox(SandboxRecord(id: "y", owner: "o", name: "m", spec: spec, created: .now))
        #expect(try JobStore(path: path).sandboxes().map(\.host) == ["a", nil])
    }
}
