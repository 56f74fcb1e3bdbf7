import Foundation

/// Saved machine states of freshly booted guests, so that a start can
/// restore one (well under a second) instead of booting (about 1.7 s under
/// TCG). A state is valid only for the exact machine it was saved from,
/// which the hypervisor's key captures (QEMU's: its command line and image
/// files). The guest takes the host's clock and fresh entropy on every
/// connection (see PROTOCOL.md), so restored guests neither live in the past
/// nor share random numbers.
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
    static let keep = 8

    /// The state saved under `key` (see ``GuestHypervisor/stateKey(for:accelerator:)``).
    init(key: String, directory: URL = BootState.defaultDirectory) {
        self.key = key
        self.directory = directory
        file = directory.appendingPathComponent("\(key).state")
    }

    /// The files a state depends on, each by path, size and modification time, for a key's text:
    /// a state saved with other files (a rebuilt image, another shard version) is not found.
    static func identities(of paths: [String]) -> String {
        var text = ""
        for path in paths {
            let attrs = try? FileManager.default.attributesOfItem(atPath: path)
            let size = (attrs?[.size] as? NSNumber)?.int64Value ?? -1
            let mtime = (attrs?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? -1
            text += "\u{2}\(path)\u{1}\(size)\u{1}\(mtime)"
        }
        return text
    }

    /// A cache key over `text`: FNV-1a, 64 bits (a cache key, not a security boundary).
    static func key(of text: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return String(hash, radix: 16)
    }

    /// What the sandbox records beside a state (a warm state's zygote), as JSON.
    var notes: URL { URL(fileURLWithPath: file.path + ".json") }

    var exists: Bool { FileManager.default.fileExists(atPath: file.path) }

    func remove() {
        try? FileManager.default.removeItem(at: file)
        try? FileManager.default.removeItem(at: notes)
    }

    /// The notes saved with the state, or nil.
    func readNotes<T: Decodable>(_ type: T.Type) -> T? {
        guard let data = try? Data(contentsOf: notes) else { return nil }
        return try? JSONDecoder().decode(type, from: data)
    }

    /// Saves `machine`'s state under this key: into a private file first,
    /// visible under the key only once complete (two sandboxes of one
    /// process may save the same key at once).
    func save(_ machine: any GuestMachine, notes: Data? = nil) async throws {
        let fm = FileManager.default
        try fm.createDirectory(
            at: directory, withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700])
        let partial = URL(fileURLWithPath: file.path + ".partial-\(getpid())-\(UInt64.random(in: 0...UInt64.max))")
        defer { try? fm.removeItem(at: partial) }
        _ = fm.createFile(atPath: partial.path, contents: nil, attributes: [.posixPermissions: 0o600])
        try await machine.saveState(to: partial)
        // The notes first: a state is used once its file is there.
        try? fm.removeItem(at: self.notes)
        if let notes { try notes.write(to: self.notes, options: .atomic) }
        guard rename(partial.path, file.path) == 0 else {
            throw VMExecError(.launchFailed, "cannot store the boot state at \(file.path): \(String(cString: strerror(errno)))")
        }
        Self.prune(directory)
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
        for old in states.dropFirst(keep) {
            try? fm.removeItem(at: old)
            try? fm.removeItem(atPath: old.path + ".json")
        }
    }
}
