import Foundation
import Testing
import VMExecutor

extension RealGuests {
    /// Commands on a terminal (a pty pair in the guest), through the Swift API.
    @Suite("Terminals in a real guest", .serialized, .timeLimit(.minutes(10)))
    struct TerminalGuestTests {
        /// A terminal session: what it printed so far, read until a pattern shows.
        final class Session: @unchecked Sendable {
            let stream: ExecStream
            private var iterator: ExecStream.AsyncIterator
            private(set) var output: [UInt8] = []
            private(set) var ended: Termination?

            init(_ stream: ExecStream) {
                self.stream = stream
                iterator = stream.makeAsyncIterator()
            }

            var text: String { String(decoding: output, as: UTF8.self) }

            /// Reads until `needle` appears after `from` (a byte offset), or the command ends.
            @discardableResult
            func read(until needle: String, from: Int = 0) async throws -> Bool {
                while !String(decoding: output[min(from, output.count)...], as: UTF8.self).contains(needle) {
                    guard ended == nil, let event = try await iterator.next() else { return false }
                    switch event {
                    case .stdout(let b): output += b
                    case .stderr(let b): Issue.record("stderr on a terminal: \(String(decoding: b, as: UTF8.self))")
                    case .exit(let t, _): ended = t
                    }
                }
                return true
            }

            /// Reads to the end; the command's ending.
            func finish() async throws -> Termination? {
                while ended == nil, let event = try await iterator.next() {
                    switch event {
                    case .stdout(let b): output += b
                    case .stderr: break
                    case .exit(let t, _): ended = t
                    }
                }
                return ended
            }

            func type(_ text: String) async throws { _ = try await stream.writeStdin(Array(text.utf8)) }
        }

        @Test("a command on a terminal sees a tty of the size asked for, and a resize")
        func sizeAndResize() async throws {
            let guest = try await SharedGuest.shared.get()
            let s = Session(
                try await guest.stream(
                    Command(
                        ["sh", "-c", "tty; stty size; read line; stty size; echo got=$line"],
                        terminal: TerminalSize(rows: 30, columns: 100))))
            #expect(try await s.read(until: "30 100"))
            #expect(s.text.contains("/dev/pts/"))
            try await s.stream.resize(TerminalSize(rows: 50, columns: 132))
            try await s.type("hello\r")
            #expect(try await s.finish() == .exited(0))
            #expect(s.text.contains("50 132"))
            // Typed input is echoed, and the terminal turns \r into a newline for the reader.
            #expect(s.text.contains("hello"))
            #expect(s.text.contains("got=hello"))
        }

        @Test("an interactive shell: job control, Ctrl-C to the foreground job, its exit code")
        func interactiveShell() async throws {
            let guest = try await SharedGuest.shared.get()
            let s = Session(
                try await guest.stream(
                    Command(
                        ["bash", "--norc", "-i"], environment: ["PS1": "PROMPT> "],
                        terminal: TerminalSize(rows: 24, columns: 80))))
            #expect(try await s.read(until: "PROMPT> "))
            // No "no job control in this shell": bash leads its session on the terminal.
            #expect(!s.text.contains("no job control"))
            var mark = s.output.count
            try await s.type("sleep 100; echo after-sleep\r")
            #expect(try await s.read(until: "sleep 100", from: mark))
            try await Task.sleep(for: .milliseconds(500))
            mark = s.output.count
            try await s.type("\u{03}")  // Ctrl-C: SIGINT to the foreground job only
            #expect(try await s.read(until: "PROMPT> ", from: mark))
            // The line's echo holds "after-sleep"; its output, on a line of its own, must not show.
            #expect(!s.text.contains("\nafter-sleep"))
            #expect(s.text.contains("^C"))
            mark = s.output.count
            try await s.type("echo status=$?\r")
            #expect(try await s.read(until: "status=130", from: mark))
            try await s.type("exit 7\r")
            #expect(try await s.finish() == .exited(7))
        }

        @Test("closing stdin types end-of-file; all output of a large burst arrives")
        func endOfInputAndBurst() async throws {
            let guest = try await SharedGuest.shared.get()
            let cat = Session(
                try await guest.stream(Command(["cat"], terminal: TerminalSize(rows: 24, columns: 80))))
            try await cat.type("one line\r")
            #expect(try await cat.read(until: "one line\r\none line\r\n"))
            try await cat.stream.closeStdin()
            #expect(try await cat.finish() == .exited(0))

            let burst = Session(
                try await guest.stream(Command(["seq", "1", "200000"], terminal: TerminalSize(rows: 24, columns: 80))))
            #expect(try await burst.finish() == .exited(0))
            let lines = burst.text.split(separator: "\r\n")
            #expect(lines.count == 200_000)
            #expect(lines.last == "200000")
        }

        @Test("a terminal command runs as the sandbox's user, owning its terminal")
        func ownerAndUser() async throws {
            let guest = try await SharedGuest.shared.get()
            let s = Session(
                try await guest.stream(
                    Command(
                        ["sh", "-c", "id -u; stat -c '%u %a' $(tty)"], terminal: TerminalSize(rows: 24, columns: 80))))
            #expect(try await s.finish() == .exited(0))
            #expect(s.text.contains("1000\r\n1000 620\r\n"), "\(s.text)")
        }

        @Test("resizing a command without a terminal is refused; a zero size too")
        func refusals() async throws {
            let guest = try await SharedGuest.shared.get()
            await #expect(throws: VMExecError.self) {
                _ = try await guest.stream(Command(["true"], terminal: TerminalSize(rows: 0, columns: 80)))
            }
            let plain = try await guest.stream(Command(["sleep", "1"]))
            await #expect(throws: VMExecError.self) { try await plain.resize(TerminalSize(rows: 10, columns: 10)) }
            var ending: Termination?
            for try await event in plain { if case .exit(let t, _) = event { ending = t } }
            #expect(ending == .exited(0))
        }
    }
}
