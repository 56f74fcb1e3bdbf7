import Foundation
import Testing
import VMExecClient

extension DaemonSuites {
    /// exec/python through the runner: the result, execution control, shared values and
    /// callbacks the client answers over HTTP.
    @Suite("Python jobs", .timeLimit(.minutes(5)))
    struct PythonJobsAPITests {
        static func json(_ text: String) -> [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
        }

        @Test("a Python job's value, control reports and shared state come with the job; callbacks are answered over HTTP")
        func resultAndCallbacks() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            _ = try await client.createSandbox(SandboxRequest(name: "py", shards: ["cpython"]))

            // A waited job: value, loop reports and watched values in `python`.
            let body: [String: Any] = [
                "code": "total = 0\nfor i in range(10):\n    total += i\ntotal * 2\n", "wait": true,
                "control": ["maxOuterLoops": 4, "onLoopLimit": "break", "watch": ["total"]],
            ]
            let waited = try await daemon.raw(
                .POST, "/v1/sandboxes/py/exec/python", contentType: "application/json",
                body: Array(try JSONSerialization.data(withJSONObject: body)))
            #expect(waited.status == 200, "\(waited.body)")
            let job = Self.json(waited.body)["job"] as? [String: Any] ?? [:]
            let python = job["code"] as? [String: Any] ?? [:]
            #expect((python["value"] as? [String: Any])?["json"] as? String == "12", "\(waited.body)")
            #expect((python["loopLimits"] as? [[String: Any]])?.first?["line"] as? Int == 2)
            #expect(((python["watched"] as? [String: Any])?["total"] as? [String: Any])?["repr"] as? String == "6")
            #expect((job["exit"] as? [String: Any])?["exitCode"] as? Int == 0)

            // An asynchronous job with callbacks: each shows as an event, and waits for the answer.
            let code =
                "print('asking', flush=True)\nx = ask('q', n=1)\nstate['got'] = x\ntry:\n    ask('again')\nexcept CallbackError as e:\n    state['refused'] = str(e)\nx['answer'] * 2\n"
            let submitted = try await daemon.raw(
                .POST, "/v1/sandboxes/py/exec/python", contentType: "application/json",
                body: Array(
                    try JSONSerialization.data(withJSONObject: [
                        "code": code, "shared": ["state": [String: Any]()], "callbacks": ["ask"],
                    ])))
            #expect(submitted.status == 202, "\(submitted.body)")
            let id = try #require((Self.json(submitted.body)["job"] as? [String: Any])?["id"] as? String)
            var answered = 0
            var output = ""
            var end: JobInfo?
            for try await event in try await client.events("py", id) {
                switch event {
                case .output(_, let bytes): output += String(decoding: bytes, as: UTF8.self)
                case .callback(let callbackID, let name, let arguments, let keywordArguments):
                    #expect(name == "ask")
                    if answered == 0 {
                        #expect(output == "asking\n", "the output before the call came first")
                        #expect(arguments == #"["q"]"# && keywordArguments == #"{"n":1}"#)
                        // Pending: visible on the job too.
                        let pending = try await daemon.raw(.GET, "/v1/sandboxes/py/jobs/\(id)")
                        #expect(pending.body.contains("\"callbacks\"") && pending.body.contains("\"ask\""), "\(pending.body)")
                        try await client.answerCallback("py", id, callbackID, value: #"{"answer": 21}"#, error: nil)
                    } else {
                        try await client.answerCallback("py", id, callbackID, value: nil, error: "not now")
                    }
                    answered += 1
                case .end(let info): end = info
                }
            }
            #expect(answered == 2 && end?.exitCode == 0, "\(String(describing: end))")
            let done = Self.json((try await daemon.raw(.GET, "/v1/sandboxes/py/jobs/\(id)")).body)
            let outcome = done["code"] as? [String: Any] ?? [:]
            #expect((outcome["value"] as? [String: Any])?["json"] as? String == "42", "\(done)")
            let state = (outcome["shared"] as? [String: Any])?["state"] as? [String: Any]
            #expect(
                state?["json"] as? String == #"{"got": {"answer": 21}, "refused": "ask: not now"}"#,
                "\(String(describing: state))")

            // Answers to what is not waiting, and bad bodies, are refused plainly.
            let stale = try await daemon.raw(
                .POST, "/v1/sandboxes/py/jobs/\(id)/callbacks/1", contentType: "application/json",
                body: Array(#"{"value": 1}"#.utf8))
            #expect(stale.status == 404, "\(stale.body)")
            let both = try await daemon.raw(
                .POST, "/v1/sandboxes/py/jobs/\(id)/callbacks/1", contentType: "application/json",
                body: Array(#"{"value": 1, "error": "x"}"#.utf8))
            #expect(both.status == 400 || both.status == 404, "\(both.body)")
        }

        @Test("bad control, shared names and a missing runner are refused clearly; sys.exit(N) is the exit code")
        func refusals() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            _ = try await daemon.alice.createSandbox(SandboxRequest(name: "py", shards: ["cpython"]))
            for bad in [
                #"{"code": "1", "control": {"watch": ["not a name"]}}"#, #"{"code": "1", "control": {"maxOuterLoops": -1}}"#,
                #"{"code": "1", "shared": {"__builtins__": 1}}"#, #"{"code": "1", "callbacks": ["x y"]}"#,
                #"{"code": "1", "control": {"bogus": true}}"#,
            ] {
                let r = try await daemon.raw(
                    .POST, "/v1/sandboxes/py/exec/python", contentType: "application/json", body: Array(bad.utf8))
                #expect(r.status == 400, "\(bad): \(r.status) \(r.body)")
            }
            let exit = try await daemon.raw(
                .POST, "/v1/sandboxes/py/exec/python", contentType: "application/json",
                body: Array(#"{"code": "import sys\nsys.exit(3)", "wait": true}"#.utf8))
            let job = Self.json(exit.body)["job"] as? [String: Any] ?? [:]
            #expect((job["exit"] as? [String: Any])?["exitCode"] as? Int == 3, "\(exit.body)")
            #expect(((job["code"] as? [String: Any])?["exception"] as? [String: Any])?["type"] as? String == "SystemExit")

            _ = try await daemon.alice.createSandbox(SandboxRequest(name: "bare"))
            let bare = try await daemon.raw(
                .POST, "/v1/sandboxes/bare/exec/python", contentType: "application/json",
                body: Array(#"{"code": "1", "wait": true}"#.utf8))
            #expect(bare.body.contains("commandNotFound") || bare.body.contains("sdk-python"), "\(bare.body)")
        }

        @Test("exec/nodejs runs through the Node.js runner: output, then the completion value in the job's code")
        func nodejs() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            _ = try await daemon.alice.createSandbox(SandboxRequest(name: "js", shards: ["nodejs"]))
            let r = try await daemon.raw(
                .POST, "/v1/sandboxes/js/exec/nodejs", contentType: "application/json",
                body: Array(#"{"code": "console.log('hi'); [1, 2].map((x) => x * 2)", "wait": true}"#.utf8))
            #expect(r.status == 200, "\(r.body)")
            let object = Self.json(r.body)
            let job = object["job"] as? [String: Any] ?? [:]
            #expect((object["stdout"] as? [String: Any])?["data"] as? String == "hi\n", "\(r.body)")
            #expect(((job["code"] as? [String: Any])?["value"] as? [String: Any])?["json"] as? String == "[2,4]", "\(r.body)")
            let thrown = try await daemon.raw(
                .POST, "/v1/sandboxes/js/exec/nodejs", contentType: "application/json",
                body: Array(#"{"code": "throw new Error('no')", "wait": true}"#.utf8))
            let failed = Self.json(thrown.body)["job"] as? [String: Any] ?? [:]
            #expect((failed["exit"] as? [String: Any])?["exitCode"] as? Int == 1)
            #expect(((failed["code"] as? [String: Any])?["exception"] as? [String: Any])?["message"] as? String == "no")
        }
    }
}
