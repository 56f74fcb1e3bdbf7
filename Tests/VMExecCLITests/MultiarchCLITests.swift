import Foundation
import Testing
import VMExecTestSupport
import VMExecutor

extension CLISuites {
    /// The multiarch use: one C program built on this host for every
    /// architecture vmexec boots, each build in a program shard, the same
    /// test command in each guest (examples/multiarch). `make test` builds
    /// both architectures' images for it.
    @Suite("One program on every architecture", .timeLimit(.minutes(10)))
    struct MultiarchCLITests {
        typealias CLI = CLITests

        @Test(
            "examples/multiarch: each architecture's shard passes its tests in its guest with the same command; a foreign one is refused before boot"
        )
        func sameTestsOnEveryArchitecture() async throws {
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized
            let work = FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-multiarch-\(UUID())").path
            try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: work) }
            var shards: [GuestArchitecture: String] = [:]
            for arch in GuestArchitecture.allCases {
                try #require(
                    TestImages.images(for: arch) != nil,
                    "no \(arch.rawValue) guest images beside \(TestImages.images?.directory.path ?? "?"): run make images ARCH=\(arch.rawValue)"
                )
                let shard = work + "/checksum-\(arch.rawValue).shard"
                let build = try await Self.shell(
                    root.appendingPathComponent("examples/multiarch/build.sh").path, arch.rawValue, shard,
                    environment: ["VMEXEC": root.appendingPathComponent(".build/debug/vmexec").path])
                try #require(build.status == 0, "build.sh \(arch.rawValue): \(build.output)")
                // The shard's architecture comes from the binary inside (build.sh passes no --arch).
                let inspect = try await CLI.vmexec(["shard", "inspect", shard])
                #expect(inspect.stdout.contains("(program, \(arch.rawValue))"), "\(inspect.stdout)")
                shards[arch] = shard
            }
            var outputs: [String] = []
            for arch in GuestArchitecture.allCases {
                let images = try #require(TestImages.images(for: arch)).directory.path
                let run = try await CLI.vmexec([
                    "run", "--arch", arch.rawValue, "--images", images, "--shard", shards[arch]!, "--",
                    "/opt/checksum/tests/run-tests",
                ])
                #expect(run.status == 0, "\(arch.rawValue): \(run.stdout)\(run.stderr)")
                #expect(run.stdout.contains("ok 5 - built for the machine it runs on"), "\(arch.rawValue): \(run.stdout)")
                #expect(!run.stdout.contains("not ok"), "\(arch.rawValue): \(run.stdout)")
                outputs.append(run.stdout)

                // Another architecture's build is refused by name, before a guest boots.
                let other = GuestArchitecture.allCases.first { $0 != arch }!
                let started = Date()
                let foreign = try await CLI.vmexec([
                    "run", "--arch", arch.rawValue, "--images", images, "--shard", shards[other]!, "--",
                    "/opt/checksum/tests/run-tests",
                ])
                #expect(foreign.status == 125, "\(arch.rawValue) with \(other.rawValue)'s shard: \(foreign.stderr)")
                #expect(
                    foreign.stderr.contains("is built for \(other.rawValue), but the guest is \(arch.rawValue)"),
                    "\(foreign.stderr)")
                #expect(Date().timeIntervalSince(started) < 0.5 * 60, "refused before boot, not after a guest's timeout")
            }
            // The same tests, the same results, whatever the machine.
            #expect(Set(outputs).count == 1, "\(outputs)")
        }

        /// A host shell script run to its end on a Dispatch thread, its output and error together.
        static func shell(_ script: String, _ args: String..., environment: [String: String]) async throws -> (
            status: Int32, output: String
        ) {
            try await withCheckedThrowingContinuation { c in
                DispatchQueue.global().async {
                    c.resume(
                        with: Result {
                            let p = Process()
                            p.executableURL = URL(fileURLWithPath: "/bin/sh")
                            p.arguments = [script] + args
                            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
                            let out = Pipe()
                            p.standardOutput = out
                            p.standardError = out
                            try p.run()
                            let data = out.fileHandleForReading.readDataToEndOfFile()
                            p.waitUntilExit()
                            return (p.terminationStatus, String(decoding: data, as: UTF8.self))
                        })
                }
            }
        }
    }
}
