import Foundation
import SquashMounts
import Testing

@Suite("Shard verification and manifests")
struct ShardVerifyTests {
    private func flip(_ path: String, at offset: UInt64) throws {
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: offset)
        let byte = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: Data([byte ^ 0x01]))
        try handle.close()
    }

    private func built() throws -> (TreeFixture, Shard) {
        let fixture = try TreeFixture()
        try fixture.populate()
        let shard = try ShardBuilder.create(
            from: fixture.tree.path, to: fixture.path("t.shard"),
            manifest: testManifest(name: "numpy", version: "1.26.4", kind: .libs))
        return (fixture, shard)
    }

    @Test(
        "one byte flipped anywhere in the image is caught, and the error names the shard and the reason",
        arguments: [0, 100, 4096, 200_000])
    func flippedImageByte(offset: UInt64) throws {
        let (fixture, shard) = try built()
        try flip(shard.path, at: offset)
        let reopened = try Shard.open(shard.path)
        let error = try #require(throws: ShardError.self) { try reopened.verify(deep: false) }
        #expect(error.code == .checksumMismatch)
        #expect(error.message.contains("numpy 1.26.4"))
        #expect(error.message.contains(shard.path))
        _ = fixture
    }

    @Test("a damaged manifest or footer, or a file that is no shard, is refused on open")
    func damagedManifest() throws {
        let (fixture, shard) = try built()
        try flip(shard.path, at: shard.imageBytes + 3)  // inside the manifest's JSON
        #expect(throws: ShardError.self) { try Shard.open(shard.path) }

        let plain = fixture.path("plain.sqfs")
        #expect(try runTool(["mksquashfs", fixture.tree.path, plain, "-quiet", "-no-progress"]).status == 0)
        let error = try #require(throws: ShardError.self) { try Shard.open(plain) }
        #expect(error.code == .notAShard)
        #expect(error.message.contains("vmexec shard create"))

        // Every byte counts: a manifest field that stays valid JSON, the zero padding, the footer's digest.
        for offset in [{ (s: Shard) in s.imageBytes + 20 }, { $0.fileBytes - 100 }, { $0.fileBytes - 10 }] {
            let (again, shard) = try built()
            let json = try Data(contentsOf: URL(fileURLWithPath: shard.path))[Int(shard.imageBytes)...].prefix(40)
            _ = json
            try flip(shard.path, at: offset(shard))
            let error = try #require(throws: ShardError.self) { try Shard.open(shard.path) }
            #expect(error.code == .checksumMismatch || error.code == .notAShard, "\(error)")
            _ = again
        }
    }

    @Test("a shard cut short is refused")
    func truncated() throws {
        let (fixture, shard) = try built()
        #expect(truncate(shard.path, off_t(shard.fileBytes - 4096)) == 0)
        #expect(throws: ShardError.self) { try Shard.open(shard.path).verify() }
        _ = fixture
    }

    @Test("deep verification reads every file; the intact shard passes with every check named")
    func intact() throws {
        let (fixture, shard) = try built()
        let verification = try shard.verify(deep: true)
        #expect(verification.checks.contains("every file's data"))
        #expect(verification.sha256 == shard.manifest.image?.sha256)
        _ = fixture
    }

    @Test(
        "manifests with a bad name, mount point, capability or variable are refused at build time",
        arguments: [
            ShardManifest(name: "bad name", version: "1", kind: .data, placement: .mount("/opt/x")),
            ShardManifest(name: "x", version: "1", kind: .data, placement: .mount("relative")),
            ShardManifest(name: "x", version: "1", kind: .data, placement: .mount("/opt/../etc")),
            ShardManifest(name: "x", version: "1", kind: .data, placement: .mount("/proc/x")),
            ShardManifest(name: "x", version: "1", kind: .data, placement: .mount("/")),
            ShardManifest(name: "x", version: "1", kind: .data, architecture: "sparc", placement: .layer(order: 1)),
            ShardManifest(name: "x", version: "1", kind: .data, placement: .layer(order: 1), requires: ["a b"]),
            ShardManifest(name: "x", version: "1", kind: .data, placement: .layer(order: 1), environment: ["1BAD": "/x"]),
        ])
    func badManifest(manifest: ShardManifest) throws {
        let fixture = try TreeFixture()
        let error = try #require(throws: ShardError.self) {
            try ShardBuilder.create(from: fixture.tree.path, to: fixture.path("x.shard"), manifest: manifest)
        }
        #expect(error.code == .invalidArgument)
        #expect(!FileManager.default.fileExists(atPath: fixture.path("x.shard")))
    }
}

@Suite("Shard sets")
struct ShardSetTests {
    private func shard(_ fixture: TreeFixture, _ manifest: ShardManifest) throws -> Shard {
        try ShardBuilder.create(
            from: fixture.tree.path, to: fixture.path("\(manifest.name)-\(manifest.version).shard"), manifest: manifest)
    }

    @Test("requirements, names, mount points and architectures are checked, naming the shard and the reason")
    func checks() throws {
        let fixture = try TreeFixture()
        try fixture.file("x", [1])
        let sdk = try shard(
            fixture,
            ShardManifest(
                name: "cpython", version: "3.11.2", kind: .sdk, architecture: "x86_64",
                placement: .layer(order: 10), provides: ["python3.11"],
                environment: ["PATH": "/usr/local/bin"]))
        let libs = try shard(
            fixture,
            ShardManifest(
                name: "numpy", version: "1.26.4", kind: .libs, architecture: "x86_64",
                placement: .mount("/opt/libs/numpy"), requires: ["python3.11"],
                environment: ["PYTHONPATH": "/opt/libs/numpy"]))
        try ShardSet.check([sdk, libs], guestArchitecture: "x86_64")

        let unmet = try #require(throws: ShardError.self) { try ShardSet.check([libs], guestArchitecture: "x86_64") }
        #expect(unmet.code == .unmetRequirement)
        #expect(unmet.message.contains("numpy 1.26.4") && unmet.message.contains("python3.11"))

        let arch = try #require(throws: ShardError.self) { try ShardSet.check([sdk, libs], guestArchitecture: "aarch64") }
        #expect(arch.code == .wrongArchitecture)
        #expect(arch.message.contains("cpython 3.11.2"))

        let other = try shard(
            fixture, ShardManifest(name: "scipy", version: "1", kind: .libs, placement: .mount("/opt/libs/numpy")))
        let clash = try #require(throws: ShardError.self) { try ShardSet.check([sdk, libs, other], guestArchitecture: "x86_64") }
        #expect(clash.code == .conflict)
        #expect(clash.message.contains("/opt/libs/numpy") && clash.message.contains("scipy"))

        let nested = try shard(
            fixture, ShardManifest(name: "inner", version: "1", kind: .data, placement: .mount("/opt/libs/numpy/sub")))
        #expect(throws: ShardError.self) { try ShardSet.check([sdk, libs, nested], guestArchitecture: "x86_64") }

        let numpy2 = try shard(
            fixture, ShardManifest(name: "numpy", version: "2.0", kind: .libs, placement: .mount("/opt/libs/numpy2")))
        let twice = try #require(throws: ShardError.self) {
            try ShardSet.check([sdk, libs, numpy2], guestArchitecture: "x86_64")
        }
        #expect(twice.code == .conflict)

        let env = ShardSet.environment([sdk, libs], base: ["PATH": "/usr/bin:/bin"])
        #expect(env["PATH"] == "/usr/local/bin:/usr/bin:/bin")
        #expect(env["PYTHONPATH"] == "/opt/libs/numpy")
        #expect(ShardSet.layers([libs, sdk]).map(\.manifest.name) == ["cpython"])
    }

    @Test("a versioned capability meets a plain requirement, not the other way round")
    func capabilities() {
        let m = ShardManifest(name: "numpy", version: "1.26.4", kind: .libs, placement: .layer(order: 1), provides: ["blas==3"])
        #expect(m.satisfies("numpy"))
        #expect(m.satisfies("numpy==1.26.4"))
        #expect(!m.satisfies("numpy==2.0"))
        #expect(m.satisfies("blas"))
        #expect(!m.satisfies("lapack"))
    }
}
