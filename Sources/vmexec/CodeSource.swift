import Foundation
import SquashMounts
import VMExecutor

/// What `vmexec python` and `vmexec node` share: where the code comes from, and the SDK shard.
enum CodeSource {
    /// The code of `-c`, a FILE, or stdin (`-`), and the name tracebacks give it.
    static func read(code: String?, file: String?) throws -> (source: String, filename: String) {
        if let code { return (code, "<string>") }
        let path = file ?? "-"
        if path == "-" {
            return (String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self), "<stdin>")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw VMExecError(.notFound, "cannot read \(path)")
        }
        return (String(decoding: data, as: UTF8.self), (path as NSString).lastPathComponent)
    }

    /// The images' SDK shard `file`, unless a shard given already provides `provides`.
    static func addSDK(to configuration: inout SandboxConfiguration, provides: String, file: String, language: String) throws {
        guard !configuration.shards.contains(where: { $0.manifest.provides.contains(provides) }),
            let images = configuration.images
        else { return }
        let sdk = images.directory.appendingPathComponent(file).path
        guard FileManager.default.fileExists(atPath: sdk) else {
            throw VMExecError(.notFound, "no \(language): give --shard with its SDK shard, or build the images' (make images)")
        }
        configuration.shards.insert(try Shard.open(sdk), at: 0)
    }
}
