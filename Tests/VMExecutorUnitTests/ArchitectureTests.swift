import Foundation
import Testing
import VMExecutor

/// How the guests' architecture is chosen when a caller names none.
@Suite("Guest architecture")
struct ArchitectureTests {
    @Test("VMEXEC_ARCH picks the guests' architecture; unset or empty is the host's; an unknown name is an error")
    func fromEnvironment() throws {
        #expect(try GuestArchitecture.fromEnvironment([:]) == .host)
        #expect(try GuestArchitecture.fromEnvironment(["VMEXEC_ARCH": ""]) == .host)
        #expect(try GuestArchitecture.fromEnvironment(["VMEXEC_ARCH": "aarch64"]) == .aarch64)
        #expect(try GuestArchitecture.fromEnvironment(["VMEXEC_ARCH": "x86_64"]) == .x86_64)
        let error = try #require(throws: VMExecError.self) {
            try GuestArchitecture.fromEnvironment(["VMEXEC_ARCH": "arm64"])
        }
        #expect(error.code == .invalidRequest)
        #expect(error.message.contains("'arm64'") && error.message.contains("x86_64, aarch64"), "\(error.message)")
    }

    @Test("images are looked for in the architecture's folder, and the error names the make command for it")
    func imagesPerArchitecture() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-arch-\(UUID())")
        defer { try? FileManager.default.removeItem(at: root) }
        let arm = root.appendingPathComponent("aarch64")
        try FileManager.default.createDirectory(at: arm, withIntermediateDirectories: true)
        for name in ["vmlinuz", "initramfs.cpio", "rootfs.sqfs"] {
            try Data().write(to: arm.appendingPathComponent(name))
        }
        let found = try GuestImages.locate(explicit: root.path, architecture: .aarch64)
        #expect(found.directory.standardizedFileURL.path == arm.standardizedFileURL.path)
        let error = try #require(throws: VMExecError.self) {
            try GuestImages.locate(explicit: root.path, architecture: .x86_64)
        }
        #expect(error.code == .imagesNotFound && error.message.contains("make images ARCH=x86_64"), "\(error.message)")
    }
}
