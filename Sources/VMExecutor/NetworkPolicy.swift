/// Whether and how the guest reaches a network. The default is none at all:
/// the guest has no network device, only its own (down) loopback.
///
/// Asked for, it gets QEMU's user-mode network (slirp) in its `restrict`
/// mode: the guest can open no connection to anywhere, the host's own
/// loopback services included (which slirp would otherwise expose as
/// 10.0.2.2), except through the forwards listed here. The guest is
/// 10.0.2.15/24 on eth0.
public struct NetworkPolicy: Sendable, Equatable {
    /// A TCP port of the guest made reachable on the host's loopback.
    public struct Published: Sendable, Equatable {
        /// Port on 127.0.0.1 of the host.
        public var hostPort: UInt16
        public var guestPort: UInt16
        public init(hostPort: UInt16, guestPort: UInt16) {
            self.hostPort = hostPort
            self.guestPort = guestPort
        }
    }

    /// A host TCP service made reachable from the guest, at
    /// ``guestAddress``:`guestPort`. QEMU connects to the host service
    /// when the guest starts and carries one connection through it.
    public struct Forwarded: Sendable, Equatable {
        public var guestPort: UInt16
        public var hostAddress: String
        public var hostPort: UInt16
        public init(guestPort: UInt16, hostAddress: String = "127.0.0.1", hostPort: UInt16) {
            self.guestPort = guestPort
            self.hostAddress = hostAddress
            self.hostPort = hostPort
        }
    }

    /// Where the guest finds the forwarded host services.
    public static let guestAddress = "10.0.2.100"

    public var enabled: Bool
    public var published: [Published]
    public var forwarded: [Forwarded]

    /// No network device (the default).
    public static let none = NetworkPolicy(enabled: false)

    public init(enabled: Bool, published: [Published] = [], forwarded: [Forwarded] = []) {
        self.enabled = enabled
        self.published = published
        self.forwarded = forwarded
    }

    /// The `-netdev` of the network backend. Not part of a saved boot state's
    /// key: the device is, the forwards may differ from start to start.
    func backendArguments() throws -> [String] {
        guard enabled else { return [] }
        var spec = "user,id=\(MachineProfile.networkID),restrict=on,net=10.0.2.0/24,host=10.0.2.2"
        for p in published { spec += ",hostfwd=tcp:127.0.0.1:\(p.hostPort)-:\(p.guestPort)" }
        for f in forwarded {
            guard f.hostAddress.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: ".") }) else {
                throw VMExecError(.invalidRequest, "a forward's host address must be an IPv4 address, not '\(f.hostAddress)'")
            }
            spec += ",guestfwd=tcp:\(Self.guestAddress):\(f.guestPort)-tcp:\(f.hostAddress):\(f.hostPort)"
        }
        return ["-netdev", spec]
    }
}
