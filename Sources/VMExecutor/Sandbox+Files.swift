import Foundation
import SerialChannel
import Synchronization

/// A guest file's facts (the protocol's ENTRY), as the files API returns them.
public typealias FileEntry = SerialChannel.FileEntry
/// A guest process's facts (the protocol's PROCESS), as ``Sandbox/processes()`` returns them.
public typealias ProcessEntry = SerialChannel.ProcessEntry

/// How a file or directory is created in the guest.
public struct FileOptions: Sendable, Equatable {
    /// Permission bits; nil: the host file's (upload), 0644 (bytes), 0755 (directories).
    public var mode: UInt32?
    /// Its owner; nil: the sandbox's default user, so commands can use it.
    public var owner: GuestUser?
    /// Create missing parent directories (owned by `owner`, mode 0755).
    public var createParents: Bool
    /// Replace what is at the path (a file is swapped in whole: never half-written).
    public var replace: Bool

    public init(mode: UInt32? = nil, owner: GuestUser? = nil, createParents: Bool = false, replace: Bool = true) {
        self.mode = mode
        self.owner = owner
        self.createParents = createParents
        self.replace = replace
    }
}

/// Files and processes of the running guest. Every guest path is resolved by
/// the guest inside its root (a `..` or a symlink a command planted cannot
/// lead out of it), and nothing of the guest is ever opened on the host.
/// Contents move in chunks within the channel's credit, so a file of any size
/// takes a bounded amount of memory on both sides.
extension Sandbox {
    // MARK: contents

    /// Copies the host file at `hostPath` to `guestPath`. The guest writes a
    /// temporary file beside the destination and renames it into place only
    /// when every byte arrived, so a failure (disk full, the guest gone)
    /// leaves the destination as it was. Returns the bytes copied.
    @discardableResult
    public func upload(_ hostPath: String, to guestPath: String, options: FileOptions = FileOptions()) async throws -> UInt64 {
        let fd = open(hostPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw VMExecError(.invalidRequest, "cannot open \(hostPath): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw VMExecError(.invalidRequest, "\(hostPath) is not a regular file")
        }
        var opts = options
        if opts.mode == nil { opts.mode = UInt32(st.st_mode) & 0o7777 }
        let upload = try await beginUpload(to: guestPath, size: UInt64(st.st_size), options: opts)
        do {
            while upload.remaining > 0 {
                let chunk = try await HostIO.read(fd)
                guard !chunk.isEmpty else {
                    throw VMExecError(
                        .invalidRequest, "\(hostPath) ended after \(upload.sent) of \(upload.size) bytes (it changed while read)")
                }
                try await upload.write(Array(chunk.prefix(Int(min(UInt64(chunk.count), upload.remaining)))))
            }
            try await upload.finish()
        } catch {
            await upload.cancel()
            throw error
        }
        return upload.size
    }

    /// Writes `bytes` to `guestPath` (mode 0644 unless `options` says otherwise).
    public func writeFile(_ guestPath: String, contents bytes: [UInt8], options: FileOptions = FileOptions()) async throws {
        var opts = options
        if opts.mode == nil { opts.mode = 0o644 }
        let upload = try await beginUpload(to: guestPath, size: UInt64(bytes.count), options: opts)
        do {
            try await upload.write(bytes)
            try await upload.finish()
        } catch {
            await upload.cancel()
            throw error
        }
    }

    /// Starts writing a file of `size` bytes at `guestPath` (mode from
    /// `options`, else 0644): ``FileUpload/write(_:)`` its bytes as they come,
    /// then ``FileUpload/finish()``. Each write waits for the guest's credit,
    /// so a fast source cannot pile up memory here.
    public func beginUpload(to guestPath: String, size: UInt64, options: FileOptions = FileOptions()) async throws -> FileUpload {
        guard size <= configuration.fileSizeLimit else {
            throw VMExecError(
                .fileTooLarge,
                "\(guestPath) would have \(size) bytes, more than the file size limit of \(configuration.fileSizeLimit); raise fileSizeLimit to move it"
            )
        }
        let r = try requireRunning()
        let owner = (options.owner ?? configuration.user).ids
        var flags: FileRequest.Flags = []
        if options.createParents { flags.insert(.parents) }
        if !options.replace { flags.insert(.noReplace) }
        do {
            let transfer = try await r.client.openTransfer(
                .put(guestPath, size: size, mode: options.mode ?? 0o644, uid: owner.uid, gid: owner.gid, flags: flags))
            return FileUpload(transfer: transfer, path: guestPath, size: size, machine: r.machine)
        } catch {
            throw await Self.fileError(error, machine: r.machine)
        }
    }

    /// Copies the guest file at `guestPath` to `hostPath`, atomically: the bytes go
    /// to a temporary file beside it, renamed into place once all arrived. The
    /// host file gets the guest file's permission bits (without setuid, setgid
    /// or sticky). Refused with ``VMExecError/Code/fileTooLarge`` beyond
    /// `maxBytes` (default: the configuration's `fileSizeLimit`). Returns the
    /// guest file's facts, `size` being the bytes copied.
    @discardableResult
    public func download(_ guestPath: String, to hostPath: String, maxBytes: UInt64? = nil) async throws -> FileEntry {
        let download = try await beginDownload(guestPath, maxBytes: maxBytes)
        let part = hostPath + ".vmexec-part-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(part, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let why = String(cString: strerror(errno))
            await download.cancel()
            throw VMExecError(.invalidRequest, "cannot create \(part): \(why)")
        }
        do {
            while let chunk = try await download.next() {
                try await HostIO.write(fd, chunk, path: part)
            }
            try Self.posix(fchmod(fd, mode_t(download.entry.permissions & 0o777)), "set the mode of \(part)")
            try Self.posix(close(fd), "write \(part)")
            try Self.posix(rename(part, hostPath), "move \(part) to \(hostPath)")
            var entry = download.entry
            entry.size = download.received
            return entry
        } catch {
            close(fd)
            unlink(part)
            await download.cancel()
            throw error
        }
    }

    /// The contents of a guest file of at most `maxBytes` (default 64 MiB).
    public func readFile(_ guestPath: String, maxBytes: Int = 64 << 20) async throws -> [UInt8] {
        let download = try await beginDownload(guestPath, maxBytes: UInt64(maxBytes))
        var bytes: [UInt8] = []
        while let chunk = try await download.next() { bytes += chunk }
        return bytes
    }

    /// Starts reading the guest file at `guestPath` (at most `maxBytes`,
    /// default the configuration's `fileSizeLimit`): its facts are in
    /// ``FileDownload/entry``, its bytes come from ``FileDownload/next()``;
    /// the guest sends only as fast as they are taken.
    public func beginDownload(_ guestPath: String, maxBytes: UInt64? = nil) async throws -> FileDownload {
        let r = try requireRunning()
        do {
            let transfer = try await r.client.openTransfer(.get(guestPath, maxSize: maxBytes ?? configuration.fileSizeLimit))
            return FileDownload(transfer: transfer, machine: r.machine)
        } catch {
            throw await Self.fileError(error, machine: r.machine)
        }
    }

    // MARK: names

    /// One file's facts; with `followSymlinks: false` a final symlink itself.
    public func fileInfo(_ guestPath: String, followSymlinks: Bool = true) async throws -> FileEntry {
        let r = try requireRunning()
        do {
            return try await r.client.stat(.stat(guestPath, followSymlink: followSymlinks))
        } catch {
            throw await Self.fileError(error, machine: r.machine)
        }
    }

    /// A directory's entries (not following symlinks), refused beyond `maxEntries`.
    public func listDirectory(_ guestPath: String, maxEntries: Int = 100_000) async throws -> [FileEntry] {
        let r = try requireRunning()
        do {
            return try await r.client.list(guestPath, maxEntries: maxEntries)
        } catch {
            throw await Self.fileError(error, machine: r.machine)
        }
    }

    /// Creates a directory (mode 0755 unless `options` says otherwise); with
    /// `createParents`, an existing directory is fine too.
    public func makeDirectory(_ guestPath: String, options: FileOptions = FileOptions()) async throws {
        let owner = (options.owner ?? configuration.user).ids
        let flags: FileRequest.Flags = options.createParents ? [.parents, .existOK] : []
        try await perform(.mkdir(guestPath, mode: options.mode ?? 0o755, uid: owner.uid, gid: owner.gid, flags: flags))
    }

    /// Removes a file, a symlink (never what it points to) or an empty
    /// directory; with `recursive`, a directory and everything in it.
    public func remove(_ guestPath: String, recursive: Bool = false) async throws {
        try await perform(.delete(guestPath, recursive: recursive))
    }

    /// Renames within the guest (a rename across mounts fails with EXDEV).
    public func move(_ guestPath: String, to destination: String, replace: Bool = true) async throws {
        try await perform(.move(guestPath, to: destination, replace: replace))
    }

    // MARK: processes

    /// The guest's processes, the init and kernel threads left out. A
    /// process's `stream` tells which running command it belongs to.
    public func processes() async throws -> [ProcessEntry] {
        let r = try requireRunning()
        do {
            return try await r.client.processes()
        } catch {
            throw await Self.fileError(error, machine: r.machine)
        }
    }

    /// Sends `signal` to guest process `pid`, or with `group` to its whole
    /// process group (a command and everything it started). PID 1 and its
    /// group are refused.
    public func signal(pid: UInt32, _ signal: Int32 = SIGTERM, group: Bool = false) async throws {
        let r = try requireRunning()
        do {
            try await r.client.kill(KillRequest(pid: pid, signal: UInt32(signal), group: group))
        } catch {
            throw await Self.fileError(error, machine: r.machine)
        }
    }

    // MARK: helpers

    private func perform(_ request: FileRequest) async throws {
        let r = try requireRunning()
        do {
            try await r.client.perform(request)
        } catch {
            throw await Self.fileError(error, machine: r.machine)
        }
    }

    static func posix(_ rc: Int32, _ what: String) throws {
        if rc != 0 { throw VMExecError(.invalidRequest, "cannot \(what): \(String(cString: strerror(errno)))") }
    }

    /// A refused file or process request as the ``VMExecError`` that says which.
    static func fileError(_ error: any Error, machine: any GuestMachine) async -> any Error {
        guard case .refused(let reply) = error as? ProtocolError else { return await explain(error, machine: machine) }
        switch reply.code {
        case .file: return VMExecError(.fileRefused, reply.message, cause: error as? ProtocolError)
        case .limit: return VMExecError(.fileTooLarge, reply.message, cause: error as? ProtocolError)
        case .process: return VMExecError(.processRefused, reply.message, cause: error as? ProtocolError)
        default: return await explain(error, machine: machine)
        }
    }
}

/// A file being written into the guest (``Sandbox/beginUpload(to:size:options:)``).
/// Not for concurrent use: one writer at a time.
public final class FileUpload: Sendable {
    public let path: String
    public let size: UInt64
    private let transfer: RemoteProcess
    private let machine: any GuestMachine
    private let count = Mutex<UInt64>(0)

    init(transfer: RemoteProcess, path: String, size: UInt64, machine: any GuestMachine) {
        self.transfer = transfer
        self.path = path
        self.size = size
        self.machine = machine
    }

    /// Bytes written so far.
    public var sent: UInt64 { count.withLock { $0 } }
    public var remaining: UInt64 { size - sent }

    /// Sends the next bytes; refused past the announced size.
    public func write(_ bytes: [UInt8]) async throws {
        guard UInt64(bytes.count) <= remaining else {
            throw VMExecError(.invalidRequest, "\(path): more than the \(size) bytes announced")
        }
        do { try await transfer.writeStdin(bytes) } catch { throw await Sandbox.fileError(error, machine: machine) }
        count.withLock { $0 += UInt64(bytes.count) }
    }

    /// Ends the upload and waits until the guest put the file in place.
    public func finish() async throws {
        guard remaining == 0 else {
            throw VMExecError(.invalidRequest, "\(path): \(sent) of the \(size) bytes announced were written")
        }
        do {
            try await transfer.closeStdin()
            _ = try await transfer.wait()
        } catch {
            throw await Sandbox.fileError(error, machine: machine)
        }
    }

    /// Abandons the upload: the guest removes its temporary file, the destination stays as it was.
    public func cancel() async {
        try? await transfer.signal(SIGKILL)
    }
}

/// A file being read from the guest (``Sandbox/beginDownload(_:maxBytes:)``).
public final class FileDownload: Sendable {
    /// The file as the guest opened it.
    public let entry: FileEntry
    private let transfer: RemoteProcess
    private let machine: any GuestMachine
    private let count = Mutex<UInt64>(0)

    init(transfer: RemoteProcess, machine: any GuestMachine) {
        self.transfer = transfer
        self.entry = transfer.fileEntry!
        self.machine = machine
    }

    /// Bytes received so far.
    public var received: UInt64 { count.withLock { $0 } }

    /// The next chunk, or nil once the guest sent all of it and said so.
    public func next() async throws -> [UInt8]? {
        do {
            var it = transfer.output.makeAsyncIterator()
            if let chunk = try await it.next() {
                count.withLock { $0 += UInt64(chunk.bytes.count) }
                return chunk.bytes
            }
            _ = try await transfer.wait()
            return nil
        } catch {
            throw await Sandbox.fileError(error, machine: machine)
        }
    }

    /// Abandons the download.
    public func cancel() async {
        try? await transfer.signal(SIGKILL)
    }
}
