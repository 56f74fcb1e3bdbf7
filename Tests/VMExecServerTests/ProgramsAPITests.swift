import Foundation
import ShardLibrary
import SquashMounts
import Testing
import VMExecClient
import VMExecTestSupport

extension DaemonSuites {
    /// Programs over HTTP: uploaded into the library, listed, run by name as jobs.
    @Suite("Programs", .timeLimit(.minutes(5)))
    struct ProgramsAPITests {
        @Test("upload a program, list it, run it by name with the library it requires; oversize and foreign names refused")
        func uploadAndRun() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            let library = try #require(daemon.registry.configuration.library)
            let workshop = try ShardWorkshop()
            let vendor = ShardSigningKey(name: "vendor")
            try library.trust.add(vendor.publicKey, by: "test")
            let sdk = workshop.root.appendingPathComponent("sdk.shard").path
            try FileManager.default.copyItem(atPath: try #require(TestImages.sdkShardPath), toPath: sdk)
            let vxlib = try workshop.libs(version: "2").path
            for file in [sdk, vxlib] {
                try ShardSigner.sign(file, with: vendor)
                _ = try library.install(file, by: "test")
            }
            _ = try await daemon.alice.createSandbox(SandboxRequest(name: "field", shards: ["cpython"]))

            // A zip of a folder with a package: what a controller service uploads.
            let zip = workshop.root.appendingPathComponent("report.zip").path
            let make = Process()
            make.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            make.arguments = [
                "python3", "-c",
                """
                import sys, zipfile
                with zipfile.ZipFile(sys.argv[1], "w") as z:
                    z.writestr("main.py", "import sys, vxlib\\nfrom tools.fmt import fmt\\nprint(fmt(vxlib.VERSION), sys.argv[1:])\\n")
                    z.writestr("tools/__init__.py", "")
                    z.writestr("tools/fmt.py", "def fmt(v):\\n    return 'vxlib ' + v\\n")
                """,
                zip,
            ]
            try make.run()
            make.waitUntilExit()
            let upload = try await daemon.raw(
                .POST, "/v1/programs?name=report&filename=report.zip&requires=vxlib", contentType: "application/octet-stream",
                body: Array(try Data(contentsOf: URL(fileURLWithPath: zip))))
            #expect(upload.status == 201, "\(upload.body)")
            let program = (try JSONSerialization.jsonObject(with: Data(upload.body.utf8))) as? [String: Any] ?? [:]
            #expect(program["version"] as? String == "1" && program["installedBy"] as? String == "api:alice", "\(upload.body)")
            #expect(program["entrypoint"] as? [String] == ["python3", "/opt/programs/report/main.py"], "\(upload.body)")
            let listed = try await daemon.raw(.GET, "/v1/programs")
            #expect(listed.status == 200 && listed.body.contains("\"report\""), "\(listed.body)")

            let run = try await daemon.raw(
                .POST, "/v1/sandboxes/field/exec/program", contentType: "application/json",
                body: Array(#"{"program":"report","args":["north"],"wait":true}"#.utf8))
            #expect(run.status == 200, "\(run.body)")
            let job = ((try JSONSerialization.jsonObject(with: Data(run.body.utf8))) as? [String: Any]) ?? [:]
            #expect((job["stdout"] as? [String: Any])?["data"] as? String == "vxlib 2 ['north']\n", "\(run.body)")
            let shards = try await daemon.raw(.GET, "/v1/sandboxes/field/shards")
            for name in ["cpython", "report", "vxlib"] { #expect(shards.body.contains("\"\(name)\""), "\(shards.body)") }

            // Another owner may not take the name; an upload over the cap is refused; unknown programs are not found.
            let bob = try await daemon.raw(
                .POST, "/v1/programs?name=report&filename=report.zip", token: TestDaemon.bobToken,
                contentType: "application/octet-stream", body: Array("PK".utf8))
            #expect(bob.status == 409, "\(bob.body)")
            let big = try await daemon.raw(
                .POST, "/v1/programs?name=big&filename=big.zip", contentType: "application/octet-stream",
                body: [UInt8](repeating: 0, count: 2 << 20))
            #expect(big.status == 413, "\(big.body)")
            let broken = try await daemon.raw(
                .POST, "/v1/programs?name=broken&filename=broken.zip", contentType: "application/octet-stream",
                body: Array("not a zip".utf8))
            #expect(broken.status == 422 || broken.status == 400, "\(broken.body)")
            #expect(errorBody(broken.body)["code"] == "badArchive", "\(broken.body)")
            // A file name of the longest kind is kept whole; one without a known ending is refused.
            let long = String(repeating: "r", count: 251) + ".zip"
            let longName = try await daemon.raw(
                .POST, "/v1/programs?name=long&filename=\(long)&requires=vxlib", contentType: "application/octet-stream",
                body: Array(try Data(contentsOf: URL(fileURLWithPath: zip))))
            #expect(longName.status == 201, "\(longName.body)")
            let noEnding = try await daemon.raw(
                .POST, "/v1/programs?name=plain&filename=\(String(repeating: "0", count: 255))",
                contentType: "application/octet-stream", body: Array("x".utf8))
            #expect(noEnding.status == 400, "\(noEnding.body)")
            let unknown = try await daemon.raw(
                .POST, "/v1/sandboxes/field/exec/program", contentType: "application/json",
                body: Array(#"{"program":"nothing","wait":true}"#.utf8))
            #expect(unknown.status == 404, "\(unknown.body)")
        }
    }
}
