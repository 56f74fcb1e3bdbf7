import Foundation
import PersistOverlay

/// A libvirt host of the tests' own (Tests/libvirt-host.sh): a libvirtd
/// started without systemd in a mount namespace of its own, its state under
/// one folder; with a network number, in a network namespace of its own
/// reached over qemu+tcp on a veth pair. It ends by itself a while after the
/// last test used it.
public struct LibvirtTestHost: Sendable {
    public let directory: URL
    public let uri: String

    /// The script beside the test targets.
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("libvirt-host.sh").path

    /// Why libvirt hosts cannot be started here, or nil when they can.
    public static var unavailable: String? {
        if getuid() != 0 { return "libvirt test hosts need root (network and mount namespaces, libvirtd)" }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let found = (path.split(separator: ":") + ["/usr/sbin", "/sbin"]).contains {
            FileManager.default.isExecutableFile(atPath: "\($0)/libvirtd")
        }
        return found ? nil : "no libvirtd: run make deps"
    }

    /// Starts a host named `name` (its folder in the temp dir); `network` N puts it in a
    /// namespace of its own at 10.237.N.2.
    public static func start(_ name: String, network: Int? = nil, idleTimeout: Int = 120) throws -> LibvirtTestHost {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-libvirt-\(name)")
        sweep()
        _ = try? run(["stop", dir.path])
        let output = try run(["start", dir.path] + (network.map { ["\($0)"] } ?? []), timeout: idleTimeout)
        guard let uri = output.split(separator: "\n").last.map(String.init), uri.hasPrefix("qemu") else {
            throw HostFailure(message: "libvirt-host.sh start \(name) printed no URI: \(output)")
        }
        return LibvirtTestHost(directory: dir, uri: uri)
    }

    /// Removes the folders (and guests, namespaces) of earlier test hosts whose daemon has
    /// ended: a host ends by itself after its idle timeout, and leaves its folder behind.
    static func sweep() {
        let tmp = URL(fileURLWithPath: NSTemporaryDirectory())
        let names = (try? FileManager.default.contentsOfDirectory(atPath: tmp.path)) ?? []
        for name in names where name.hasPrefix("vmexec-libvirt-") {
            let dir = tmp.appendingPathComponent(name)
            let pidFile = dir.appendingPathComponent("libvirtd.pid").path
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
                let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), kill(pid, 0) == 0
            {
                continue  // its daemon runs: another test's host
            }
            // A pid file written a moment ago by a host being started has a live daemon too;
            // a folder without one is left to its own start's "stop".
            guard FileManager.default.fileExists(atPath: pidFile) else { continue }
            _ = try? run(["stop", dir.path])
            try? FileManager.default.removeItem(at: dir)
        }
    }

    /// Kills its daemon as a crash would (its guests' QEMUs stay).
    public func killDaemon() throws { _ = try Self.run(["kill", directory.path]) }
    /// Starts its daemon again after ``killDaemon()``.
    public func restartDaemon(idleTimeout: Int = 120) throws {
        _ = try Self.run(["restart", directory.path], timeout: idleTimeout)
    }
    /// Ends its guests, its daemon and its namespace, and removes its folder.
    public func stop() throws {
        _ = try Self.run(["stop", directory.path])
        try? FileManager.default.removeItem(at: directory)
    }

    /// The pids of the QEMUs its libvirtd runs now (from libvirt's pid files; driver.pid is libvirtd's own).
    public var qemuProcessIDs: [Int32] {
        let dir = directory.appendingPathComponent("run/qemu")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.filter { $0.hasSuffix(".pid") && $0 != "driver.pid" }.compactMap {
            (try? String(contentsOf: dir.appendingPathComponent($0), encoding: .utf8)).flatMap {
                Int32($0.trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }
    }

    public struct HostFailure: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    @discardableResult
    static func run(_ arguments: [String], timeout: Int = 120) throws -> String {
        let outcome = try HostTool.run(["env", "LIBVIRT_HOST_TIMEOUT=\(timeout)", "sh", script] + arguments)
        guard outcome.status == 0 else {
            throw HostFailure(message: "libvirt-host.sh \(arguments.joined(separator: " ")) failed: \(outcome.output)")
        }
        return outcome.output
    }
}
