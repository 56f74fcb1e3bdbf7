import Foundation
import VMExecutor

/// The user's own terminal during `vmexec run -t` and `vmexec exec -t`:
/// its size, raw mode while a command in the guest owns the screen, its
/// size changes (SIGWINCH), and its keystrokes.
///
/// In raw mode the local terminal passes every byte through untouched:
/// Ctrl-C, Ctrl-Z and Ctrl-D are typed into the guest's terminal, whose
/// line discipline turns them into signals and end of file for the
/// foreground job there, as ssh -t does.
final class LocalTerminal: @unchecked Sendable {
    // Written in init and restore(), both on the command's task; read by nothing else.
    private var saved: termios?
    private var winch: (any DispatchSourceSignal)?

    /// The size of the terminal on stdout (else stdin), else $LINES x $COLUMNS, else 24 x 80.
    static func size() -> TerminalSize {
        var ws = winsize()
        for fd in [STDOUT_FILENO, STDIN_FILENO] where ioctl(fd, UInt(TIOCGWINSZ), &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return TerminalSize(rows: ws.ws_row, columns: ws.ws_col)
        }
        let env = ProcessInfo.processInfo.environment
        return TerminalSize(
            rows: env["LINES"].flatMap(UInt16.init).flatMap { $0 > 0 ? $0 : nil } ?? 24,
            columns: env["COLUMNS"].flatMap(UInt16.init).flatMap { $0 > 0 ? $0 : nil } ?? 80)
    }

    /// Puts stdin in raw mode when it is a terminal and `raw` is set; `resized` gets each new size.
    init(raw: Bool, resized: @escaping @Sendable (TerminalSize) -> Void) {
        if raw && isatty(STDIN_FILENO) == 1 {
            var t = termios()
            if tcgetattr(STDIN_FILENO, &t) == 0 {
                saved = t
                cfmakeraw(&t)
                tcsetattr(STDIN_FILENO, TCSANOW, &t)
            }
        }
        signal(SIGWINCH, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGWINCH, queue: .global())
        source.setEventHandler { resized(LocalTerminal.size()) }
        source.resume()
        winch = source
    }

    /// Gives the terminal back as it was (before anything else is printed).
    func restore() {
        winch?.cancel()
        winch = nil
        if var t = saved { tcsetattr(STDIN_FILENO, TCSANOW, &t) }
        saved = nil
    }

    deinit { restore() }

    /// Reads stdin until its end, passing each chunk on as it comes; then `end`.
    static func forwardInput(
        write: @escaping @Sendable ([UInt8]) async throws -> Void, end: @escaping @Sendable () async throws -> Void
    ) -> Task<Void, Never> {
        Task {
            while let chunk = try? await HostIO.read(STDIN_FILENO), !chunk.isEmpty {
                guard (try? await write(chunk)) != nil else { return }
            }
            try? await end()
        }
    }
}
