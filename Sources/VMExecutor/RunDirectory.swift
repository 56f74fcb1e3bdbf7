import Foundation

/// A guest's private directory of sockets and logs, in the temp dir. Each
/// records its host (pid and process start time, so a reused pid does not
/// count), and making a new one removes those whose host is gone: a host
/// killed without `shutdown()` leaves nothing behind for long.
enum RunDirectory {
    /// Distinct from HostCache's `vmexec-<uid>`, which the sweep must never match.
    static let prefix = "vmexec-run-"
    static let hostFile = "host"

    static func make() throws(VMExecError) -> URL {
        sweep()
        var template = Array((NSTemporaryDirectory() + "/\(prefix)XXXXXX").utf8CString)
        guard let path = mkdtemp(&template) else {
            throw VMExecError(.launchFailed, "cannot create a run directory in \(NSTemporaryDirectory())")
        }
        let dir = URL(fileURLWithPath: String(cString: path))
        try? identity(of: getpid()).write(to: dir.appendingPathComponent(hostFile), atomically: true, encoding: .utf8)
        return dir
    }

    /// "pid starttime" of a live process, or "" if it is gone.
    static func identity(of pid: Int32) -> String {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return "" }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 20 ? "\(pid) \(fields[19])" : ""
    }

    /// Removes this user's run directories whose host process has ended.
    static func sweep() {
        let fm = FileManager.default
        let tmp = URL(fileURLWithPath: NSTemporaryDirectory())
        guard let names = try? fm.contentsOfDirectory(atPath: tmp.path) else { return }
        for name in names where name.hasPrefix(prefix) && name.count == prefix.count + 6 {
            let dir = tmp.appendingPathComponent(name)
            guard let attrs = try? fm.attributesOfItem(atPath: dir.path),
                (attrs[.ownerAccountID] as? NSNumber)?.uint32Value == getuid()
            else { continue }
            guard let recorded = try? String(contentsOf: dir.appendingPathComponent(hostFile), encoding: .utf8) else {
                // Being created right now, or from an older vmexec: leave young ones alone.
                let age = Date().timeIntervalSince((attrs[.modificationDate] as? Date) ?? Date())
                if age > 3600 { try? fm.removeItem(at: dir) }
                continue
            }
            let pid = Int32(recorded.split(separator: " ").first ?? "") ?? 0
            if pid > 0 && identity(of: pid) != recorded { try? fm.removeItem(at: dir) }
        }
    }
}
