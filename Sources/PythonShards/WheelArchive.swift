import Crypto
import Foundation
import SquashMounts

/// One wheel unpacked into a site folder the way an installer lays it out, without running
/// anything from it: wheels carry no install scripts, and none of their code runs on the host.
///
/// `NAME.data/purelib` and `platlib` go to the site root, `scripts` to `bin/` (a `#!python`
/// line becomes the guest's interpreter), `headers` to `include/NAME/`, `data` to `data/`.
/// Every file is checked against the wheel's RECORD (sha256 and size); paths that would
/// leave the folder, and shared objects for another architecture, are refused.
struct WheelArchive {
    let path: String
    let name: WheelName

    /// What the wheel declared in its `*.dist-info`.
    struct Metadata {
        var name: String
        var version: String
        var requiresPython: String?
        var requirements: [PackageRequirement]
        var consoleScripts: [(name: String, target: String)]
    }

    /// The most of a `.dist-info` file kept in memory to be read (METADATA, RECORD, entry points).
    static let textLimit = 16 << 20

    /// Unpacks into `site`; returns the wheel's metadata and the files it wrote (relative paths).
    /// Each file streams to disk as it is read, its sha256 taken on the way: memory stays
    /// small whatever the wheel holds.
    func unpack(into site: URL, target: PythonTarget, python: String, budget: UnpackBudget) throws(ShardError) -> (
        Metadata, [String]
    ) {
        let reader = try ArchiveReader(path, formats: .zip, hint: "wheel \(name.file) is no zip file")
        let dataDir = "\(name.distribution)-\(name.version).data/"
        var digests: [String: (String, Int)] = [:]
        var written: [String] = []
        var texts: [String: String] = [:]
        while let entry = try reader.next() {
            guard let raw = entry.path, entry.type == S_IFREG else { continue }
            let display = "\(name.file):\(raw)"
            _ = try ArchiveImporterPaths.components(of: raw, entry: display)
            var destination = raw
            var mode: mode_t = entry.permissions & 0o111 != 0 ? 0o755 : 0o644
            var script = false
            if raw.hasPrefix(dataDir) {
                let rest = raw.dropFirst(dataDir.count)
                let scheme = rest.prefix { $0 != "/" }
                let inner = String(rest.dropFirst(scheme.count + 1))
                switch scheme {
                case "purelib", "platlib": destination = inner
                case "scripts":
                    destination = "bin/" + inner
                    mode = 0o755
                    script = true
                case "headers": destination = "include/\(name.distribution)/" + inner
                default: destination = "data/" + inner
                }
            }
            let file = try WheelEntryFile(site: site, relative: destination, wheel: name.file)
            var original = SHA256()
            var size = 0
            // The dist-info files are read as text too (METADATA, RECORD, entry points).
            let keepsText = raw.contains(".dist-info/") && !raw.hasPrefix(dataDir)
            var text: [UInt8] = []
            let machineCode = destination.hasSuffix(".so") || destination.contains(".so.")
            // The file's first bytes wait until they can be judged: an ELF header's
            // architecture, a script's `#!python` line (replaced by the guest's interpreter).
            var head: [UInt8]? = script || machineCode ? [] : nil
            func judge(_ bytes: [UInt8]) throws(ShardError) -> [UInt8] {
                if machineCode { try checkMachine(bytes, file: raw, target: target) }
                guard script, bytes.starts(with: Array("#!python".utf8)) else { return bytes }
                let line = bytes.firstIndex(of: 10) ?? bytes.endIndex
                return Array("#!\(python)".utf8) + bytes[line...]
            }
            try reader.readData { chunk throws(ShardError) in
                try budget.take(chunk.count, entry: display)
                original.update(bufferPointer: chunk)
                size += chunk.count
                if keepsText {
                    guard text.count + chunk.count <= Self.textLimit else {
                        throw ShardError(.badArchive, "wheel \(name.file): \(raw) is larger than \(Self.textLimit >> 20) MiB")
                    }
                    text += chunk
                }
                guard var pending = head else { return try file.append(chunk) }
                pending += chunk
                // Judged once what is judged has arrived (chunks may be a few bytes at the
                // archive's block boundaries): an ELF header's 20 bytes, a script's first line.
                let complete = (!machineCode || pending.count >= 20) && (!script || pending.contains(10))
                if pending.count >= 4096 || complete {
                    head = nil
                    try file.append(judge(pending))
                } else {
                    head = pending
                }
            }
            if let pending = head { try file.append(judge(pending)) }
            try file.finish(mode: mode)
            digests[raw] = (Self.recordDigest(original.finalize()), size)
            if keepsText { texts[String(raw.split(separator: "/").last ?? "")] = String(decoding: text, as: UTF8.self) }
            written.append(destination)
        }
        let metadata = try metadata(texts)
        try checkRecord(texts["RECORD"], digests)
        for script in metadata.consoleScripts {
            let parts = script.target.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty else { continue }
            let attribute = parts[1].split(separator: " ").first.map(String.init) ?? parts[1]
            let text = """
                #!\(python)
                import sys
                from \(parts[0]) import \(attribute.split(separator: ".").first ?? "")
                sys.exit(\(attribute)())

                """
            try write(Array(text.utf8), to: site, relative: "bin/" + script.name, mode: 0o755)
            written.append("bin/" + script.name)
        }
        return (metadata, written)
    }

    private func metadata(_ texts: [String: String]) throws(ShardError) -> Metadata {
        guard let text = texts["METADATA"] else {
            throw ShardError(.badArchive, "wheel \(name.file) has no .dist-info/METADATA: it is not a wheel")
        }
        var fields: [(String, String)] = []
        for line in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            if line.isEmpty { break }  // the description follows the headers
            guard let colon = line.firstIndex(of: ":"), !line.hasPrefix(" ") else { continue }
            fields.append(
                (String(line[..<colon]).lowercased(), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        let name = fields.first { $0.0 == "name" }?.1 ?? self.name.distribution
        let version = fields.first { $0.0 == "version" }?.1 ?? self.name.version
        var scripts: [(String, String)] = []
        var section = ""
        for line in (texts["entry_points.txt"] ?? "").split(whereSeparator: \.isNewline) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("[") {
                section = trimmed
                continue
            }
            guard section == "[console_scripts]", let eq = trimmed.firstIndex(of: "=") else { continue }
            let scriptName = trimmed[..<eq].trimmingCharacters(in: .whitespaces)
            guard !scriptName.isEmpty, !scriptName.contains("/") else { continue }
            scripts.append((scriptName, trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: .whitespaces)))
        }
        return Metadata(
            name: name, version: version, requiresPython: fields.first { $0.0 == "requires-python" }?.1,
            requirements: fields.filter { $0.0 == "requires-dist" }.compactMap { PackageRequirement($0.1) },
            consoleScripts: scripts)
    }

    /// Every file the RECORD lists must be there with its sha256 and size (RECORD itself has none).
    private func checkRecord(_ record: String?, _ digests: [String: (String, Int)]) throws(ShardError) {
        guard let record else { throw ShardError(.badArchive, "wheel \(name.file) has no RECORD: it is not a wheel") }
        for line in record.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard fields.count >= 3, fields[1].hasPrefix("sha256=") else { continue }
            let file = fields[0].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            guard let (digest, size) = digests[file] else {
                throw ShardError(.badArchive, "wheel \(name.file) lists \(file) in its RECORD but does not hold it: damaged")
            }
            guard digest == fields[1].dropFirst(7), String(size) == fields[2] || fields[2].isEmpty else {
                throw ShardError(
                    .checksumMismatch, "wheel \(name.file): \(file) does not match its RECORD: the wheel is damaged or altered")
            }
        }
    }

    /// A digest as RECORD writes it: urlsafe base64 without padding.
    static func recordDigest(_ digest: SHA256.Digest) -> String {
        Data(digest).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    private func checkMachine(_ bytes: [UInt8], file: String, target: PythonTarget) throws(ShardError) {
        guard let arch = MachineCode.architecture(ofHeader: Array(bytes.prefix(20))), arch != target.architecture else {
            return
        }
        throw ShardError(
            .wrongArchitecture, "wheel \(name.file): \(file) is machine code for \(arch), and the SDK is \(target.architecture)")
    }

    private func write(_ bytes: [UInt8], to site: URL, relative: String, mode: mode_t) throws(ShardError) {
        let url = site.appendingPathComponent(relative)
        do {
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        } catch {
            throw ShardError(.io, "creating \(url.deletingLastPathComponent().path): \(error)")
        }
        if let existing = FileManager.default.contents(atPath: url.path) {
            guard [UInt8](existing) == bytes else {
                throw ShardError(
                    .conflict, "wheel \(name.file) holds \(relative), which another wheel holds with other content")
            }
            return
        }
        guard FileManager.default.createFile(atPath: url.path, contents: Data(bytes)), chmod(url.path, mode) == 0 else {
            throw ShardError(.io, "writing \(url.path): \(String(cString: strerror(errno)))")
        }
    }
}
