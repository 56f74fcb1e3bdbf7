import Foundation

/// virtiofsd serving one host folder to one machine over a vhost-user
/// socket in the machine's run directory.
///
/// It runs confined (`vmexec_spawn_confined`): in a user namespace where the
/// guest's user (uid and gid 1000) is the host user running vmexec and no
/// other id exists, so the guest's new files belong to that user, files of
/// that user are the guest user's, and everyone else's show as nobody; with
/// the namespace's capabilities only, which reach nothing outside it; and,
/// for a read-only folder, over a read-only bind of it. virtiofsd itself
/// then pivots into the folder and opens every path part by part without
/// following symlinks, so neither `..` nor a symlink the guest plants leads
/// outside it. It ends when its machine does (the socket closes).
final class FolderServer: Sendable {
    /// The guest user's ids, whom the host user stands for.
    static let guestUID: UInt32 = 1000
    static let guestGID: UInt32 = 1000

    let folder: MachineFolder
    let socket: String
    private let process: QEMUProcess

    /// The virtiofsd this host has: QEMU's (Debian's qemu-system-common ships
    /// it in /usr/lib/qemu), else one on PATH.
    static var binary: String? {
        for path in ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
        where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        return QEMUProcess.find("virtiofsd")
    }

    /// Starts virtiofsd for `folder` and waits until its socket is there to connect to.
    /// `onExit` runs when it ends: a guest whose virtiofsd is gone would wait on the
    /// folder forever, so its machine is ended then.
    init(_ folder: MachineFolder, runDirectory: URL, onExit: @escaping @Sendable () -> Void) async throws(VMExecError) {
        guard let binary = Self.binary else {
            throw VMExecError(
                .unsupported,
                "host folders need virtiofsd, which this host lacks; install qemu-system-common (Debian 12 ships it in /usr/lib/qemu)"
            )
        }
        self.folder = folder
        socket = runDirectory.appendingPathComponent("\(folder.tag).sock").path
        let log = runDirectory.appendingPathComponent("\(folder.tag).log").path
        process = try QEMUProcess(
            binary: binary,
            arguments: [
                "--socket-path=\(socket)", "-o", "source=\(folder.hostPath)", "-o", "sandbox=namespace",
                // The guest sees the host's changes within about a second (cache=auto's timeout).
                "-o", "cache=auto", "-o", "no_posix_lock", "-o", "no_flock",
                // Raising the limit needs a capability outside the namespace.
                "--rlimit-nofile=0",
            ],
            logPath: log,
            confined: .init(uid: Self.guestUID, gid: Self.guestGID, readOnlyPath: folder.readOnly ? folder.hostPath : nil)
        ) { _ in onExit() }
        // virtiofsd makes its socket before it waits for QEMU.
        let deadline = ContinuousClock.now + .seconds(10)
        while !FileManager.default.fileExists(atPath: socket) {
            if let ending = process.ending {
                throw VMExecError(
                    .launchFailed,
                    "virtiofsd for the host folder \(folder.hostPath) ended before it served it (\(ending)): "
                        + process.logTail(lines: 3))
            }
            guard ContinuousClock.now < deadline else {
                process.kill()
                throw VMExecError(.launchFailed, "virtiofsd for \(folder.hostPath) made no socket within 10 s")
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    func kill() { process.kill() }

    /// What virtiofsd said last, for a machine's error messages.
    func logTail(lines: Int) -> String { process.logTail(lines: lines) }
}
