import Foundation
import OpenAPIRuntime
import PersistOverlay
import SquashMounts
import VMExecService
import VMExecutor

/// Shards attached to a sandbox's guest, and its store with its snapshots.
extension ServiceAPI {
    func listShards(_ input: Operations.ListShards.Input) async throws -> Operations.ListShards.Output {
        let sandbox = try await registry.sandbox(owner: Caller.owner, name: input.path.sandbox)
        return .ok(.init(body: .json(await sandbox.shards.map(Components.Schemas.ShardInfo.init))))
    }

    func attachShard(_ input: Operations.AttachShard.Input) async throws -> Operations.AttachShard.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        let shard = try await registry.attachShard(owner: Caller.owner, sandbox: input.path.sandbox, shard: body.name)
        return .created(.init(body: .json(.init(shard))))
    }

    func detachShard(_ input: Operations.DetachShard.Input) async throws -> Operations.DetachShard.Output {
        try await registry.detachShard(owner: Caller.owner, sandbox: input.path.sandbox, shard: input.path.shard)
        return .noContent(.init())
    }

    func listSnapshots(_ input: Operations.ListSnapshots.Input) async throws -> Operations.ListSnapshots.Output {
        let (_, store) = try await registry.store(owner: Caller.owner, sandbox: input.path.sandbox)
        let info = try await Self.offPool { try store.info() }
        return .ok(.init(body: .json(info.snapshots.map(Components.Schemas.SnapshotInfo.init))))
    }

    func createSnapshot(_ input: Operations.CreateSnapshot.Input) async throws -> Operations.CreateSnapshot.Output {
        guard case .json(let body) = input.body else { throw Self.unsupportedBody }
        _ = try await registry.store(owner: Caller.owner, sandbox: input.path.sandbox)
        let sandbox = try await registry.sandbox(owner: Caller.owner, name: input.path.sandbox)
        return .created(.init(body: .json(.init(try await sandbox.snapshot(body.name)))))
    }

    func restoreSnapshot(_ input: Operations.RestoreSnapshot.Input) async throws -> Operations.RestoreSnapshot.Output {
        try await registry.restoreSnapshot(owner: Caller.owner, sandbox: input.path.sandbox, snapshot: input.path.snapshot)
        return .noContent(.init())
    }

    func getStore(_ input: Operations.GetStore.Input) async throws -> Operations.GetStore.Output {
        let (name, store) = try await registry.store(owner: Caller.owner, sandbox: input.path.sandbox)
        let info = try await Self.offPool { try store.info() }
        return .ok(
            .init(
                body: .json(
                    .init(
                        name: name, sizeBytes: Int(info.sizeBytes), usedBytes: Int(info.usedBytes),
                        freeBytes: Int(info.freeBytes), created: info.created, snapshots: info.snapshots.count))))
    }

    /// Runs blocking file-system work (libext2fs reads) off Swift's cooperative pool.
    static func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
        }
    }
}

extension Components.Schemas.ShardInfo {
    init(_ shard: Shard) {
        self.init(name: shard.manifest.name, version: shard.manifest.version, kind: shard.manifest.kind.rawValue)
    }
}

extension Components.Schemas.SnapshotInfo {
    init(_ s: PersistOverlay.SnapshotInfo) {
        self.init(name: s.name, created: s.created, allocatedBytes: Int(s.allocatedBytes))
    }
}
