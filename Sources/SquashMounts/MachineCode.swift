import Foundation

/// The architectures of the machine code (ELF files) in a folder, so that a
/// shard's manifest says the architecture its files really are for: a shard
/// of aarch64 binaries marked `any` would be attached to an x86_64 guest and
/// fail there with "Exec format error" instead of being refused before boot.
public enum MachineCode {
    /// The architecture names vmexec uses, by ELF `e_machine`.
    static let names: [UInt16: String] = [62: "x86_64", 183: "aarch64", 3: "i386", 40: "arm", 243: "riscv64"]

    /// The architecture of an ELF file's first 20 bytes, or nil when they are no ELF header.
    public static func architecture(ofHeader bytes: [UInt8]) -> String? {
        guard bytes.count >= 20, bytes.starts(with: [0x7f, 0x45, 0x4c, 0x46]) else { return nil }
        let machine = bytes[5] == 2 ? UInt16(bytes[18]) << 8 | UInt16(bytes[19]) : UInt16(bytes[18]) | UInt16(bytes[19]) << 8
        return names[machine] ?? "machine \(machine)"
    }

    /// Every architecture found among the regular files under `folder`, each
    /// with the first file (relative path) that has it. Symbolic links are not followed.
    public static func scan(_ folder: String) -> [String: String] {
        var found: [String: String] = [:]
        guard let walker = FileManager.default.enumerator(atPath: folder) else { return found }
        while let relative = walker.nextObject() as? String {
            guard (walker.fileAttributes?[.type] as? FileAttributeType) == .typeRegular,
                let handle = FileHandle(forReadingAtPath: "\(folder)/\(relative)")
            else { continue }
            let head = [UInt8]((try? handle.read(upToCount: 20)) ?? Data())
            try? handle.close()
            if let arch = architecture(ofHeader: head), found[arch] == nil { found[arch] = relative }
        }
        return found
    }

    /// The architecture a shard of `folder` is for: `declared` when the
    /// machine code agrees with it (or when it is `any`, a choice made on
    /// purpose), else the one architecture of the machine code inside, else
    /// `any` for a folder without machine code. Machine code of two
    /// architectures, or of another than the declared one, is an error.
    public static func shardArchitecture(of folder: String, declared: String?) throws(ShardError) -> String {
        let found = scan(folder)
        if declared == "any" { return "any" }
        if let declared {
            if let (other, file) = found.first(where: { $0.key != declared }) {
                throw ShardError(
                    .wrongArchitecture,
                    "\(folder)/\(file) is \(other) machine code, and the shard is declared for \(declared); "
                        + "build it for \(declared) or declare --arch \(other)")
            }
            return declared
        }
        guard found.count <= 1 else {
            let list = found.sorted { $0.key < $1.key }.map { "\($0.value) (\($0.key))" }.joined(separator: ", ")
            throw ShardError(
                .wrongArchitecture,
                "\(folder) holds machine code of several architectures: \(list); make one shard per architecture, "
                    + "or pass --arch any if the guest never runs them")
        }
        return found.first?.key ?? "any"
    }
}
