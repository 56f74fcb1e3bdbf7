import Foundation

/// A minimal client of qemu-guest-agent (QMP-style JSON lines over its
/// virtio-serial port), enough to run the benchmark's peer side:
/// `guest-exec` then `guest-exec-status` polled every 5 ms.
final class GuestAgentClient {
    private let fd: Int32
    private var buffer: [UInt8] = []

    struct AgentError: Error, CustomStringConvertible {
        let description: String
    }

    init(socketPath: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let bytes = Array(socketPath.utf8)
            raw.copyBytes(from: bytes.prefix(raw.count - 1))
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw AgentError(description: "cannot connect to the agent at \(socketPath)") }
    }

    deinit { close(fd) }

    /// Sends a command and returns its `return` value.
    func call(_ command: String, _ arguments: [String: Any]? = nil) throws -> Any {
        var msg: [String: Any] = ["execute": command]
        if let arguments { msg["arguments"] = arguments }
        var data = try JSONSerialization.data(withJSONObject: msg)
        data.append(0x0a)
        _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        while true {
            let line = try readLine()
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else { continue }
            if let err = obj["error"] { throw AgentError(description: "\(command): \(err)") }
            if let ret = obj["return"] { return ret }
        }
    }

    /// Synchronises the stream after connecting (the agent may hold stale replies).
    func sync() throws {
        let id = Int.random(in: 1..<1_000_000)
        while true {
            if let r = try call("guest-sync", ["id": id]) as? Int, r == id { return }
        }
    }

    /// Runs a program through guest-exec and polls guest-exec-status every
    /// `poll`; returns the decoded stdout length.
    func exec(_ path: String, _ args: [String] = [], poll: Duration = .milliseconds(5)) throws -> Int {
        let started = try call("guest-exec", ["path": path, "arg": args, "capture-output": true])
        guard let pid = (started as? [String: Any])?["pid"] as? Int else { throw AgentError(description: "guest-exec: no pid") }
        while true {
            let status = try call("guest-exec-status", ["pid": pid]) as? [String: Any] ?? [:]
            if status["exited"] as? Bool == true {
                if let out = status["out-data"] as? String { return Data(base64Encoded: out)?.count ?? 0 }
                return 0
            }
            Thread.sleep(forTimeInterval: Double(poll.components.attoseconds) / 1e18 + Double(poll.components.seconds))
        }
    }

    private func readLine() throws -> [UInt8] {
        while true {
            if let nl = buffer.firstIndex(of: 0x0a) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            let n = read(fd, &chunk, chunk.count)
            guard n > 0 else { throw AgentError(description: "the agent closed the connection") }
            buffer += chunk.prefix(n)
        }
    }
}
