import Foundation

/// Saved machine states of freshly booted guests, so that a start can
/// restore one (well under a second) instead of booting (about 1.7 s under
/// TCG). A state is valid only for the exact QEMU command line and image
/// files it was saved with, which its key captures. The guest takes the
/// host's clock and fresh entropy on every connection (see PROTOCOL.md), so
/// restored guests neither live in the past nor share random numbers.
struct BootState: Sendable {
    let key: String
    let file: URL
    let directory: URL

    /// `$VMEXEC_CACHE`, else `$XDG_CACHE_HOME/vmexec`, else `~/.cache/vmexec`; plus `/boot-states`.
    static var defaultDirectory: URL {
        let env = ProcessInfo.processInfo.environment
        let base: URL
        if let dir = env["VMEXEC_CACHE"], !dir.isEmpty {
            base = URL(fileURLWithPath: dir)
        } else if let xdg = env["XDG_CACHE_HOME"], !xdg.isEmpty {
            base = URL(fileURLWithPath: xdg).appendingPathComponent("vmexec")
        } else {
            base = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/vmexec")
        }
        return base.appendingPathComponent("boot-states")
    }

    /// States kept at most; older ones (of replaced images) are removed.
    static let keep = 4

    /// The state for this command line (with run-directory paths replaced by a
    /// placeholder) and these files (path, size, modification time).
    init(arguments: [String], runDirectory: String, files: [String], directory: URL = BootState.defaultDirectory) {
        var text = arguments.map { $0.replacingOccurrences(of: runDirectory, with: "@RUN@") }.joined(separator: "\u{1}")
        for path in files {
            let attrs = try? FileManager.default.attributesOfItem(atPath: path)
            let size = (attrs?[.size] as? NSNumber)?.int64Value ?? -1
            let mtime = (attrs?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? -1
            text += "\u{2}\(path)\u{1}\(size)\u{1}\(mtime)"
        }
        // FNV-1a, 64 bits: a cache key, not a security boundary.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        key = String(hash, radix: 16)
        self.directory = directory
        file = directory.appendingPathComponent("\(key).state")
    }

    var exists: Bool { FileManager.default.fileExists(atPath: file.path) }

    /// QEMU arguments that load this state instead of booting.
    var incomingArguments: [String] { ["-incoming", "exec:cat \(Self.shellQuoted(file.path))"] }

    /// QEMU runs `exec:` URIs through /bin/sh; this quotes any path for it.
    static func shellQuoted(_ s: String) -> String {
        "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    func remove() { try? FileManager.default.removeItem(at: file) }

    /// Why saving did not work out.
    enum SaveFailure: Error, CustomStringConvertible {
        /// No state was stored; the guest runs on.
        case notSaved(String)
        /// The guest stayed stopped after the migration: it is of no use.
        case notResumed(String)

        var description: String {
            switch self {
            case .notSaved(let why): "the boot state was not saved: \(why)"
            case .notResumed(let why): "the guest could not be resumed after saving its state: \(why)"
            }
        }
    }

    /// Saves the running guest's state through QMP (a live migration into a
    /// file), then resumes the guest. The state becomes visible atomically.
    /// Throws ``SaveFailure``.
    func save(monitor: QMPClient, timeout: Duration = .seconds(60)) async throws {
        let fm = FileManager.default
        try fm.createDirectory(at: directory, withIntermediateDirectories: true,
                               attributes: [.posixPermissions: 0o700])
        // Unique per save: two sandboxes of one process may save the same key at once.
        let partial = file.path + ".partial-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { try? fm.removeItem(atPath: partial) }
        _ = fm.createFile(atPath: partial, contents: nil, attributes: [.posixPermissions: 0o600])
        try await monitor.execute("migrate", arguments: ["uri": "exec:cat > \(Self.shellQuoted(partial))"])
        let deadline = ContinuousClock.now + timeout
        var outcome = try await monitor.migrationStatus()
        while !["completed", "failed", "cancelled"].contains(outcome.status) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            outcome = try await monitor.migrationStatus()
        }
        try await Self.resume(monitor)
        guard outcome.status == "completed" else {
            throw SaveFailure.notSaved("migration ended \(outcome.status): \(outcome.error ?? "timed out")")
        }
        guard rename(partial, file.path) == 0 else {
            throw VMExecError(.launchFailed, "cannot store the boot state at \(file.path): \(String(cString: strerror(errno)))")
        }
        Self.prune(directory)
    }

    /// Resumes the guest that was just migrated from. QEMU reports the
    /// migration "completed" a moment before it has stopped the source
    /// ("postmigrate"), and a `cont` sent in that gap is overridden, leaving
    /// the guest paused for good; so: wait for a stopped state, `cont`, and
    /// check that it runs.
    static func resume(_ monitor: QMPClient, timeout: Duration = .seconds(10)) async throws {
        let deadline = ContinuousClock.now + timeout
        var last = "unknown"
        while ContinuousClock.now < deadline {
            let state = try await monitor.runState()
            last = state.status
            if state.running { return }
            if ["postmigrate", "paused"].contains(state.status) { _ = try? await monitor.execute("cont") }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw SaveFailure.notResumed("QEMU's run state is still \(last)")
    }

    /// Keeps the newest few states.
    private static func prune(_ directory: URL) {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: directory.path) else { return }
        let states = names.filter { $0.hasSuffix(".state") }.map { directory.appendingPathComponent($0) }
            .sorted {
                let a = (try? fm.attributesOfItem(atPath: $0.path)[.modificationDate] as? Date) ?? .distantPast
                let b = (try? fm.attributesOfItem(atPath: $1.path)[.modificationDate] as? Date) ?? .distantPast
                return a > b
            }
        for old in states.dropFirst(keep) { try? fm.removeItem(at: old) }
    }
}
