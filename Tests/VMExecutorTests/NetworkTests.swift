import Foundation
import Testing

@testable import VMExecutor

/// A TCP listener on the host's loopback that greets whoever connects; the
/// only address network tests ever use.
final class LoopbackListener: @unchecked Sendable {
    let fd: Int32
    let port: UInt16

    init(greeting: String) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0 && listen(fd, 8) == 0)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        port = UInt16(bigEndian: addr.sin_port)
        let bytes = Array(greeting.utf8)
        Thread.detachNewThread {
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { return }
                _ = bytes.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
                Glibc.close(c)
            }
        }
    }

    /// A port nobody listens on now (for a published guest port).
    static func freePort() throws -> UInt16 {
        let l = try LoopbackListener(greeting: "")
        defer { l.close() }
        return l.port
    }

    func close() { shutdown(fd, Int32(SHUT_RDWR)); Glibc.close(fd) }
}

extension RealGuests {
    @Suite("Opt-in network", .timeLimit(.minutes(5)))
    struct NetworkTests {
        @Test(
            "asked for, the guest gets eth0 but reaches no host service except the one forwarded; a published guest port answers on the host's loopback"
        )
        func restrictedUserNetwork() async throws {
            let forwarded = try LoopbackListener(greeting: "hello from the host\n")
            let other = try LoopbackListener(greeting: "must not be reached\n")
            defer { forwarded.close(); other.close() }
            let published = try LoopbackListener.freePort()
            var c = SharedGuest.configuration()
            c.network = NetworkPolicy(
                enabled: true, published: [.init(hostPort: published, guestPort: 9090)],
                forwarded: [.init(guestPort: 8080, hostPort: forwarded.port)])
            let s = Sandbox(configuration: c, logger: SharedGuest.logger())
            try await s.start()
            defer { Task { await s.shutdown() } }

            let links = try await s.exec(Command(["ls", "/sys/class/net"]))
            #expect(links.stdoutText == "eth0\nlo\n")
            let reach = try await s.exec(
                Command(
                    [
                        "python3", "-c",
                        """
                        import socket
                        def attempt(host, port):
                            try:
                                with socket.create_connection((host, port), timeout=3) as c:
                                    print(host, port, "says", c.recv(100).decode().strip())
                            except OSError as e:
                                print(host, port, "unreachable")
                        attempt("10.0.2.100", 8080)
                        attempt("10.0.2.2", \(other.port))
                        attempt("10.0.2.2", \(forwarded.port))
                        """,
                    ], timeout: .seconds(60)))
            #expect(
                reach.stdoutText == """
                    10.0.2.100 8080 says hello from the host
                    10.0.2.2 \(other.port) unreachable
                    10.0.2.2 \(forwarded.port) unreachable

                    """, "\(reach.stdoutText)\(reach.stderrText)")

            // A server in the guest, reached through the published port on the host's loopback.
            let server = try await s.stream(
                Command(
                    [
                        "python3", "-c",
                        """
                        import socket
                        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        s.bind(("0.0.0.0", 9090)); s.listen(1); print("listening", flush=True)
                        c, _ = s.accept(); c.sendall(b"hello from the guest\\n"); c.close()
                        """,
                    ], timeout: .seconds(60)))
            var it = server.makeAsyncIterator()
            _ = try await it.next()  // "listening"
            let answer = await Task.detached { () -> String in
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                defer { close(fd) }
                var addr = sockaddr_in()
                addr.sin_family = sa_family_t(AF_INET)
                addr.sin_addr.s_addr = inet_addr("127.0.0.1")
                addr.sin_port = published.bigEndian
                let rc = withUnsafePointer(to: &addr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
                guard rc == 0 else { return "connect failed" }
                var buf = [UInt8](repeating: 0, count: 100)
                let n = read(fd, &buf, 100)
                return String(decoding: buf.prefix(max(0, n)), as: UTF8.self)
            }.value
            #expect(answer == "hello from the guest\n")
            while (try await it.next()) != nil {}
        }
    }
}
