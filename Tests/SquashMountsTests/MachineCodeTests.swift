import Foundation
import SquashMounts
import Testing

/// A shard's architecture read from the ELF files inside.
@Suite("Machine code in a shard's tree")
struct MachineCodeTests {
    /// An ELF header (64-bit, little-endian) for `machine`, padded like a small binary.
    static func elf(_ machine: UInt16) -> Data {
        var bytes: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        bytes += [2, 0, UInt8(machine & 0xff), UInt8(machine >> 8)] + [UInt8](repeating: 0, count: 44)
        return Data(bytes)
    }

    static func tree(_ files: [String: Data]) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmexec-elf-\(UUID())")
        for (path, data) in files {
            let url = dir.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try data.write(to: url)
        }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.path
    }

    @Test("no machine code is any; one architecture is that one; a declaration that agrees is kept")
    func inferred() throws {
        let plain = try Self.tree(["run.sh": Data("#!/bin/sh\n".utf8), "data/elf.txt": Data("\u{7f}ELF".utf8)])
        let arm = try Self.tree(["bin/tool": Self.elf(183), "lib/x.so": Self.elf(183), "README": Data("hi".utf8)])
        defer { for d in [plain, arm] { try? FileManager.default.removeItem(atPath: d) } }
        #expect(try MachineCode.shardArchitecture(of: plain, declared: nil) == "any")
        #expect(try MachineCode.shardArchitecture(of: arm, declared: nil) == "aarch64")
        #expect(try MachineCode.shardArchitecture(of: arm, declared: "aarch64") == "aarch64")
        #expect(try MachineCode.shardArchitecture(of: arm, declared: "any") == "any")
        #expect(MachineCode.architecture(ofHeader: [UInt8](Self.elf(62))) == "x86_64")
    }

    @Test("machine code of another architecture than declared, or of two, is refused naming the file")
    func refused() throws {
        let x86 = try Self.tree(["bin/tool": Self.elf(62)])
        let mixed = try Self.tree(["bin/a": Self.elf(62), "bin/b": Self.elf(183)])
        defer { for d in [x86, mixed] { try? FileManager.default.removeItem(atPath: d) } }
        let wrong = try #require(throws: ShardError.self) { try MachineCode.shardArchitecture(of: x86, declared: "aarch64") }
        #expect(wrong.code == .wrongArchitecture && wrong.message.contains("bin/tool is x86_64 machine code"), "\(wrong)")
        let both = try #require(throws: ShardError.self) { try MachineCode.shardArchitecture(of: mixed, declared: nil) }
        #expect(both.code == .wrongArchitecture && both.message.contains("bin/b (aarch64), bin/a (x86_64)"), "\(both)")
    }
}
