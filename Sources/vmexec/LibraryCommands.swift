import ArgumentParser
import Foundation
import Logging
import PythonShards
import ShardLibrary
import SquashMounts
import Synchronization

/// Where the shard library is: `--library`, else `$VMEXEC_LIBRARY`, else `library` in vmexec's state folder.
struct LibraryOptions: ParsableArguments {
    @Option(help: "The shard library's folder (default: $VMEXEC_LIBRARY, then library/ in vmexec's state folder).")
    var library: String?

    func open() throws -> ShardLibrary {
        // The command prints what it did; the library's own log lines are for the daemon's log.
        var logger = Logger(label: "vmexec.library") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .error
        return try ShardLibrary(
            directory: library.map { URL(fileURLWithPath: $0) }
                ?? ShardLibrary.defaultDirectory(state: Serve.defaultStateDirectory()),
            logger: logger)
    }
}

extension LibraryOptions {
    /// A shard given as a file, or as a name of the library (its active version).
    func shard(_ fileOrName: String, in library: ShardLibrary) throws -> Shard {
        if FileManager.default.fileExists(atPath: fileOrName) { return try Shard.open(fileOrName) }
        guard let active = try library.list(name: fileOrName).first(where: \.active) else {
            throw ShardError(.notInstalled, "\(fileOrName) is neither a shard file nor an active shard of the library")
        }
        return try Shard.open(active.path)
    }
}

/// Library shards a command of this process attached: held until the process ends.
let heldCheckouts = Mutex<[ShardCheckout]>([])

extension ShardCommand {
    struct Install: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Install shard files into the library (verified and checked against the trust store).",
            discussion: """
                Each file is checked against the trust store (by default SDK and libs shards must be \
                signed by a trusted key), copied into the library, verified in full, and becomes the \
                active version of its name unless --no-activate. Installing a version that is \
                installed already with the same content changes nothing.
                """)

        @Argument(help: "Shard files.")
        var files: [String]

        @Flag(help: "Install without making it the active version (activate it later).")
        var noActivate = false

        @OptionGroup var library: LibraryOptions

        func run() throws {
            let lib = try library.open()
            for file in files {
                let result = try lib.install(file, activate: !noActivate, by: LibraryLog.currentUser)
                let v = result.version
                let signer = v.signer.map { "signed by \($0)" } ?? "unsigned"
                let state = v.active ? "active" + (result.replaced.map { ", was \($0)" } ?? "") : "not active"
                print(
                    "\(result.added ? "installed" : "already installed") \(v.name) \(v.version) (\(v.kind.rawValue), \(signer), \(state))"
                )
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the library's shards: every version, which is active, who signed it.")

        @Argument(help: "Only this name.")
        var name: String?

        @Flag(help: "Print JSON.")
        var json = false

        @OptionGroup var library: LibraryOptions

        func run() throws {
            let versions = try library.open().list(name: name)
            if json { return try printJSON(versions) }
            print("NAME            VERSION         KIND     ARCH     ACTIVE  SIGNER                        INSTALLED")
            for v in versions {
                print(
                    [
                        v.name.pad(15), v.version.pad(15), v.kind.rawValue.pad(8), v.architecture.pad(8),
                        (v.active ? "*" : "").pad(7), (v.signer ?? "-").pad(29),
                        "\(v.installed.formatted(.iso8601)) by \(v.installedBy)",
                    ].joined(separator: " "))
            }
        }
    }

    struct Activate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an installed version the one `--use NAME` takes (running sandboxes keep theirs until restarted).")

        @Argument var name: String
        @Argument var version: String
        @OptionGroup var library: LibraryOptions

        func run() throws {
            let before = try library.open().activate(name, version, by: LibraryLog.currentUser)
            print("\(name) \(version) is active\(before.map { $0 == version ? " (it was already)" : " (was \($0))" } ?? "")")
        }
    }

    struct Rollback: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Activate the version that was active before the current one.")

        @Argument var name: String
        @OptionGroup var library: LibraryOptions

        func run() throws {
            let (from, to) = try library.open().rollback(name, by: LibraryLog.currentUser)
            print("\(name): \(to) is active (was \(from))")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a version (not the active one), or every version of a name; refused while a sandbox uses it.")

        @Argument var name: String
        @Argument var version: String?
        @OptionGroup var library: LibraryOptions

        func run() throws {
            for v in try library.open().remove(name, version: version, by: LibraryLog.currentUser) {
                print("removed \(v.name) \(v.version)")
            }
        }
    }

    struct GC: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gc",
            abstract: "Remove the versions nothing uses: not active, not the rollback target, not in a running sandbox.")

        @OptionGroup var library: LibraryOptions

        func run() throws {
            let removed = try library.open().gc(by: LibraryLog.currentUser)
            for v in removed { print("removed \(v.name) \(v.version)") }
            if removed.isEmpty { print("nothing to remove") }
        }
    }

    struct Log: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the library's changes: when, who, what.")

        @Option(help: "The newest this many.")
        var limit = 50

        @Flag(help: "Print JSON.")
        var json = false

        @OptionGroup var library: LibraryOptions

        func run() throws {
            let entries = try library.open().history(limit: limit)
            if json { return try printJSON(entries) }
            for e in entries.reversed() {
                let what = [e.name, e.version, e.detail.map { "(\($0))" }].compactMap { $0 }.joined(separator: " ")
                print("\(e.at.formatted(.iso8601))  \(e.by.pad(20)) \(e.action.pad(9)) \(what)")
            }
        }
    }

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign a shard file with an Ed25519 key (its manifest, which holds the image's sha256).")

        @Option(help: "The private key (NAME.key from `vmexec keygen`).")
        var key: String

        @Argument(help: "Shard files; each is rewritten with the signature added.")
        var files: [String]

        func run() throws {
            let signingKey = try ShardSigningKey.load(key)
            for file in files {
                let shard = try ShardSigner.sign(file, with: signingKey)
                print(
                    "\(file): \(shard.manifest.name) \(shard.manifest.version) signed by \(signingKey.publicKey.fingerprint) \(signingKey.name)"
                )
            }
        }
    }
}

extension ShardCommand {
    struct FromWheels: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "from-wheels",
            abstract: "Make one libs shard from a folder of wheels (pip download's) or a site-packages folder, offline.",
            discussion: """
                Every wheel must fit the SDK shard's Python, ABI, architecture and glibc, match its RECORD, \
                and have what it requires among the folder's wheels (or --external). Nothing in the \
                wheels runs on the host; bytecode is compiled in when the host's python3 is the SDK's version.
                """)

        @Argument(help: "The folder of wheels (or a site-packages folder).")
        var folder: String

        @Option(name: .shortAndLong, help: "The shard file to write.")
        var output: String

        @Option(help: "Shard name.")
        var name: String

        @Option(help: "Shard version.")
        var version: String

        @Option(help: "The SDK shard the libraries are for: a file, or a name in the library (its active version).")
        var sdk: String

        @Option(help: "Mount point in the guest (default /opt/libs/NAME).")
        var mount: String?

        @Option(help: "A distribution another shard provides, e.g. numpy (repeatable): required by name, not looked for.")
        var external: [String] = []

        @Option(help: "A Python module the warm interpreter imports ahead of jobs (repeatable).")
        var preload: [String] = []

        @OptionGroup var library: LibraryOptions

        func run() throws {
            let sdkShard = try library.shard(sdk, in: try library.open())
            var maker = LibsShardMaker(
                name: name, version: version, target: try PythonTarget(sdk: sdkShard.manifest), mountPoint: mount)
            maker.external = external
            maker.preload = preload
            let report = try maker.make(from: folder, to: output)
            let m = report.shard.manifest
            print(
                "\(output): \(m.name) \(m.version) for \(m.requires.joined(separator: ", ")) on \(m.architecture), \(report.shard.fileBytes) bytes"
            )
            print("  provides \(report.distributions.joined(separator: " "))")
            if !report.bytecode { print("  no bytecode compiled in (the host's python3 is not the SDK's version)") }
        }
    }
}

/// `vmexec keygen`: a key pair to sign shards with.
struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make an Ed25519 key pair for signing shards: NAME.key (private, mode 0600) and NAME.pub.")

    @Option(name: .shortAndLong, help: "NAME: the files are NAME.key and NAME.pub.")
    var output: String

    @Option(help: "The name the key carries (default: the file name).")
    var name: String?

    func run() throws {
        let key = ShardSigningKey(name: name ?? (output as NSString).lastPathComponent)
        try key.save(base: output)
        print("\(output).key (keep it private) and \(output).pub: key \(key.publicKey.fingerprint) \(key.name)")
    }
}

/// `vmexec trust …`: the keys whose signatures this host accepts, and the policy.
struct TrustCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trust",
        abstract: "The public keys this host trusts to sign shards, and which shards need a signature.",
        subcommands: [Add.self, List.self, Remove.self, Revoke.self, Policy.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Trust a public key (NAME.pub).")

        @Argument(help: "The public key file.")
        var file: String

        @Option(help: "The name to list it under (default: the name in the file).")
        var name: String?

        @OptionGroup var library: LibraryOptions

        func run() throws {
            let key = try library.open().trust.add(try ShardPublicKey.load(file), name: name, by: LibraryLog.currentUser)
            print("trusted key \(key.fingerprint) \(key.name)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List trusted and revoked keys.")

        @Flag(help: "Print JSON.")
        var json = false

        @OptionGroup var library: LibraryOptions

        func run() throws {
            let keys = try library.open().trust.keys()
            if json { return try printJSON(keys) }
            print("FINGERPRINT       NAME                 STATE")
            for k in keys {
                let state =
                    k.revoked.map { "revoked \($0.formatted(.iso8601)) by \(k.revokedBy ?? "?")" }
                    ?? "trusted since \(k.added.formatted(.iso8601)) by \(k.addedBy)"
                print("\(k.fingerprint.pad(17)) \(k.name.pad(20)) \(state)")
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop trusting a key (by name or fingerprint); its shards are refused as untrusted.")

        @Argument var key: String
        @OptionGroup var library: LibraryOptions

        func run() throws {
            let k = try library.open().trust.remove(key, by: LibraryLog.currentUser)
            print("no longer trusted: \(k.fingerprint) \(k.name)")
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a key (name, fingerprint or .pub file): its shards are refused at install and at attach, for good.")

        @Argument var key: String
        @OptionGroup var library: LibraryOptions

        func run() throws {
            let trust = try library.open().trust
            let user = LibraryLog.currentUser
            let k =
                FileManager.default.fileExists(atPath: key)
                ? try trust.revoke(try ShardPublicKey.load(key), by: user) : try trust.revoke(key, by: user)
            print("revoked: \(k.fingerprint) \(k.name)")
        }
    }

    struct Policy: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the policy, or set whether a kind of shard must be signed: policy KIND signed|any.")

        @Argument var kind: ShardManifest.Kind?
        @Argument var requirement: TrustPolicy.Requirement?
        @OptionGroup var library: LibraryOptions

        func validate() throws {
            if (kind == nil) != (requirement == nil) { throw ValidationError("give both KIND and signed|any, or neither") }
        }

        func run() throws {
            let trust = try library.open().trust
            if let kind, let requirement { try trust.setPolicy(kind, requirement, by: LibraryLog.currentUser) }
            let policy = try trust.policy()
            for kind in ShardManifest.Kind.allCases {
                let r = policy.requirement(for: kind)
                print("\(kind.rawValue.pad(8)) \(r == .signed ? "must be signed by a trusted key" : "needs no signature")")
            }
            print("(any shard that is a layer, mounts outside /opt, sets other environment or preloads modules must be signed)")
        }
    }
}

extension TrustPolicy.Requirement: ExpressibleByArgument {}
