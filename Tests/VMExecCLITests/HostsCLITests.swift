import Foundation
import Testing
import VMExecTestSupport

extension CLISuites {
    /// `vmexec serve --host` as an operator starts it: a libvirt host (a test libvirtd on
    /// this machine) beside this machine's QEMU.
    @Suite(
        "vmexec serve --host", .timeLimit(.minutes(5)),
        .enabled(if: LibvirtTestHost.unavailable == nil, "libvirt hosts cannot be started here"))
    struct HostsCLITests {
        @Test("serve --host NAME=URI,guests=N --host local: sandboxes go where there is room; hosts and ls show where")
        func serveHosts() async throws {
            let bad = try await CLISuites.CLITests.vmexec(["serve", "--host", "controller-2"])
            #expect(bad.status != 0 && bad.stderr.contains("is no libvirt URI"), "\(bad.stderr)")

            let libvirt = try LibvirtTestHost.start("cli-\(getpid())")
            defer { try? libvirt.stop() }
            let home = try DaemonHome()
            defer { home.remove() }
            _ = try await home.serve(["--host", "here=\(libvirt.uri),guests=1", "--host", "local,guests=1"])

            let hosts = try await home.vmexec(["hosts"])
            let lines = hosts.stdout.split(separator: "\n").map(String.init)
            #expect(lines.count == 3 && lines[0].hasPrefix("HOST"), "\(hosts.stdout)\(hosts.stderr)")
            #expect(lines.contains { $0.hasPrefix("here ") && $0.contains(" up ") && $0.contains(libvirt.uri) }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("local ") && $0.contains(" up ") }, "\(lines)")

            // One guest on each host: the second sandbox goes to the host with room left.
            for name in ["one", "two"] {
                let up = try await home.vmexec(["up", name])
                #expect(up.status == 0, "\(up.stderr)")
                let echo = try await home.vmexec(["exec", name, "--", "echo", name])
                #expect(echo.stdout == "\(name)\n", "\(echo.stderr)")
            }
            let ls = try await home.vmexec(["ls", "--json"])
            let listed = try JSONSerialization.jsonObject(with: Data(ls.stdout.utf8)) as? [[String: Any]] ?? []
            #expect(Set(listed.compactMap { $0["host"] as? String }) == ["here", "local"], "\(ls.stdout)")
            let full = try await home.vmexec(["up", "three"])
            #expect(full.status != 0 && full.stderr.contains("guests"), "no host has room: \(full.stderr)")
        }
    }
}
