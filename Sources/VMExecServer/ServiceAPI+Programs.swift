import Foundation
import OpenAPIRuntime
import PythonShards
import ShardLibrary
import SquashMounts
import VMExecService
import VMExecutor

/// Programs: uploaded into the host's shard library, run by name as jobs.
extension ServiceAPI {
    func listPrograms(_ input: Operations.ListPrograms.Input) async throws -> Operations.ListPrograms.Output {
        let programs = try library().list().filter { $0.kind == .program }
        return .ok(.init(body: .json(programs.map(Components.Schemas.Program.init))))
    }

    func installProgram(_ input: Operations.InstallProgram.Input) async throws -> Operations.InstallProgram.Output {
        guard case .binary(let body) = input.body else { throw Self.unsupportedBody }
        let q = input.query
        let library = try library()
        if case .known(let length) = body.length, length > uploadLimit { throw Self.tooLarge(Int(length), limit: uploadLimit) }
        let installed = try library.list(name: q.name)
        let by = "api:\(Caller.owner)"
        if let other = installed.first(where: { $0.installedBy != by }), Caller.owner != "local" {
            throw VMExecError(
                .alreadyExists, "program \(q.name) was installed by \(other.installedBy); choose another name")
        }
        // The upload goes into a folder of its own under the client's file name (whose ending
        // says what it is; a wheel's whole name matters), then becomes a shard; all removed after.
        let folder = library.directory.appendingPathComponent("incoming/upload-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(at: folder) }
        let endings = [".zip", ".tar.gz", ".tgz", ".tar", ".whl"]
        guard !q.filename.contains("/"), q.filename.utf8.count <= 255,
            let ending = endings.first(where: { q.filename.hasSuffix($0) }), q.filename.count > ending.count
        else {
            throw VMExecError(
                .invalidRequest,
                "filename must be the upload's file name (at most 255 bytes, no '/') ending in .zip, .tar.gz, .tgz, .tar or .whl")
        }
        let upload = folder.appendingPathComponent(q.filename).path
        let shardFile = folder.appendingPathComponent("program.shard").path
        guard FileManager.default.createFile(atPath: upload, contents: nil), let handle = FileHandle(forWritingAtPath: upload)
        else { throw ShardError(.io, "cannot write the upload into \(folder.path)") }
        var received = 0
        do {
            for try await chunk in body {
                received += chunk.count
                guard received <= uploadLimit else { throw Self.tooLarge(received, limit: uploadLimit) }
                try handle.write(contentsOf: chunk)
            }
            try handle.close()
        } catch {
            try? handle.close()
            throw error
        }
        var maker = ProgramShardMaker(
            name: q.name, version: try q.version ?? library.nextNumberedVersion(of: q.name))
        maker.entry = q.entry
        maker.requires = (q.requires ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        if q.filename.hasSuffix(".whl") {
            guard
                let sdk = try library.list().first(where: {
                    $0.active && $0.kind == .sdk && $0.manifest.provides.contains("python3")
                })
            else { throw VMExecError(.notFound, "a program from a wheel needs a Python SDK shard in the library") }
            maker.target = try PythonTarget(sdk: sdk.manifest)
        }
        let made = maker
        let result = try await BlockingWork.run {
            _ = try made.make(from: upload, to: shardFile)
            return try library.install(shardFile, by: by)
        }
        return .created(.init(body: .json(.init(result.version))))
    }

    func execProgram(_ input: Operations.ExecProgram.Input) async throws -> Operations.ExecProgram.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        let (entrypoint, folder) = try await registry.prepareProgram(
            owner: Caller.owner, sandbox: input.path.sandbox, program: body.program, version: body.version)
        let request = JobRequest(
            entrypoint + (body.args ?? []), environment: body.env?.additionalProperties ?? [:], workingDirectory: folder,
            timeoutSeconds: try Self.timeout(body.timeoutSeconds), limits: try body.limits?.limits(),
            outputLimit: try Self.outputLimit(body.outputLimitBytes))
        let (result, ended) = try await submit(request, sandbox: input.path.sandbox, wait: body.wait ?? false)
        return ended ? .ok(.init(body: .json(result))) : .accepted(.init(body: .json(result)))
    }

    private func library() throws -> ShardLibrary {
        guard let library = registry.configuration.library else {
            throw VMExecError(.notFound, "this daemon has no shard library")
        }
        return library
    }
}

extension Components.Schemas.Program {
    init(_ v: ShardLibrary.Version) {
        self.init(
            name: v.name, version: v.version, active: v.active, entrypoint: v.manifest.entrypoint ?? [],
            requires: v.manifest.requires, sha256: v.sha256, installed: v.installed, installedBy: v.installedBy,
            signer: v.signer)
    }
}
