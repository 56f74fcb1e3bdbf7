import Crypto
import Foundation
import ShardLibrary
import SquashMounts
import Testing

/// Signatures in the shard file, and every case of the trust store's admission.
@Suite("Shard signatures and trust")
struct SignatureTests {
    @Test("a signed shard carries a signature that verifies; inspect and verify still work")
    func signAndOpen() throws {
        let f = try LibraryFixture()
        let file = try f.shard("numpy", "1.0", signer: f.vendor)
        let shard = try Shard.open(file)
        #expect(shard.signatures.count == 1)
        #expect(shard.signatures[0].fingerprint == f.vendor.publicKey.fingerprint)
        #expect(shard.signatures[0].isValid(for: shard))
        #expect(try shard.verify().name == "numpy")
        // Signing again with the same key replaces its signature; another key adds one.
        try ShardSigner.sign(file, with: f.vendor)
        let other = ShardSigningKey(name: "other")
        try ShardSigner.sign(file, with: other)
        #expect(
            try Shard.open(file).signatures.map(\.fingerprint) == [f.vendor.publicKey.fingerprint, other.publicKey.fingerprint])
        #expect(try f.library.install(file, by: "test").version.signer?.hasPrefix(f.vendor.publicKey.fingerprint) == true)
    }

    @Test("key files round-trip; a private key others may read is refused; keys are never overwritten")
    func keyFiles() throws {
        let f = try LibraryFixture()
        let base = f.path("k")
        let key = ShardSigningKey(name: "k")
        try key.save(base: base)
        #expect(try ShardPublicKey.load(base + ".pub") == key.publicKey)
        #expect(try ShardSigningKey.load(base + ".key").publicKey == key.publicKey)
        #expect(shardError { try key.save(base: base) }?.message.contains("never overwritten") == true)
        chmod(base + ".key", 0o644)
        #expect(shardError { _ = try ShardSigningKey.load(base + ".key") }?.message.contains("others may read") == true)
        #expect(shardError { _ = try ShardPublicKey.load(base + ".key") }?.code == .invalidArgument)
    }

    @Test("unsigned SDK and libs shards are refused; unsigned programs and data are accepted")
    func unsigned() throws {
        let f = try LibraryFixture()
        let libs = try f.shard("numpy", "1.0")
        let error = shardError { _ = try f.library.install(libs, by: "test") }
        #expect(error?.code == .unsigned)
        #expect(error?.message.contains("is not signed") == true)
        #expect(error?.message.contains("libs shards signed by a trusted key") == true)
        let sdk = try f.shard("cpython", "3.11", kind: .sdk, layer: 10)
        #expect(shardError { _ = try f.library.install(sdk, by: "test") }?.code == .unsigned)
        let program = try f.shard("report", "1", kind: .program, mount: "/opt/programs/report")
        #expect(try f.library.install(program, by: "test").version.signer == nil)
        let data = try f.shard("tables", "1", kind: .data, mount: "/opt/data/tables")
        #expect(try f.library.install(data, by: "test").added)
    }

    @Test("an unsigned program that reaches beyond its folder is refused: layer, mount outside /opt, environment")
    func programReach() throws {
        let f = try LibraryFixture()
        let layer = try f.shard("evil", "1", kind: .program, layer: 50)
        #expect(shardError { _ = try f.library.install(layer, by: "test") }?.message.contains("layer") == true)
        let usr = try f.shard("evil2", "1", kind: .program, mount: "/usr/local/bin")
        #expect(shardError { _ = try f.library.install(usr, by: "test") }?.message.contains("outside /opt") == true)
        let env = try f.shard(
            "evil3", "1", kind: .program, mount: "/opt/programs/evil3", environment: ["LD_PRELOAD": "/opt/programs/evil3/x.so"])
        #expect(shardError { _ = try f.library.install(env, by: "test") }?.message.contains("LD_PRELOAD") == true)
        let fine = try f.shard(
            "fine", "1", kind: .program, mount: "/opt/programs/fine", environment: ["PYTHONPATH": "/opt/programs/fine"])
        #expect(try f.library.install(fine, by: "test").added)
        // Signed by the vendor, the layer is fine.
        try ShardSigner.sign(layer, with: f.vendor)
        #expect(try f.library.install(layer, by: "test").added)
    }

    @Test("a shard changed after signing is refused, whatever its kind; a damaged image too")
    func tampered() throws {
        let f = try LibraryFixture()
        // The manifest edited (kind libs -> data, so no signature would be needed) and its footer digest fixed up.
        let file = try f.shard("numpy", "1.0", signer: f.vendor)
        try rewriteManifest(file) { $0.replacingOccurrences(of: "\"kind\" : \"libs\"", with: "\"kind\" : \"data\"") }
        let error = shardError { _ = try f.library.install(file, by: "test") }
        #expect(error?.code == .badSignature, "\(String(describing: error))")
        #expect(error?.message.contains("changed after it was signed") == true)
        // A byte of the image flipped: the signature still matches the manifest, the image does not.
        let damaged = try f.shard("numpy", "2.0", signer: f.vendor)
        let fd = open(damaged, O_RDWR)
        var byte: UInt8 = 0
        pread(fd, &byte, 1, 200)
        byte ^= 0xff
        pwrite(fd, &byte, 1, 200)
        close(fd)
        #expect(shardError { _ = try f.library.install(damaged, by: "test") }?.code == .checksumMismatch)
        #expect(try f.library.list().isEmpty)
    }

    @Test("a shard signed by a key the host does not trust is refused, and accepted once the key is added")
    func untrusted() throws {
        let f = try LibraryFixture()
        let stranger = ShardSigningKey(name: "stranger")
        let file = try f.shard("numpy", "1.0", signer: stranger)
        let error = shardError { _ = try f.library.install(file, by: "test") }
        #expect(error?.code == .untrustedSigner)
        #expect(error?.message.contains(stranger.publicKey.fingerprint) == true)
        #expect(error?.message.contains("vmexec trust add") == true)
        try f.library.trust.add(stranger.publicKey, by: "test")
        #expect(try f.library.install(file, by: "test").added)
        // Removed from the trust store: attaching it now is refused.
        _ = try f.library.trust.remove("stranger", by: "test")
        #expect(shardError { _ = try f.library.checkout(["numpy"], architecture: "x86_64") }?.code == .untrustedSigner)
    }

    @Test("a revoked key's shards are refused at install and at attach; a revoked key cannot be trusted again")
    func revoked() throws {
        let f = try LibraryFixture()
        let installed = try f.shard("numpy", "1.0", signer: f.vendor)
        _ = try f.library.install(installed, by: "test")
        _ = try f.library.checkout(["numpy"], architecture: "x86_64")
        _ = try f.library.trust.revoke(f.vendor.publicKey.fingerprint, by: "security officer")
        let atAttach = shardError { _ = try f.library.checkout(["numpy"], architecture: "x86_64") }
        #expect(atAttach?.code == .revokedSigner)
        #expect(atAttach?.message.contains("revoked on") == true)
        #expect(atAttach?.message.contains("security officer") == true)
        let newer = try f.shard("numpy", "2.0", signer: f.vendor)
        #expect(shardError { _ = try f.library.install(newer, by: "test") }?.code == .revokedSigner)
        #expect(shardError { try f.library.trust.add(f.vendor.publicKey, by: "test") }?.code == .revokedSigner)
        // A key revoked from its .pub file before it was ever trusted is known only to be refused.
        let leaked = ShardSigningKey(name: "leaked")
        _ = try f.library.trust.revoke(leaked.publicKey, by: "test")
        let leakedShard = try f.shard("pandas", "1.0", signer: leaked)
        #expect(shardError { _ = try f.library.install(leakedShard, by: "test") }?.code == .revokedSigner)
    }

    @Test("the policy per kind can be changed, and is kept")
    func policy() throws {
        let f = try LibraryFixture()
        try f.library.trust.setPolicy(.program, .signed, by: "test")
        let program = try f.shard("report", "1", kind: .program, mount: "/opt/programs/report")
        #expect(shardError { _ = try f.library.install(program, by: "test") }?.code == .unsigned)
        let reopened = try ShardLibrary(directory: f.library.directory)
        #expect(try reopened.trust.policy().requirement(for: .program) == .signed)
        try reopened.trust.setPolicy(.libs, .any, by: "test")
        #expect(try reopened.install(try f.shard("numpy", "1.0"), by: "test").added)
    }

    /// Edits the manifest JSON in place and fixes the footer's digest, as an attacker would.
    private func rewriteManifest(_ file: String, _ edit: (String) -> String) throws {
        var data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        let footer = data.count - 64
        func u32(_ at: Int) -> Int { Int(data[at..<at + 4].reversed().reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }) }
        func u64(_ at: Int) -> Int { Int(data[at..<at + 8].reversed().reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }) }
        let length = u32(footer + 12)
        let offset = u64(footer + 24)
        let json = String(decoding: data[offset..<offset + length], as: UTF8.self)
        let edited = Array(edit(json).utf8)
        #expect(edited.count == length, "the edit must keep the length")
        data.replaceSubrange(offset..<offset + length, with: edited)
        let digest = Array(SHA256.hash(data: edited))
        data.replaceSubrange(footer + 32..<footer + 64, with: digest)
        try Data(data).write(to: URL(fileURLWithPath: file))
    }
}
