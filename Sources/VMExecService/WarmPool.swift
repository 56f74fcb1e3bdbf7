import Foundation
import Logging
import VMExecutor

/// What makes started guests interchangeable: the shards, memory, vCPUs and
/// network a sandbox asks for. A sandbox with a store never takes a pooled
/// guest (its store is the guest's root overlay, fixed at boot).
public struct PoolProfile: Sendable, Hashable, CustomStringConvertible {
    /// Shard names, sorted.
    public var shards: [String]
    public var memoryMiB: Int
    public var cpus: Int
    public var network: Bool
    /// Guests kept started and waiting.
    public var size: Int

    public init(shards: [String], memoryMiB: Int = 512, cpus: Int = 1, network: Bool = false, size: Int = 1) {
        self.shards = shards.sorted()
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        self.network = network
        self.size = size
    }

    /// Whether a sandbox of `spec` can take this profile's guests.
    func serves(_ spec: SandboxSpec) -> Bool {
        spec.store == nil && spec.shards.sorted() == shards && spec.memoryMiB == memoryMiB && spec.cpus == cpus
            && spec.network == network && spec.hostname == nil && spec.entrypoint == nil
            && (spec.folders ?? []).isEmpty
    }

    public var description: String {
        "\(shards.isEmpty ? "-" : shards.joined(separator: ",")) \(memoryMiB) MiB \(cpus) vCPU\(network ? " network" : "") ×\(size)"
    }
}

/// Started guests waiting for a sandbox: creating a sandbox of a pooled
/// profile takes one (no boot on the request's path) and the pool boots a
/// replacement in the background, one guest at a time. Each guest has run
/// one command before it waits, so a sandbox's first job finds the exec path warm, and a
/// Python guest has its warm interpreter (``Sandbox/warmPython()``) up.
actor WarmPool {
    private let profiles: [PoolProfile]
    private let make: @Sendable (PoolProfile) throws -> Sandbox
    private let logger: Logger
    private var ready: [PoolProfile: [Sandbox]] = [:]
    private var filling: Task<Void, Never>?
    private var closed = false
    /// Guests handed to sandboxes so far.
    private(set) var taken = 0

    init(profiles: [PoolProfile], logger: Logger, make: @escaping @Sendable (PoolProfile) throws -> Sandbox) {
        self.profiles = profiles
        self.make = make
        self.logger = logger
    }

    /// A started guest for `spec`, or nil when no profile serves it or none is ready.
    func take(for spec: SandboxSpec) async -> Sandbox? {
        guard let profile = profiles.first(where: { $0.serves(spec) }) else { return nil }
        defer { refill() }
        while let sandbox = ready[profile]?.popLast() {
            if await sandbox.isRunning {
                taken += 1
                return sandbox
            }
            await sandbox.shutdown()  // died while it waited: drop it
        }
        return nil
    }

    /// Guests waiting now.
    var count: Int { ready.values.reduce(0) { $0 + $1.count } }

    /// Configured memory of the waiting guests.
    var memoryMiB: Int { ready.reduce(0) { $0 + $1.key.memoryMiB * $1.value.count } }

    /// Boots guests until every profile has its size (in the background, one at a time).
    func refill() {
        guard filling == nil, !closed else { return }
        filling = Task {
            while let profile = self.wanting() {
                do {
                    let sandbox = try make(profile)
                    try await sandbox.start()
                    // Warm, not just started: under TCG a new guest translates the exec path on
                    // its first command (measured: 250 ms, then 30 ms), so the pool pays that, not the job.
                    _ = try await sandbox.exec(
                        JobRunner.command(JobRequest(["true"]), defaults: .defaults(guestMemoryMiB: profile.memoryMiB)))
                    // A Python guest waits with its warm interpreter up and the shards' preloads
                    // imported; a guest without Python refuses at once, and that is no failure.
                    _ = try? await sandbox.warmPython()
                    if self.keep(sandbox, for: profile) { continue }
                    await sandbox.shutdown()
                } catch {
                    self.logger.error("the warm pool could not start a guest for \(profile): \(error)")
                    try? await Task.sleep(for: .seconds(5))  // not in a tight loop against a broken image
                }
            }
            self.doneFilling()
        }
    }

    /// Stops every waiting guest; nothing refills any more.
    func close() async {
        closed = true
        filling?.cancel()
        let all = ready.values.flatMap { $0 }
        ready.removeAll()
        for sandbox in all { await sandbox.shutdown() }
    }

    private func wanting() -> PoolProfile? {
        guard !closed else { return nil }
        return profiles.first { (ready[$0]?.count ?? 0) < $0.size }
    }

    private func keep(_ sandbox: Sandbox, for profile: PoolProfile) -> Bool {
        guard !closed else { return false }
        ready[profile, default: []].append(sandbox)
        return true
    }

    private func doneFilling() { filling = nil }
}
