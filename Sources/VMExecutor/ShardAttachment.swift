import Foundation
import SerialChannel
import SquashMounts

/// A shard as a drive of one guest: which QEMU block node and SCSI device
/// carry it, and the serial the init finds it by.
struct ShardAttachment: Sendable {
    let shard: Shard
    let serial: String

    var node: String { serial.replacingOccurrences(of: "-", with: "") }
    var device: String { node + "-dev" }
    var isLayer: Bool {
        if case .layer = shard.manifest.placement { return true }
        return false
    }

    /// Hot-plugs the shard's file as a read-only SCSI disk.
    func plug(_ qmp: QMPClient) async throws {
        try await Self.plugDisk(qmp, file: shard.path, node: node, device: device, serial: serial, readOnly: true)
    }

    /// Hot-plugs `file` as a SCSI disk with `serial` on the guest's virtio-scsi
    /// bus (QMP blockdev-add, then device_add; the node goes again if the device fails).
    static func plugDisk(_ qmp: QMPClient, file: String, node: String, device: String, serial: String,
                         readOnly: Bool) async throws {
        try await qmp.execute("blockdev-add", arguments: [
            "driver": "raw", "node-name": node, "read-only": readOnly,
            "file": ["driver": "file", "filename": file, "read-only": readOnly] as [String: any Sendable],
        ])
        do {
            try await qmp.execute("device_add", arguments: [
                "driver": "scsi-hd", "bus": "\(MachineProfile.shardBus).0", "drive": node, "id": device, "serial": serial,
            ])
        } catch {
            _ = try? await qmp.execute("blockdev-del", arguments: ["node-name": node])
            throw error
        }
    }

    /// Removes the disk and its block node (after the guest has let go of it).
    func unplug(_ qmp: QMPClient) async throws {
        try await qmp.execute("device_del", arguments: ["id": device])
        // A SCSI disk leaves at once, but its block node may still be referenced a moment.
        var attempt = 0
        while true {
            do {
                try await qmp.execute("blockdev-del", arguments: ["node-name": node])
                return
            } catch {
                attempt += 1
                if attempt > 100 { throw error }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }
}
