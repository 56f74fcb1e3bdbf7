import CVMExecHost
import Foundation

/// Small facts about this host kept for the life of its boot (under
/// `$XDG_RUNTIME_DIR/vmexec-<uid>` or the temp dir): the KVM verdict and
/// the TSC frequency. Both are costly or noisy to measure on every start,
/// and the TSC value must be stable for saved boot states to match.
enum HostCache {
    static var directory: URL {
        let base = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"] ?? NSTemporaryDirectory()
        return URL(fileURLWithPath: base).appendingPathComponent("vmexec-\(getuid())")
    }

    static var bootID: String {
        (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"
    }

    static func read(_ name: String) -> String? {
        guard isOurs else { return nil }
        return try? String(contentsOf: directory.appendingPathComponent("\(name)-\(bootID)"), encoding: .utf8)
    }

    /// A real directory owned by this user and writable by no one else: in a
    /// shared /tmp, another user could otherwise plant a KVM verdict or a TSC
    /// frequency for us.
    static var isOurs: Bool {
        var st = stat()
        guard lstat(directory.path, &st) == 0 else { return false }
        return (st.st_mode & S_IFMT) == S_IFDIR && st.st_uid == getuid() && (st.st_mode & 0o022) == 0
    }

    static func write(_ name: String, _ value: String) {
        try? FileManager.default.createDirectory(
            at: directory, withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700])
        guard isOurs else { return }
        try? value.write(to: directory.appendingPathComponent("\(name)-\(bootID)"), atomically: true, encoding: .utf8)
    }

    /// The host TSC frequency in kHz, measured once per host boot.
    static var tscKHz: Int {
        if let cached = read("tsc-khz").flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
            return cached
        }
        let khz = vmexec_tsc_khz()
        if khz > 0 { write("tsc-khz", "\(khz)") }
        return khz
    }
}
