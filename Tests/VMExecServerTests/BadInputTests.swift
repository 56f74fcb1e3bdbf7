import Foundation
import NIOHTTP1
import Testing
import VMExecClient

extension DaemonSuites {
    /// Bad requests: each a 4xx with the JSON error body, and nothing written.
    @Suite("bad input", .timeLimit(.minutes(5)))
    struct BadInputTests {
        @Test("oversized uploads, traversal, bad JSON, unknown fields, bad tokens and another token's sandbox are refused")
        func refused() async throws {
            let daemon = try await TestDaemon.start(uploadLimit: 1 << 20)
            defer { Task { await daemon.remove() } }
            _ = try await daemon.alice.createSandbox(SandboxRequest(name: "mine"))
            let json = "application/json"
            let bytes = "application/octet-stream"

            func expectFailure(_ r: (status: Int, body: String), _ status: Int, _ code: String, _ what: Comment) {
                #expect(r.status == status, what)
                #expect(errorBody(r.body)["code"] == code && errorBody(r.body)["message"]?.isEmpty == false, "\(what): \(r.body)")
            }

            // An upload over the cap, with and without Content-Length: 413, and the file never appears.
            let big = [UInt8](repeating: 7, count: (1 << 20) + 1)
            expectFailure(
                try await daemon.raw(.PUT, "/v1/sandboxes/mine/files?path=/tmp/big", contentType: bytes, body: big), 413,
                "fileTooLarge", "upload over the cap")
            let exact = try await daemon.raw(
                .PUT, "/v1/sandboxes/mine/files?path=/tmp/fits", contentType: bytes, body: Array(big.dropLast()))
            #expect(exact.status == 201, "an upload of exactly the cap is taken: \(exact.body)")
            expectFailure(
                try await daemon.raw(.GET, "/v1/sandboxes/mine/files/stat?path=/tmp/big"), 422, "fileRefused",
                "nothing was written")

            // Traversal and relative paths, in every file route.
            for route in [
                "files?path=/tmp/../etc/passwd", "files/stat?path=../x", "files/list?path=/home/..", "files?path=tmp/x",
            ] {
                expectFailure(try await daemon.raw(.GET, "/v1/sandboxes/mine/\(route)"), 400, "invalidRequest", "GET \(route)")
            }
            expectFailure(
                try await daemon.raw(.PUT, "/v1/sandboxes/mine/files?path=/tmp/../tmp/x", contentType: bytes, body: [1]), 400,
                "invalidRequest", "PUT with ..")
            expectFailure(
                try await daemon.raw(
                    .POST, "/v1/sandboxes/mine/files/mkdir", contentType: json, body: Array(#"{"path": "/a/../b"}"#.utf8)),
                400, "invalidRequest", "mkdir with ..")
            expectFailure(
                try await daemon.raw(.GET, "/v1/sandboxes/mine/files/stat?path=/tmp/x"), 422, "fileRefused",
                "the PUT with .. wrote nothing")

            // Bad JSON, unknown fields, wrong types, out-of-range values.
            let submit = "/v1/sandboxes/mine/jobs"
            for (body, what) in [
                (#"{"argv": ["true"]"#, "truncated JSON"), (#"{"argv": ["true"], "argz": 1}"#, "an unknown field"),
                (#"{"argv": "true"}"#, "a string for an array"), (#"{"argv": []}"#, "no arguments"),
                (#"{"argv": ["true"], "timeoutSeconds": -1}"#, "a negative timeout"),
                (#"{"argv": ["true"], "limits": {"processes": 0}}"#, "a limit out of range"),
                (#"{"argv": ["true"], "user": "nobody"}"#, "a user that is no id"),
                (#"{"argv": ["true"], "stdin": "a", "stdinBase64": "YQ=="}"#, "two stdins"),
            ] {
                expectFailure(
                    try await daemon.raw(.POST, submit, contentType: json, body: Array(body.utf8)), 400, "invalidRequest",
                    "\(what)")
            }
            expectFailure(
                try await daemon.raw(.POST, "/v1/sandboxes", contentType: json, body: Array(#"{"name": "UPPER"}"#.utf8)), 400,
                "invalidRequest", "a sandbox name out of the pattern")
            expectFailure(
                try await daemon.raw(.POST, "/v1/sandboxes", contentType: json, body: Array(#"{"shards": ["nosuch"]}"#.utf8)),
                404, "notFound", "a shard the daemon does not have")
            expectFailure(
                try await daemon.raw(.POST, "/v1/sandboxes", contentType: json, body: Array(#"{"name": "mine"}"#.utf8)), 409,
                "alreadyExists", "a name already taken")
            let huge =
                Array(#"{"argv": ["true"], "stdin": ""#.utf8) + [UInt8](repeating: 0x61, count: 33 << 20) + Array(#""}"#.utf8)
            expectFailure(
                try await daemon.raw(.POST, submit, contentType: json, body: huge), 413, "fileTooLarge",
                "a JSON body over 32 MiB")
            #expect(try await daemon.alice.jobs("mine").isEmpty, "no refused submission became a job")

            // Tokens: none, wrong, and another owner's view.
            expectFailure(try await daemon.raw(.GET, "/v1/sandboxes", token: nil), 401, "unauthorized", "no token")
            expectFailure(
                try await daemon.raw(.GET, "/v1/sandboxes", token: "not-a-known-token-at-all"), 401, "unauthorized", "wrong token"
            )
            let bob = TestDaemon.bobToken
            for (method, route) in [
                (HTTPMethodName.GET, "/v1/sandboxes/mine"), (.GET, "/v1/sandboxes/mine/jobs"),
                (.GET, "/v1/sandboxes/mine/files/stat?path=/tmp/fits"), (.GET, "/v1/sandboxes/mine/processes"),
                (.DELETE, "/v1/sandboxes/mine"),
            ] {
                expectFailure(try await daemon.raw(method.nio, route, token: bob), 404, "notFound", "bob: \(method) \(route)")
            }
            #expect(try await daemon.bob.sandboxes().isEmpty)
            #expect(try await daemon.local.sandboxes().isEmpty, "the socket's owner is local, not alice")
            #expect(try await daemon.alice.sandbox("mine").state == "running", "bob's DELETE left alice's sandbox")
        }
    }
}

/// The methods the bad-input test uses, named for the table above.
enum HTTPMethodName: String {
    case GET, DELETE
    var nio: NIOHTTP1.HTTPMethod { self == .GET ? .GET : .DELETE }
}
