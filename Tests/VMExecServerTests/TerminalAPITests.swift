import Foundation
import Testing
import VMExecClient

extension DaemonSuites {
    /// The terminal WebSocket, through the Swift client, over TCP with tokens and over the Unix socket.
    @Suite("terminal", .timeLimit(.minutes(5)))
    struct TerminalAPITests {
        /// Output read until `needle` shows (or the session ends); false if it never did.
        static func read(
            _ events: inout DaemonTerminal.Events.AsyncIterator, into text: inout String, until needle: String
        ) async throws -> Bool {
            while !text.contains(needle) {
                guard let event = try await events.next() else { return false }
                if case .output(let bytes) = event { text += String(decoding: bytes, as: UTF8.self) }
            }
            return true
        }

        @Test("a shell on a terminal: size, resize, Ctrl-C as a key, a signal, end of input, its exit code")
        func session() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            _ = try await client.createSandbox(SandboxRequest(name: "tty"))
            let request = TerminalRequest(
                ["bash", "--norc", "-i"], environment: ["PS1": "PROMPT> "], rows: 30, columns: 100)
            let exit = try await client.withTerminal("tty", request) { terminal -> TerminalEvent? in
                var events = terminal.events.makeAsyncIterator()
                guard case .started(let pid)? = try await events.next() else { return nil }
                #expect(pid > 1)
                var text = ""
                #expect(try await Self.read(&events, into: &text, until: "PROMPT> "))
                try await terminal.write(Array("stty size; echo TERM=$TERM\r".utf8))
                #expect(try await Self.read(&events, into: &text, until: "TERM=xterm-256color"))
                #expect(text.contains("30 100"))
                try await terminal.resize(rows: 50, columns: 132)
                text = ""
                try await terminal.write(Array("stty size\r".utf8))
                #expect(try await Self.read(&events, into: &text, until: "50 132"))
                // Ctrl-C typed: the foreground job is interrupted, the shell stays. (The markers are
                // printed with printf so that the echo of the typed line does not contain them; the job
                // prints its own, so it is in the terminal's foreground when the marker shows.)
                try await terminal.write(Array("sh -c 'printf zz%s sleeping; exec sleep 100'\r".utf8))
                #expect(try await Self.read(&events, into: &text, until: "zzsleeping"))
                text = ""
                try await terminal.write([0x03])
                #expect(try await Self.read(&events, into: &text, until: "PROMPT> "))
                try await terminal.write(Array("printf 'zz%s\\n' $?\r".utf8))
                #expect(try await Self.read(&events, into: &text, until: "zz130"))
                // End of input at the prompt: bash exits as at a real terminal (Ctrl-D), with the last status.
                try await terminal.write(Array("printf 'zz%s\\n' five; (exit 5)\r".utf8))
                #expect(try await Self.read(&events, into: &text, until: "zzfive"))
                // The prompt may have come in the same piece of output as the marker: keep what followed it.
                text = String(text[text.range(of: "zzfive")!.upperBound...])
                #expect(try await Self.read(&events, into: &text, until: "PROMPT> "))
                try await terminal.endInput()
                while let event = try await events.next() {
                    if case .exit = event { return event }
                }
                return nil
            }
            #expect(exit == .exit(termination: "exited", exitCode: 5), "\(String(describing: exit))")

            // A signal through the control message ends a command that ignores input.
            let signalled = try await client.withTerminal("tty", TerminalRequest(["sleep", "100"])) {
                terminal -> TerminalEvent? in
                var events = terminal.events.makeAsyncIterator()
                _ = try await events.next()
                try await terminal.signal("TERM")
                while let event = try await events.next() { if case .exit = event { return event } }
                return nil
            }
            #expect(signalled == .exit(termination: "signaled", exitCode: 143))
        }

        @Test("hanging up ends the command; errors come as the API's error shape; 401, 404 and 426 for plain requests")
        func hangupAndRefusals() async throws {
            let daemon = try await TestDaemon.start()
            defer { Task { await daemon.remove() } }
            let client = daemon.alice
            _ = try await client.createSandbox(SandboxRequest(name: "tty"))
            // The client closes while the command runs: SIGHUP reaches its session.
            try await client.withTerminal("tty", TerminalRequest(["sh", "-c", "echo ready; sleep 300"])) {
                terminal throws -> Void in
                var events = terminal.events.makeAsyncIterator()
                var text = ""
                #expect(try await Self.read(&events, into: &text, until: "ready"))
                #expect(
                    try await eventually { try await client.processes("tty").contains { $0.arguments.first == "sleep" } },
                    "the command runs before the client hangs up")
            }
            #expect(
                try await eventually {
                    try await client.processes("tty").allSatisfy { $0.arguments.first != "sleep" }
                }, "the hung-up command's sleep is gone")

            // A command that cannot start: the error event, as a DaemonError with the API's code.
            await #expect(throws: DaemonError.self) {
                try await client.withTerminal("tty", TerminalRequest(["no-such-program"])) { terminal in
                    for try await _ in terminal.events {}
                }
            }
            do {
                try await client.withTerminal("tty", TerminalRequest(["no-such-program"])) { terminal in
                    for try await _ in terminal.events {}
                }
            } catch let error as DaemonError {
                #expect(error.failureCode == "commandNotFound", "\(error)")
            }
            // Another token's sandbox is not found; a wrong token is refused; a plain GET is told to upgrade.
            await #expect(throws: DaemonError.self) {
                try await daemon.bob.withTerminal("tty", TerminalRequest(["true"])) { _ in }
            }
            let plain = try await daemon.raw(.GET, "/v1/sandboxes/tty/terminal")
            #expect(plain.status == 426 && errorBody(plain.body)["code"] == "upgradeRequired", "\(plain.body)")
            let other = try await daemon.raw(.GET, "/v1/sandboxes/tty/terminal", token: TestDaemon.bobToken)
            #expect(other.status == 404, "\(other.body)")
            let noToken = try await daemon.raw(.GET, "/v1/sandboxes/tty/terminal", token: "wrong")
            #expect(noToken.status == 401, "\(noToken.body)")
            // The Unix socket reaches the local owner's sandboxes.
            _ = try await daemon.local.createSandbox(SandboxRequest(name: "mine"))
            let local = try await daemon.local.withTerminal("mine", TerminalRequest(["sh", "-c", "tty; exit 4"])) {
                terminal throws -> (String, TerminalEvent?) in
                var text = ""
                var end: TerminalEvent?
                for try await event in terminal.events {
                    if case .output(let b) = event { text += String(decoding: b, as: UTF8.self) }
                    if case .exit = event { end = event }
                }
                return (text, end)
            }
            #expect(local.0.contains("/dev/pts/"), "\(local.0)")
            #expect(local.1 == .exit(termination: "exited", exitCode: 4))
        }
    }
}
