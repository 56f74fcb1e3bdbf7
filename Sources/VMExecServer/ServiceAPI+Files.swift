import Foundation
import OpenAPIRuntime
import VMExecService
import VMExecutor

/// Files and processes of a sandbox's guest. Paths are checked here before
/// the guest sees them (absolute, no `..`, no NUL); the guest resolves them
/// inside its root as well.
extension ServiceAPI {
    func downloadFile(_ input: Operations.DownloadFile.Input) async throws -> Operations.DownloadFile.Output {
        let path = try Self.guestPath(input.query.path)
        let sandbox = try await registry.sandbox(owner: Caller.owner, name: input.path.sandbox)
        let download = try await sandbox.beginDownload(path)
        let (stream, continuation) = AsyncThrowingStream<ArraySlice<UInt8>, any Error>.makeStream(
            bufferingPolicy: .bufferingOldest(4))
        let producer = Task {
            do {
                while let chunk = try await download.next() {
                    while case .dropped = continuation.yield(ArraySlice(chunk)) {
                        try await Task.sleep(for: .milliseconds(5))
                    }
                }
                continuation.finish()
            } catch {
                await download.cancel()
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in producer.cancel() }
        let body = HTTPBody(stream, length: .known(Int64(download.entry.size)), iterationBehavior: .single)
        return .ok(.init(body: .binary(body)))
    }

    func uploadFile(_ input: Operations.UploadFile.Input) async throws -> Operations.UploadFile.Output {
        guard case .binary(let body) = input.body else { throw Self.unsupportedBody }
        let q = input.query
        let path = try Self.guestPath(q.path)
        let mode = try q.mode.map(Self.mode)
        if case .known(let length) = body.length, length > uploadLimit {
            throw Self.tooLarge(Int(length), limit: uploadLimit)
        }
        let sandbox = try await registry.sandbox(owner: Caller.owner, name: input.path.sandbox)
        let overwrite = q.overwrite ?? false
        if !overwrite, (try? await sandbox.fileInfo(path, followSymlinks: false)) != nil {
            throw VMExecError(.alreadyExists, "\(path) exists in the guest; pass overwrite=true to replace it")
        }
        let options = FileOptions(mode: mode, createParents: q.parents ?? false, replace: overwrite)
        if case .known(let length) = body.length {
            // Streamed into the guest as it arrives: any size within the limit in bounded memory.
            let upload = try await sandbox.beginUpload(to: path, size: UInt64(length), options: options)
            do {
                for try await chunk in body {
                    guard upload.sent + UInt64(chunk.count) <= UInt64(length) else {
                        throw VMExecError(.invalidRequest, "the body is longer than its Content-Length; nothing was written")
                    }
                    try await upload.write(Array(chunk))
                }
                guard upload.remaining == 0 else {
                    throw VMExecError(.invalidRequest, "the body ended before its Content-Length; nothing was written")
                }
                try await upload.finish()
            } catch {
                await upload.cancel()
                throw error
            }
        } else {
            var bytes: [UInt8] = []
            for try await chunk in body {
                guard bytes.count + chunk.count <= uploadLimit else { throw Self.tooLarge(nil, limit: uploadLimit) }
                bytes += chunk
            }
            try await sandbox.writeFile(path, contents: bytes, options: options)
        }
        let entry = try await sandbox.fileInfo(path, followSymlinks: false)
        return .created(.init(body: .json(.init(entry, path: path))))
    }

    func deleteFile(_ input: Operations.DeleteFile.Input) async throws -> Operations.DeleteFile.Output {
        let path = try Self.guestPath(input.query.path)
        guard path != "/" else { throw VMExecError(.invalidRequest, "the guest's root cannot be deleted") }
        let sandbox = try await registry.sandbox(owner: Caller.owner, name: input.path.sandbox)
        try await sandbox.remove(path, recursive: input.query.recursive ?? false)
        return .noContent(.init())
    }

    func statFile(_ input: Operations.StatFile.Input) async throws -> Operations.StatFile.Output {
        let path = try Self.guestPath(input.query.path)
        let sandbox = try await registry.sandbox(owner: Caller.owner, name: input.path.sandbox)
        let entry = try await sandbox.fileInfo(path, followSymlinks: false)
        return .ok(.init(body: .json(.init(entry, path: path))))
    }

    func listFiles(_ input: Operations.ListFiles.Input) async throws -> Operations.ListFiles.Output {
        let path = try Self.guestPath(input.query.path)
        let sandbox = try await registry.sandbox(owner: Caller.owner, name: input.path.sandbox)
        let entries = try await sandbox.listDirectory(path, maxEntries: 100_000)
        let prefix = path.hasSuffix("/") ? path : path + "/"
        return .ok(.init(body: .json(entries.map { .init($0, path: prefix + $0.name) })))
    }

    func makeDirectory(_ input: Operations.MakeDirectory.Input) async throws -> Operations.MakeDirectory.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        let path = try Self.guestPath(body.path)
        let options = FileOptions(mode: try body.mode.map(Self.mode), createParents: body.parents ?? false)
        let sandbox = try await registry.sandbox(owner: Caller.owner, name: input.path.sandbox)
        try await sandbox.makeDirectory(path, options: options)
        let entry = try await sandbox.fileInfo(path, followSymlinks: false)
        return .created(.init(body: .json(.init(entry, path: path))))
    }

    func listProcesses(_ input: Operations.ListProcesses.Input) async throws -> Operations.ListProcesses.Output {
        let sandbox = try await registry.sandbox(owner: Caller.owner, name: input.path.sandbox)
        return .ok(.init(body: .json(try await sandbox.processes().map(Components.Schemas.Process.init))))
    }

    func signalProcess(_ input: Operations.SignalProcess.Input) async throws -> Operations.SignalProcess.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        guard (2...4_194_304).contains(input.path.pid) else {
            throw VMExecError(.invalidRequest, "pid must be 2-4194304 (the init, pid 1, takes no signals)")
        }
        let number = try SignalName.number(body.signal)
        let sandbox = try await registry.sandbox(owner: Caller.owner, name: input.path.sandbox)
        try await sandbox.signal(pid: UInt32(input.path.pid), number, group: body.group ?? false)
        return .noContent(.init())
    }

    // MARK: checks

    /// An absolute guest path with no `..` component and no NUL, at most 4096 bytes.
    static func guestPath(_ path: String) throws -> String {
        guard path.hasPrefix("/"), path.utf8.count <= 4096, !path.utf8.contains(0) else {
            throw VMExecError(.invalidRequest, "a guest path must be absolute and at most 4096 bytes: '\(path.prefix(80))'")
        }
        guard !path.split(separator: "/").contains("..") else {
            throw VMExecError(.invalidRequest, "a guest path may not contain '..': '\(path.prefix(80))'")
        }
        return path
    }

    static func mode(_ text: String) throws -> UInt32 {
        guard (1...4).contains(text.count), let bits = UInt32(text, radix: 8), bits <= 0o7777 else {
            throw VMExecError(.invalidRequest, "mode takes permission bits in octal, e.g. 644, not '\(text)'")
        }
        return bits
    }

    static func tooLarge(_ size: Int?, limit: Int) -> VMExecError {
        VMExecError(
            .fileTooLarge,
            "the upload\(size.map { " (\($0) bytes)" } ?? "") is over the daemon's limit of \(limit) bytes; "
                + "nothing was written (vmexec serve --upload-limit raises it)")
    }
}
