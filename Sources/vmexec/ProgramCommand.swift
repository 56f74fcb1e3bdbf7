import ArgumentParser
import Foundation
import PythonShards
import ShardLibrary
import SquashMounts
import VMExecutor

/// `vmexec program …`: programs as shards of the library, run by name with what they require.
struct ProgramCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "program",
        abstract: "Install programs (a folder, zip, wheel or sdist) into the library and run them by name.",
        subcommands: [Install.self, RunProgram.self, List.self])

    struct Install: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a program shard and install it as the active version of NAME.",
            discussion: """
                The entry point is a main.py at the top, else a __main__.py at the top, else the one \
                package with a __main__.py, else the one console script; or --entry. What it requires \
                (--requires, a top-level requirements.txt, a wheel's dependencies) is looked for among \
                the library's shards when it runs.
                """)

        @Argument(help: "A folder, a .zip, a .whl, or an sdist (.tar.gz).")
        var source: String

        @Option(help: "The program's name.")
        var name: String

        @Option(help: "Its version (default: one more than the highest numbered version installed).")
        var version: String?

        @Option(help: "main.py (a file), package.module (run with -m) or module:function.")
        var entry: String?

        @Option(help: "A library it needs, by name, e.g. numpy (repeatable).")
        var requires: [String] = []

        @Option(help: "For a wheel: the SDK shard it runs on, a file or a library name (default: cpython).")
        var sdk: String = "cpython"

        @OptionGroup var library: LibraryOptions

        func run() throws {
            let lib = try library.open()
            var maker = ProgramShardMaker(name: name, version: try version ?? lib.nextNumberedVersion(of: name))
            maker.entry = entry
            maker.requires = requires
            if source.hasSuffix(".whl") { maker.target = try PythonTarget(sdk: try library.shard(sdk, in: lib).manifest) }
            let file = lib.directory.appendingPathComponent("incoming/program-\(name)-\(getpid()).shard").path
            defer { unlink(file) }
            let shard = try maker.make(from: source, to: file)
            let result = try lib.install(file, by: LibraryLog.currentUser)
            let m = shard.manifest
            print(
                "installed program \(m.name) \(m.version)\(result.replaced.map { " (was \($0))" } ?? ""): \((m.entrypoint ?? []).joined(separator: " "))"
            )
            do {
                _ = try lib.resolve([m.name], architecture: GuestArchitecture.preferred.rawValue)
            } catch let error as ShardError {
                print("note: it cannot run yet: \(error.message)")
            }
        }
    }

    struct RunProgram: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "run",
            abstract: "Run an installed program with the libraries and SDK it requires; exits with its code.")

        @OptionGroup var guest: GuestOptions
        @OptionGroup var options: CommandOptions

        @Argument(help: "The program's name (NAME==VERSION for another than the active one).")
        var program: String

        @Argument(parsing: .captureForPassthrough, help: "Its arguments.")
        var arguments: [String] = []

        func run() async throws {
            let versions = try guest.library.open().resolve([program], architecture: guest.arch.rawValue)
            guard let shard = versions.first, shard.kind == .program, let entrypoint = shard.manifest.entrypoint else {
                throw ShardError(.invalidArgument, "\(program) is not a program of the library (`vmexec program list`)")
            }
            var run = try Run.parse(["--", "true"])
            run.guest = guest
            run.guest.uses.append(program)
            run.options = options
            if run.options.workdir == "/", case .mount(let folder) = shard.manifest.placement {
                run.options.workdir = folder
            }
            run.command = entrypoint + (arguments.first == "--" ? Array(arguments.dropFirst()) : arguments)
            try await run.run()
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List installed programs: versions, entry points, requirements.")

        @Flag(help: "Print JSON.")
        var json = false

        @OptionGroup var library: LibraryOptions

        func run() throws {
            let programs = try library.open().list().filter { $0.kind == .program }
            if json { return try printJSON(programs) }
            print("NAME            VERSION  ACTIVE  ENTRY POINT                              REQUIRES")
            for p in programs {
                print(
                    [
                        p.name.pad(15), p.version.pad(8), (p.active ? "*" : "").pad(7),
                        (p.manifest.entrypoint ?? []).joined(separator: " ").pad(40), p.manifest.requires.joined(separator: ", "),
                    ].joined(separator: " "))
            }
        }
    }
}
