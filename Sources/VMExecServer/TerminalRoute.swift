import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import Synchronization
import VMExecService
import VMExecutor

extension ServiceAPI {
    /// `GET …/terminal` that is not a WebSocket upgrade (an upgrade never
    /// reaches the router): 404 for a sandbox the caller does not own, else 426.
    func openTerminal(_ input: Operations.OpenTerminal.Input) async throws -> Operations.OpenTerminal.Output {
        _ = try await registry.status(owner: Caller.owner, name: input.path.sandbox)
        return .upgradeRequired(
            .init(
                body: .json(
                    .init(
                        error: .init(
                            code: "upgradeRequired", kind: .invalidRequest,
                            message:
                                "the terminal is a WebSocket: send this request with Connection: Upgrade and Upgrade: websocket (docs/TERMINAL.md)"
                        )))))
    }
}

/// The terminal WebSocket (docs/TERMINAL.md): decides which upgrade
/// requests to take, then bridges one to a command on a terminal in the guest.
///
/// A request it does not take (another path, no or a wrong token, a sandbox
/// the caller does not own) goes on to the router as plain HTTP, which
/// answers it with the API's error body: 401, 404, or 426.
struct TerminalRoute: Sendable {
    let registry: SandboxRegistry
    /// nil: the Unix socket, whose caller is `local`.
    let tokens: TokenBook?
    let logger: Logger

    typealias Handler = WebSocketDataHandler<HTTP1WebSocketUpgradeChannel.Context>

    func shouldUpgrade(_ request: HTTPRequest) async -> ShouldUpgradeResult<Handler> {
        guard request.method == .get, let name = Self.sandboxName(in: request.path ?? "") else { return .dontUpgrade }
        var owner = "local"
        if let tokens {
            let header = request.headerFields[.authorization] ?? ""
            guard header.hasPrefix("Bearer "), let known = tokens.owner(of: header.dropFirst(7)) else {
                return .dontUpgrade
            }
            owner = known
        }
        guard (try? await registry.status(owner: owner, name: name)) != nil else { return .dontUpgrade }
        let bridge = TerminalBridge(registry: registry, owner: owner, sandbox: name, logger: logger)
        return .upgrade([:]) { inbound, outbound, _ in await bridge.run(inbound: inbound, outbound: outbound) }
    }

    /// NAME of `/v1/sandboxes/NAME/terminal` (a query string ignored), or nil.
    static func sandboxName(in path: String) -> String? {
        let parts = path.split(separator: "?", maxSplits: 1)[0].split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0].isEmpty, parts[1] == "v1", parts[2] == "sandboxes", parts[4] == "terminal",
            SandboxRegistry.isName(String(parts[3]))
        else { return nil }
        return String(parts[3])
    }
}

/// One terminal session: the first text message starts the command, then
/// input and control messages go to it and its output and ending come back.
struct TerminalBridge: Sendable {
    let registry: SandboxRegistry
    let owner: String
    let sandbox: String
    let logger: Logger

    /// After the client hangs up: SIGHUP, then SIGKILL this much later if the command ignored it.
    static let hangupGrace = Duration.seconds(5)
    /// Largest message the client may send (input chunks and control text are far smaller).
    static let maxMessage = 1 << 20

    func run(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async {
        var messages = inbound.messages(maxSize: Self.maxMessage).makeAsyncIterator()
        let started: (JobRunner, ExecStream)
        do {
            guard let first = try await messages.next() else { return }
            let (request, size) = try Self.startRequest(first)
            started = try await registry.startTerminal(owner: owner, name: sandbox, request: request, size: size)
        } catch {
            await fail(error, outbound)
            return
        }
        let (runner, stream) = started
        logger.info("terminal opened", metadata: ["sandbox": "\(sandbox)", "caller": "\(owner)", "pid": "\(stream.pid)"])
        await send(.init(_type: .started, pid: Int(stream.pid)), outbound)
        // The command's output and its end; then the daemon closes the WebSocket.
        let ended = Mutex(false)
        let output = Task {
            do {
                for try await event in stream {
                    switch event {
                    case .stdout(let bytes), .stderr(let bytes):
                        try await outbound.write(.binary(ByteBuffer(bytes: bytes)))
                    case .exit(let termination, let usage):
                        ended.withLock { $0 = true }
                        let outcome = JobOutcome(termination: termination, usage: usage)
                        await send(.init(_type: .exit, exit: .init(outcome)), outbound)
                        try await outbound.close(.normalClosure, reason: nil)
                    }
                }
            } catch {
                ended.withLock { $0 = true }
                await fail(error, outbound)
            }
        }
        // The client's input and controls, until it hangs up or the daemon closes.
        while true {
            let message: WebSocketMessage?
            do {
                message = try await messages.next()
            } catch {
                logger.debug("terminal connection ended: \(error)", metadata: ["sandbox": "\(sandbox)"])
                break
            }
            guard let message else { break }
            do {
                try await handle(message, stream)
            } catch {
                // A bad message ends the session with the error; input racing the command's end does not.
                if !ended.withLock({ $0 }) { await fail(error, outbound) }
                break
            }
        }
        if !ended.withLock({ $0 }) {
            logger.info("terminal hung up with the command running", metadata: ["sandbox": "\(sandbox)"])
            // Hung up with the command still running: as a terminal's hang-up does.
            try? await stream.signal(SIGHUP)
            let deadline = ContinuousClock.now + Self.hangupGrace
            while !ended.withLock({ $0 }) && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(100)) }
            if !ended.withLock({ $0 }) { try? await stream.signal(SIGKILL) }
        }
        await output.value
        await runner.terminalEnded()
        logger.info("terminal closed", metadata: ["sandbox": "\(sandbox)", "caller": "\(owner)"])
    }

    /// Input bytes to the terminal; a control message to the command.
    private func handle(_ message: WebSocketMessage, _ stream: ExecStream) async throws {
        switch message {
        case .binary(let buffer):
            _ = try await stream.writeStdin(Array(buffer.readableBytesView))
        case .text(let text):
            let control: Components.Schemas.TerminalControl
            do {
                control = try JSONDecoder().decode(Components.Schemas.TerminalControl.self, from: Data(text.utf8))
            } catch {
                throw VMExecError(.invalidRequest, "a control message is not a TerminalControl: \(error)")
            }
            logger.debug("terminal control", metadata: ["sandbox": "\(sandbox)", "control": "\(text)"])
            switch control._type {
            case .resize:
                try await stream.resize(try Self.size(rows: control.rows, cols: control.cols))
            case .signal:
                try await stream.signal(try SignalName.number(control.signal ?? ""))
            case .eof:
                try await stream.closeStdin()
            }
        }
    }

    /// The job request and terminal size a TerminalStart message describes.
    static func startRequest(_ message: WebSocketMessage) throws -> (JobRequest, TerminalSize) {
        guard case .text(let text) = message else {
            throw VMExecError(.invalidRequest, "the first message must be a TerminalStart as text (JSON)")
        }
        let start: Components.Schemas.TerminalStart
        do {
            start = try JSONDecoder().decode(Components.Schemas.TerminalStart.self, from: Data(text.utf8))
        } catch {
            throw VMExecError(.invalidRequest, "the first message is not a TerminalStart: \(error)")
        }
        guard !start.argv.isEmpty else { throw VMExecError(.invalidRequest, "argv needs at least the program") }
        let (uid, gid) = try ServiceAPI.user(start.user)
        var request = JobRequest(
            start.argv, environment: start.env?.additionalProperties ?? [:], workingDirectory: start.workdir ?? "/",
            timeoutSeconds: try ServiceAPI.timeout(start.timeoutSeconds), uid: uid, gid: gid,
            limits: try start.limits?.limits(), outputLimit: 0, stdinOpen: true)
        request.sharedTmp = start.sharedTmp ?? false
        return (request, try size(rows: start.rows ?? 24, cols: start.cols ?? 80))
    }

    static func size(rows: Int?, cols: Int?) throws -> TerminalSize {
        guard let rows, let cols, let r = UInt16(exactly: rows), let c = UInt16(exactly: cols), r > 0, c > 0 else {
            throw VMExecError(.invalidRequest, "a terminal size takes rows and cols, each 1-65535")
        }
        return TerminalSize(rows: r, columns: c)
    }

    private func send(_ event: Components.Schemas.TerminalEvent, _ outbound: WebSocketOutboundWriter) async {
        guard let data = try? JSONEncoder().encode(event) else { return }
        try? await outbound.write(.text(String(decoding: data, as: UTF8.self)))
    }

    /// Sends the error as the API's error shape, then closes.
    private func fail(_ error: any Error, _ outbound: WebSocketOutboundWriter) async {
        let failure = FailureMiddleware.failure(error)
        logger.info("terminal failed: \(failure.message)", metadata: ["sandbox": "\(sandbox)", "code": "\(failure.code)"])
        let detail = Components.Schemas.FailureDetail(
            code: failure.code, kind: .init(rawValue: failure.kind) ?? .hostFailure, message: failure.message)
        await send(.init(_type: .error, error: detail), outbound)
        try? await outbound.close(failure.status < 500 ? .policyViolation : .unexpectedServerError, reason: nil)
    }
}
