import CVMExecHost
import Foundation
import Synchronization

/// A running QEMU: its output kept in a log file, its end observed so that
/// the sandbox can fail waiting calls at once and say why. Started through
/// `vmexec_spawn`, so it dies with the host process even when that is
/// killed (no orphaned guests), and in its own process group (a terminal's
/// Ctrl-C reaches vmexec, which forwards it to the command, not QEMU).
final class QEMUProcess: Sendable {
    let pid: Int32
    let logPath: String
    private let exit = EndingSignal<Ending>()

    /// How QEMU ended.
    struct Ending: Sendable, CustomStringConvertible {
        var status: Int32
        var signaled: Bool
        /// False when its status was collected by someone else (waitpid gave ECHILD).
        var known = true

        /// Decodes a wait status, or a negative errno from `vmexec_wait`.
        init(waitStatus: Int32) {
            if waitStatus < 0 {
                (status, signaled, known) = (0, false, false)
            } else if waitStatus & 0x7f == 0 {
                (status, signaled) = ((waitStatus >> 8) & 0xff, false)
            } else {
                (status, signaled) = (waitStatus & 0x7f, true)
            }
        }

        var description: String {
            if !known { return "QEMU ended (its exit status was collected elsewhere)" }
            return signaled
                ? "QEMU was killed by signal \(status)\(status == SIGKILL ? " (SIGKILL)" : "")"
                : "QEMU exited with status \(status)"
        }
    }

    /// A user and mount namespace for the child (`vmexec_spawn_confined`): `uid`
    /// and `gid` inside are the host process's; `readOnlyPath` bound read-only.
    struct Confinement: Sendable {
        var uid: UInt32
        var gid: UInt32
        var readOnlyPath: String?
    }

    /// Starts `binary` with `arguments`; QEMU's own stdout and stderr go to `logPath`.
    /// QEMU's helpers (virtiofsd) start the same way, `confined` when asked.
    init(
        binary: String, arguments: [String], logPath: String, confined: Confinement? = nil,
        onExit: @escaping @Sendable (Ending) -> Void
    ) throws(VMExecError) {
        guard let path = Self.find(binary) else {
            throw VMExecError(
                .qemuNotFound, "\(binary) not found in PATH; install QEMU (make deps, or apt-get install qemu-system-x86)")
        }
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard logFD >= 0 else {
            throw VMExecError(.launchFailed, "cannot create \(logPath): \(String(cString: strerror(errno)))")
        }
        defer { close(logFD) }
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        let pid = argv.withUnsafeBufferPointer { args in
            guard let c = confined else { return vmexec_spawn(path, args.baseAddress, logFD) }
            return vmexec_spawn_confined(path, args.baseAddress, logFD, c.uid, c.gid, c.readOnlyPath)
        }
        guard pid > 0 else {
            throw VMExecError(.launchFailed, "cannot start \(path): \(String(cString: strerror(-pid)))")
        }
        self.pid = pid
        self.logPath = logPath
        let exit = self.exit
        // One thread per guest blocks in waitpid for QEMU's end.
        Thread.detachNewThread {
            let ending = Ending(waitStatus: vmexec_wait(pid))
            exit.end(ending)
            onExit(ending)
        }
    }

    /// How it ended, or nil while it runs.
    var ending: Ending? { exit.ending }

    /// Waits until QEMU has exited, at most `timeout`; returns how it ended.
    func waitForExit(timeout: Duration) async -> Ending? { await exit.wait(timeout: timeout) }

    /// Sends a signal to QEMU (SIGKILL to end it at once).
    func kill(_ signal: Int32 = SIGKILL) {
        if ending == nil { _ = Foundation.kill(pid, signal) }
    }

    /// The last lines QEMU printed, for error messages.
    func logTail(lines: Int = 5) -> String {
        Self.tail(of: logPath, lines: lines)
    }

    static func tail(of path: String, lines: Int) -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return "" }
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    /// The path `binary` resolves to through PATH, if it is executable.
    static func find(_ binary: String) -> String? {
        if binary.contains("/") { return FileManager.default.isExecutableFile(atPath: binary) ? binary : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(binary)" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}
