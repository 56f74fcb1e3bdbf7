import Foundation
import SerialChannel

/// A folder of the host that the guest sees at `guestPath`, as a Sandbox.jl
/// configuration maps one: read-only, read-write (the guest's writes land in
/// the host's folder, owned by the host user running vmexec), or overlaid (the
/// guest may change what it sees; the changes stay in the guest and end with
/// it, the host's folder never changes). Shared over virtiofs; the guest
/// cannot reach outside the folder (see docs/SECURITY.md).
public struct HostFolder: Sendable, Hashable {
    public enum Mode: String, Sendable, CaseIterable {
        case readOnly = "ro"
        case readWrite = "rw"
        case overlay
    }

    public var hostPath: String
    public var guestPath: String
    public var mode: Mode

    /// The most folders one sandbox shares (each is a device of its own).
    public static let limit = 8

    public init(hostPath: String, guestPath: String, mode: Mode = .readOnly) {
        self.hostPath = hostPath
        self.guestPath = guestPath
        self.mode = mode
    }

    /// `HOST:GUEST[:ro|rw|overlay]`, as `--mount` takes it (read-only when no mode is given).
    public init(parsing text: String) throws(VMExecError) {
        var parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        var mode = Mode.readOnly
        if parts.count == 3, let m = Mode(rawValue: parts[2]) {
            mode = m
            parts.removeLast()
        }
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw VMExecError(
                .invalidRequest, "a host folder is HOST:GUEST[:ro|rw|overlay], not '\(text)' (neither path may hold ':')")
        }
        self.init(hostPath: parts[0], guestPath: parts[1], mode: mode)
    }

    /// The folder as the machine shares it: the host path made absolute with its
    /// symlinks resolved now (the host user's choice), checked to be a directory.
    func machineFolder(tag: String) throws(VMExecError) -> MachineFolder {
        MachineFolder(tag: tag, hostPath: try resolvedHostPath(), readOnly: mode != .readWrite)
    }

    /// The host path, absolute, its symlinks resolved; an error unless it is a directory.
    public func resolvedHostPath() throws(VMExecError) -> String {
        let absolute = URL(fileURLWithPath: hostPath).standardizedFileURL.path
        guard let real = realpath(absolute, nil) else {
            throw VMExecError(.notFound, "the host folder \(hostPath) does not exist: \(String(cString: strerror(errno)))")
        }
        defer { free(real) }
        let path = String(cString: real)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw VMExecError(.invalidRequest, "the host folder \(hostPath) is not a directory")
        }
        return path
    }

    /// What the guest's FOLDER request says of the mode.
    var wireMode: DriveRequest.FolderMode {
        switch mode {
        case .readOnly: .ro
        case .readWrite: .rw
        case .overlay: .overlay
        }
    }

    /// Checks a sandbox's folders before boot: guest paths absolute, without `.`
    /// or `..` parts, outside the init's own mounts, each used once; at most ``limit``.
    public static func check(_ folders: [HostFolder]) throws(VMExecError) {
        guard folders.count <= limit else {
            throw VMExecError(.invalidRequest, "at most \(limit) host folders per sandbox, not \(folders.count)")
        }
        var seen = Set<String>()
        for f in folders {
            let parts = f.guestPath.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
            let own = ["proc", "sys", "dev", "tmp", "run"]
            guard f.guestPath.hasPrefix("/"), f.guestPath.utf8.count >= 2, f.guestPath.utf8.count <= 255,
                !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }), !own.contains(String(parts.first ?? "")),
                !f.guestPath.utf8.contains(0)
            else {
                throw VMExecError(
                    .invalidRequest,
                    "cannot mount a host folder at '\(f.guestPath)': give an absolute guest path without '.' or '..' parts, "
                        + "outside /proc, /sys, /dev, /tmp and /run")
            }
            guard seen.insert(f.guestPath).inserted else {
                throw VMExecError(.invalidRequest, "two host folders at \(f.guestPath)")
            }
        }
    }
}
