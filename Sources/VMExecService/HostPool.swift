import Foundation
import Logging
import VMExecutor

/// A host the daemon may place sandboxes on.
public struct HostSpec: Sendable, Equatable {
    /// How the API and `vmexec hosts` name it.
    public var name: String
    /// Its libvirt URI; nil: this machine's QEMU process machine (`local`).
    public var uri: String?
    /// Guests at most on it.
    public var maxGuests: Int

    public init(name: String, uri: String?, maxGuests: Int = 8) {
        self.name = name
        self.uri = uri
        self.maxGuests = maxGuests
    }

    /// The QEMU process machine on this host: what a daemon without a host list uses.
    public static let local = HostSpec(name: "local", uri: nil, maxGuests: .max)

    /// `URI`, `NAME=URI`, `URI,guests=N` or `NAME=URI,guests=N` (`local` for the QEMU process machine).
    public static func parse(_ text: String) throws(VMExecError) -> HostSpec {
        var parts = text.split(separator: ",").map(String.init)
        guard let first = parts.first, !first.isEmpty else {
            throw VMExecError(.invalidRequest, "--host needs a libvirt URI (qemu+tls://host/system) or local")
        }
        parts.removeFirst()
        var name: String?
        var uri = first
        if let eq = first.firstIndex(of: "="), !first[..<eq].contains(":") {
            name = String(first[..<eq])
            uri = String(first[first.index(after: eq)...])
        }
        var maxGuests = 8
        for option in parts {
            guard option.hasPrefix("guests="), let n = Int(option.dropFirst("guests=".count)), n > 0 else {
                throw VMExecError(.invalidRequest, "--host \(text): unknown option \(option) (guests=N is known)")
            }
            maxGuests = n
        }
        if uri == "local" { return HostSpec(name: name ?? "local", uri: nil, maxGuests: parts.isEmpty ? .max : maxGuests) }
        guard uri.contains("://") else {
            throw VMExecError(.invalidRequest, "--host \(text): \(uri) is no libvirt URI (qemu+tls://host/system)")
        }
        let host = URLComponents(string: uri)?.host
        return HostSpec(name: name ?? ((host?.isEmpty ?? true) ? "libvirt-local" : host!), uri: uri, maxGuests: maxGuests)
    }
}

/// A host and how it is doing, for `GET /v1/hosts` and `vmexec hosts`.
public struct HostStatus: Sendable, Equatable {
    public var name: String
    public var uri: String
    public var up: Bool
    /// Why it is down (or the last reason it was).
    public var reason: String?
    public var guests: Int
    public var maxGuests: Int
    /// The configured memory of the guests placed on it.
    public var guestMemoryMiB: Int
    /// What libvirt reports free there (nil for the local machine or a host that does not answer).
    public var freeMemoryMiB: Int?
}

/// The daemon's hosts: where a new sandbox goes, which hosts are up, and the
/// hypervisor of each. A sandbox stays on the host it was placed on; a host
/// whose connection is lost is down (its guests' calls have failed with that
/// reason) until a new connection answers, tried every few seconds.
public actor HostPool {
    private struct Host {
        var spec: HostSpec
        var connection: LibvirtConnection?
        var reason: String?
        /// Memory of the sandboxes placed here, by sandbox id.
        var placed: [String: Int] = [:]
        var freeMemoryMiB: Int?
        /// Domains a lost connection left running, ended once the host answers again.
        var abandoned: [String] = []
        var up: Bool { spec.uri == nil || (connection != nil && connection?.lost == nil) }
    }
    private var hosts: [Host]
    private let logger: Logger
    private var monitor: Task<Void, Never>?
    /// How often down hosts are tried again and up ones asked for their free memory.
    let interval: Duration

    /// The hosts as configured (they do not change while the pool lives).
    nonisolated public let specs: [HostSpec]

    public init(_ specs: [HostSpec], logger: Logger, interval: Duration = .seconds(2)) {
        self.specs = specs.isEmpty ? [.local] : specs
        self.hosts = self.specs.map { Host(spec: $0) }
        self.logger = logger
        self.interval = interval
    }

    /// Connects to every libvirt host (those that do not answer start down) and starts watching them.
    public func start() async {
        for i in hosts.indices { await connect(i) }
        guard monitor == nil else { return }
        let interval = self.interval
        monitor = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                await self?.look()
            }
        }
    }

    public func stop() {
        monitor?.cancel()
        monitor = nil
    }

    /// Whether sandboxes go anywhere but this machine's QEMU.
    public var onlyLocal: Bool { hosts.count == 1 && hosts[0].spec.uri == nil }

    private func connect(_ i: Int) async {
        guard let uri = hosts[i].spec.uri else { return }
        do {
            let connection = try await LibvirtConnection.open(uri)
            // Guests of the lost connection still running there are nobody's now: their sandboxes boot anew.
            if !hosts[i].abandoned.isEmpty {
                let destroyed = await connection.destroy(hosts[i].abandoned)
                if destroyed > 0 {
                    logger.notice(
                        "ended \(destroyed) guests the lost connection left", metadata: ["host": "\(hosts[i].spec.name)"])
                }
                hosts[i].abandoned = []
            }
            let free = await connection.freeMemoryMiB()
            if hosts[i].connection == nil || hosts[i].reason != nil {
                logger.notice("libvirt host is up", metadata: ["host": "\(hosts[i].spec.name)"])
            }
            hosts[i].connection = connection
            hosts[i].reason = nil
            hosts[i].freeMemoryMiB = free
        } catch {
            if hosts[i].reason == nil {
                logger.warning("libvirt host is down: \(error)", metadata: ["host": "\(hosts[i].spec.name)"])
            }
            hosts[i].connection = nil
            hosts[i].reason = "\(error)"
        }
    }

    /// One look at every host: lost connections make hosts down; down ones are tried again.
    private func look() async {
        for i in hosts.indices where hosts[i].spec.uri != nil {
            if let connection = hosts[i].connection, let lost = connection.lost {
                logger.warning("libvirt host is down: \(lost)", metadata: ["host": "\(hosts[i].spec.name)"])
                lose(i, connection, lost)
            }
            if let connection = hosts[i].connection {
                hosts[i].freeMemoryMiB = await connection.freeMemoryMiB()
            } else {
                await connect(i)
            }
        }
    }

    /// Chooses the host for a new sandbox: among the hosts that are up, have a guest to
    /// spare and (libvirt) report the memory free, the one with the most free memory after
    /// what is placed there already; `localOnly` (a store: its image is a file here) keeps
    /// to hosts on this machine. Records the placement.
    public func place(_ sandbox: String, memoryMiB: Int, localOnly: Bool) async throws -> String {
        await lookAtDownOnes()
        var best: (index: Int, room: Int)?
        var refusals: [String] = []
        for (i, host) in hosts.enumerated() {
            let name = host.spec.name
            guard host.up else {
                refusals.append("\(name) is down (\(host.reason ?? "no connection"))")
                continue
            }
            if localOnly, let uri = host.spec.uri, URLComponents(string: uri)?.host?.isEmpty == false {
                refusals.append("\(name) is remote and the sandbox has a store here")
                continue
            }
            guard host.placed.count < host.spec.maxGuests else {
                refusals.append("\(name) runs its most guests (\(host.spec.maxGuests))")
                continue
            }
            // Free memory (libvirt's node figure, or this machine's MemFree) less the configured memory
            // of the guests placed there: conservative, as running guests count in both.
            let free = host.spec.uri == nil ? Self.localFreeMemoryMiB() : host.freeMemoryMiB
            let room = (free ?? 0) - host.placed.values.reduce(0, +)
            guard room >= memoryMiB else {
                refusals.append("\(name) has \(max(room, 0)) MiB free for guests")
                continue
            }
            if best == nil || room > best!.room { best = (i, room) }
        }
        guard let best else {
            throw VMExecError(
                .limitReached,
                "no host has room for a guest of \(memoryMiB) MiB: " + refusals.joined(separator: "; ")
                    + "; try again once a sandbox ends or a host is back")
        }
        hosts[best.index].placed[sandbox] = memoryMiB
        return hosts[best.index].spec.name
    }

    /// Records a sandbox on a host it was placed on before (a daemon restart).
    public func adopt(_ sandbox: String, host: String, memoryMiB: Int) {
        if let i = hosts.firstIndex(where: { $0.spec.name == host }) { hosts[i].placed[sandbox] = memoryMiB }
    }

    public func release(_ sandbox: String) {
        for i in hosts.indices { hosts[i].placed[sandbox] = nil }
    }

    /// Hosts that went down since the last look are noticed before a placement.
    private func lookAtDownOnes() async {
        for i in hosts.indices {
            if let connection = hosts[i].connection, let lost = connection.lost { lose(i, connection, lost) }
        }
    }

    private func lose(_ i: Int, _ connection: LibvirtConnection, _ why: String) {
        hosts[i].abandoned += connection.abandoned
        hosts[i].connection = nil
        hosts[i].reason = why
    }

    /// The hypervisor for a guest on `host` now: its current connection. Throws when the
    /// host is down (the sandbox waits there until it is back) or unknown.
    public func hypervisor(on host: String) throws(VMExecError) -> (any GuestHypervisor)? {
        guard let h = hosts.first(where: { $0.spec.name == host }) else {
            throw VMExecError(.notFound, "the sandbox's host \(host) is not in the daemon's host list any more")
        }
        guard let uri = h.spec.uri else { return nil }
        guard let connection = h.connection, connection.lost == nil else {
            let why = h.connection?.lost ?? h.reason ?? "no connection"
            throw VMExecError(
                .guestStopped, "the libvirt host \(host) (\(uri)) is down: \(why); it is used again once it answers")
        }
        return LibvirtHypervisor(connection: connection)
    }

    public func list() -> [HostStatus] {
        hosts.map { h in
            HostStatus(
                name: h.spec.name, uri: h.spec.uri ?? "local", up: h.up, reason: h.reason, guests: h.placed.count,
                maxGuests: h.spec.maxGuests == .max ? 0 : h.spec.maxGuests,
                guestMemoryMiB: h.placed.values.reduce(0, +),
                freeMemoryMiB: h.spec.uri == nil ? Self.localFreeMemoryMiB() : h.freeMemoryMiB)
        }
    }

    /// This machine's free memory (MemFree, as libvirt reports a node's), in MiB.
    static func localFreeMemoryMiB() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemFree:") }),
            let kib = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return nil }
        return kib >> 10
    }
}

/// The hypervisor of a sandbox placed on a host: each launch takes the host's
/// connection of that moment from the pool, so a guest booted again after its
/// host came back uses the new connection, and one on a down host fails at once.
struct PlacedHypervisor: GuestHypervisor {
    let pool: HostPool
    let host: String

    func current() async throws -> any GuestHypervisor {
        try await pool.hypervisor(on: host) ?? QEMUHypervisor()
    }

    func plan(_ choice: AcceleratorChoice, for spec: MachineSpec) async -> AcceleratorPlan {
        guard let hypervisor = try? await current() else { return .use(.tcg, reason: nil) }
        return await hypervisor.plan(choice, for: spec)
    }

    /// The host's URI (nil: this machine's QEMU), fixed for the pool's life.
    let uri: String?

    /// Local libvirt hosts keep saved states, as the Swift API's `LibvirtHypervisor` does:
    /// the key depends on the host's URI and the spec alone, not on the connection of the moment.
    func stateKey(for spec: MachineSpec, accelerator: Accelerator) -> String? {
        guard let uri else { return QEMUHypervisor().stateKey(for: spec, accelerator: accelerator) }
        return LibvirtHypervisor.stateKey(uri: uri, emulator: nil, for: spec, accelerator: accelerator)
    }

    func launch(
        _ spec: MachineSpec, accelerator: Accelerator, restoring: URL?, onExit: @escaping @Sendable (MachineEnding) -> Void
    ) async throws -> any GuestMachine {
        try await current().launch(spec, accelerator: accelerator, restoring: restoring, onExit: onExit)
    }
}
