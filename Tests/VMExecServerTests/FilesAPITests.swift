import Foundation
import OpenAPIRuntime
import Testing
import VMExecClient

extension DaemonSuites {
    /// Files and processes of a sandbox through the API.
    @Suite("files and processes", .timeLimit(.minutes(5)))
    struct FilesAPITests {
        @Test("upload, stat, list, download, mkdir and delete; an existing file is refused unless overwrite is asked")
        func files() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            _ = try await client.createSandbox(SandboxRequest(name: "files"))
            let dir = try await client.makeDirectory("files", path: "/home/vmexec/data/deep", parents: true)
            #expect(dir.type == "directory" && dir.uid == 1000)
            let payload = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            let put = try await client.upload(
                "files", path: "/home/vmexec/data/deep/blob.bin", bytes: HTTPBody(payload), mode: 0o640)
            #expect(put.size == payload.count && put.mode == "640" && put.type == "file")
            let got = try await [UInt8](collecting: try await client.download("files", path: put.path), upTo: 1 << 20)
            #expect(got == payload)
            #expect(try await client.list("files", path: "/home/vmexec/data/deep").map(\.name) == ["blob.bin"])
            #expect(try await client.stat("files", path: "/home/vmexec/data").type == "directory")

            await #expect(throws: DaemonError.self) {
                _ = try await client.upload("files", path: put.path, bytes: HTTPBody([1, 2, 3]))
            }
            let refused = try await daemon.raw(
                .PUT, "/v1/sandboxes/files/files?path=/home/vmexec/data/deep/blob.bin",
                contentType: "application/octet-stream", body: [1])
            #expect(refused.status == 409 && errorBody(refused.body)["code"] == "alreadyExists", "\(refused.body)")
            let replaced = try await client.upload("files", path: put.path, bytes: HTTPBody([9, 9]), overwrite: true)
            #expect(replaced.size == 2)

            // A job sees what the files API wrote (the shared /tmp is the files API's).
            let seen = try await client.submit("files", JobSubmission(["wc", "-c", put.path]), wait: true)
            #expect(try await client.output("files", seen.id, stream: .stdout, offset: 0).bytes == Array("2 \(put.path)\n".utf8))

            try await client.delete("files", path: "/home/vmexec/data", recursive: true)
            let gone = try await daemon.raw(.GET, "/v1/sandboxes/files/files/stat?path=/home/vmexec/data")
            #expect(gone.status == 422 || gone.status == 404, "\(gone.body)")
            #expect(errorBody(gone.body)["message"]?.contains("No such file") == true, "\(gone.body)")
        }

        @Test("processes are listed with their group; a group is killed and its job sees the signal")
        func processes() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            _ = try await client.createSandbox(SandboxRequest(name: "procs"))
            let job = try await client.submit("procs", JobSubmission(["sh", "-c", "sleep 300 & sleep 301; wait"]))
            var sleepers: [GuestProcess] = []
            #expect(
                try await eventually {
                    sleepers = try await client.processes("procs").filter { $0.arguments.first == "sleep" }
                    return sleepers.count == 2
                })
            #expect(Set(sleepers.map(\.pgid)).count == 1, "one job, one process group")
            try await client.signalProcess("procs", pid: sleepers[0].pid, "KILL", group: true)
            let ended = try await collect(try await client.events("procs", job.id))
            #expect(ended.job?.exitCode == 137, "\(String(describing: ended.job))")
            let noSuch = try await daemon.raw(
                .POST, "/v1/sandboxes/procs/processes/\(sleepers[0].pid)/signal", contentType: "application/json",
                body: Array(#"{"signal": "TERM"}"#.utf8))
            #expect(
                noSuch.status == 422 && errorBody(noSuch.body)["message"]?.contains("No such process") == true, "\(noSuch.body)")
        }
    }
}
