import ArgumentParser
import Foundation
import SquashMounts

/// `vmexec shard …`: build, import, inspect and verify shards.
struct ShardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shard",
        abstract: "Build, sign, inspect and verify shards; install them into the library and choose the active versions.",
        subcommands: [
            Create.self, Import.self, Inspect.self, Verify.self, Sign.self, Install.self, List.self, Activate.self,
            Rollback.self, Remove.self, GC.self, Log.self, FromWheels.self,
        ])

    /// Manifest and image options shared by `create` and `import`.
    struct BuildOptions: ParsableArguments {
        @Option(name: .shortAndLong, help: "The shard file to write.")
        var output: String

        @Option(help: "Shard name (letters, digits, . _ - +).")
        var name: String

        @Option(help: "Shard version.")
        var version: String

        @Option(help: "What the shard carries: sdk, libs, program or data.")
        var kind: ShardManifest.Kind

        @Option(help: "Mount point in the guest, e.g. /opt/libs/numpy.")
        var mount: String?

        @Option(help: "Merge into the root file system as a read-only layer of this order (higher lies above).")
        var layer: Int?

        @Option(
            help:
                "Architecture of the machine code inside: x86_64, aarch64 or any (default: that of the ELF files inside, any without)."
        )
        var arch: String?

        @Option(help: "A capability the shard offers, e.g. python3.11 (repeatable).")
        var provides: [String] = []

        @Option(help: "A capability another shard must offer, e.g. python3.11 (repeatable).")
        var requires: [String] = []

        @Option(
            name: .customLong("env"),
            help: "NAME=PATH prepended to NAME in the guest, e.g. PYTHONPATH=/opt/libs/numpy (repeatable).")
        var environment: [String] = []

        @Option(help: "A Python module the sandbox's warm interpreter imports ahead of jobs, e.g. numpy (repeatable).")
        var preload: [String] = []

        @Option(help: "Compressor: zstd, xz or gzip.")
        var compressor: ShardCompressor = .zstd

        @Option(help: "Data block size in bytes (power of two, 4096 to 1048576).")
        var blockSize: Int = 128 * 1024

        @Flag(help: "Store every entry as owned by root instead of its owner.")
        var rootOwned = false

        @Option(help: "Superblock time stamp (seconds since the epoch; default: the newest entry's mtime).")
        var mtime: UInt32?

        func validate() throws {
            guard (mount == nil) != (layer == nil) else {
                throw ValidationError("give exactly one of --mount PATH and --layer ORDER")
            }
        }

        /// The manifest, for machine code of `architecture` (default: `--arch`, else any).
        func manifest(architecture: String? = nil) throws -> ShardManifest {
            var env: [String: String] = [:]
            for pair in environment {
                guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                    throw ValidationError("--env takes NAME=PATH, not '\(pair)'")
                }
                env[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
            }
            let placement: ShardManifest.Placement = mount.map { .mount($0) } ?? .layer(order: layer ?? 0)
            return ShardManifest(
                name: name, version: version, kind: kind, architecture: architecture ?? arch ?? "any", placement: placement,
                provides: provides, requires: requires, environment: env, preload: preload.isEmpty ? nil : preload)
        }

        var squashfsOptions: SquashfsOptions {
            var o = SquashfsOptions()
            o.compressor = compressor
            o.blockSize = blockSize
            o.rootOwned = rootOwned
            o.modificationTime = mtime
            return o
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Build a shard from a directory.")

        @Argument(help: "The directory whose tree becomes the shard.")
        var directory: String

        @OptionGroup var build: BuildOptions

        func run() throws {
            // The files say which architecture they are for: a mismatch is refused here, not in a guest.
            let architecture = try MachineCode.shardArchitecture(of: directory, declared: build.arch)
            let shard = try ShardBuilder.create(
                from: directory, to: build.output, manifest: try build.manifest(architecture: architecture),
                options: build.squashfsOptions)
            report(shard)
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build a shard straight from a tar, tar.gz, tar.xz or zip archive.")

        @Argument(help: "The archive.")
        var archive: String

        @OptionGroup var build: BuildOptions

        func run() throws {
            let shard = try ShardBuilder.importArchive(
                archive, to: build.output, manifest: try build.manifest(),
                options: build.squashfsOptions)
            report(shard)
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a shard's manifest, superblock and file list, or one file's content.")

        @Argument(help: "The shard file.")
        var file: String

        @Flag(help: "Print JSON.")
        var json = false

        @Flag(help: "Also compute each file's sha256.")
        var hashes = false

        @Option(help: "Write the content of this file inside the shard to stdout instead.")
        var cat: String?

        func run() throws {
            let shard = try Shard.open(file)
            if let cat {
                try shard.readFile(cat) { bytes in FileHandle.standardOutput.write(Data(bytes)) }
                return
            }
            let inspection = try shard.inspect(hashes: hashes)
            if json { return try printJSON(inspection) }
            let m = inspection.manifest
            let s = inspection.squashfs
            print(
                """
                shard        \(m.name) \(m.version) (\(m.kind.rawValue), \(m.architecture))
                placement    \(m.placement)
                provides     \(m.provides.joined(separator: ", "))
                requires     \(m.requires.joined(separator: ", "))
                environment  \(m.environment.sorted { $0.key < $1.key }.map { "\($0.key)+=\($0.value)" }.joined(separator: " "))
                preload      \((m.preload ?? []).joined(separator: ", "))
                sha256       \(m.image?.sha256 ?? "")
                signed by    \(shard.signatures.isEmpty ? "nobody" : shard.signatures.map { "\($0.fingerprint)\($0.isValid(for: shard) ? "" : " (INVALID: changed after signing)")" }.joined(separator: ", "))
                file         \(inspection.fileBytes) bytes
                squashfs     \(s.compressor), block \(s.blockSize), \(s.inodeCount) inodes, \(s.bytesUsed) bytes used, \(s.fragmentCount) fragments\(s.hasXattrs ? ", xattrs" : "")
                """)
            for e in inspection.entries {
                let mode = String(e.mode, radix: 8)
                let link = e.linkTarget.map { " -> \($0)" } ?? ""
                let hash = e.sha256.map { " \($0)" } ?? ""
                print(
                    "\(e.type.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)) \(String(repeating: "0", count: max(0, 4 - mode.count)) + mode) \(e.uid):\(e.gid) \(String(e.size).leftPadded(10)) \(e.path)\(link)\(hash)"
                )
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a shard: sha256 against its manifest, superblock, every table and every file's data.")

        @Argument(help: "The shard file.")
        var file: String

        @Flag(help: "Print JSON.")
        var json = false

        @Flag(help: "Skip reading every file's data (the sha256 still covers it).")
        var quick = false

        func run() throws {
            let verification = try Shard.open(file).verify(deep: !quick)
            if json { return try printJSON(verification) }
            print("\(verification.path): \(verification.name) \(verification.version) is intact")
            for check in verification.checks { print("  ok  \(check)") }
        }
    }
}

/// What `create` and `import` print: the file, what it is, its size and sha256.
private func report(_ shard: Shard) {
    print(
        "\(shard.path): \(shard.manifest.name) \(shard.manifest.version), \(shard.fileBytes) bytes, sha256 \(shard.manifest.image?.sha256 ?? "")"
    )
}

extension ShardManifest.Kind: ExpressibleByArgument {}
extension ShardCompressor: ExpressibleByArgument {}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}

func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.dateEncodingStrategy = .iso8601
    FileHandle.standardOutput.write(try encoder.encode(value))
    FileHandle.standardOutput.write(Data("\n".utf8))
}
