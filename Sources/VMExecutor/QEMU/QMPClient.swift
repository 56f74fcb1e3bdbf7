import Foundation

/// A minimal client of QEMU's machine protocol (QMP): JSON lines over the
/// monitor's Unix socket. It negotiates capabilities, runs one command at a
/// time and skips asynchronous events. I/O is blocking, on a private queue,
/// behind an async API; QMP traffic is a handful of small messages.
final class QMPClient: @unchecked Sendable {
    // Only touched on `queue`.
    private let fd: Int32
    private var buffer: [UInt8] = []
    private let queue = DispatchQueue(label: "vmexec.qmp")

    /// Connects, reads the greeting and leaves negotiation mode.
    static func connect(path: String, timeout: Duration = .seconds(5)) async throws -> QMPClient {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let client = try? QMPClient(path: path) {
                _ = try await client.execute("qmp_capabilities", greeting: true)
                return client
            }
            if ContinuousClock.now > deadline {
                throw VMExecError(.launchFailed, "QEMU's monitor did not open at \(path)")
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    private init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw VMExecError(.launchFailed, "socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            throw VMExecError(.launchFailed, "monitor socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Foundation.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            close(fd)
            throw VMExecError(.launchFailed, "cannot connect to QEMU's monitor")
        }
    }

    deinit { close(fd) }

    /// Runs a command; returns its `return` value re-encoded as JSON text
    /// (so that it can cross actors), or throws QEMU's error.
    @discardableResult
    func execute(_ command: String, arguments: [String: any Sendable] = [:], greeting: Bool = false) async throws -> String {
        var message: [String: Any] = ["execute": command]
        if !arguments.isEmpty { message["arguments"] = arguments }
        let request = try JSONSerialization.data(withJSONObject: message) + Data("\n".utf8)
        return try await withCheckedThrowingContinuation { c in
            queue.async {
                do {
                    if greeting { _ = try self.readMessage() }
                    try self.write(request)
                    while true {
                        let reply = try self.readMessage()
                        if let error = reply["error"] as? [String: Any] {
                            throw VMExecError(.launchFailed, "QEMU refused \(command): \(error["desc"] ?? error)")
                        }
                        if let value = reply["return"] {
                            let data = try JSONSerialization.data(withJSONObject: ["return": value])
                            return c.resume(returning: String(decoding: data, as: UTF8.self))
                        }
                        // An event ({"event": …}): not the reply; read on.
                    }
                } catch {
                    c.resume(throwing: error)
                }
            }
        }
    }

    /// The `status` of `query-migrate` (e.g. "active", "completed", "failed").
    func migrationStatus() async throws -> (status: String, error: String?) {
        let text = try await execute("query-migrate")
        let obj = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        let ret = obj?["return"] as? [String: Any] ?? [:]
        return (ret["status"] as? String ?? "none", ret["error-desc"] as? String)
    }

    /// The run state from `query-status` (e.g. "running", "postmigrate").
    func runState() async throws -> (status: String, running: Bool) {
        let text = try await execute("query-status")
        let obj = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        let ret = obj?["return"] as? [String: Any] ?? [:]
        return (ret["status"] as? String ?? "unknown", ret["running"] as? Bool ?? false)
    }

    private func write(_ data: Data) throws {
        try data.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw VMExecError(.launchFailed, "QEMU's monitor closed") }
                off += n
            }
        }
    }

    private func readMessage() throws -> [String: Any] {
        while true {
            if let nl = buffer.firstIndex(of: 0x0a) {
                let line = Data(buffer[..<nl])
                buffer.removeSubrange(...nl)
                if let obj = try? JSONSerialization.jsonObject(with: line) as? [String: Any] { return obj }
                continue
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw VMExecError(.launchFailed, "QEMU's monitor closed") }
            guard buffer.count + n < 1 << 20 else { throw VMExecError(.protocolError, "QEMU's monitor sent an overlong line") }
            buffer += chunk.prefix(n)
        }
    }
}
