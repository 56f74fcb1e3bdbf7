import Foundation
import Logging
import SquashMounts
import Testing
import VMExecTestSupport
import VMExecutor

/// Every suite that boots real guests is nested here and runs one test at a
/// time: a dozen TCG guests booting at once on a 2-core machine starve each
/// other, and then timing requirements (a dead QEMU's error within a second)
/// would measure the machine's contention instead of vmexec. Commands still
/// run concurrently inside one guest (see the 20-at-once test).
@Suite("Real guests", .serialized, .enabled(if: TestImages.ready, "the guest images are not built: run make images"))
struct RealGuests {}

/// The one failure when the images are missing (the suites above are then off).
@Test("the guest images the real-guest suites need are built")
func guestImagesBuilt() {
    #expect(TestImages.missing == nil, "\(TestImages.missing ?? "")")
}

/// One real guest booted once and shared by the tests that need "a guest":
/// the point of vmexec is many commands in one persistent guest.
actor SharedGuest {
    static let shared = SharedGuest()
    private var sandbox: Sandbox?

    func get() async throws -> Sandbox {
        if let sandbox, await sandbox.isRunning { return sandbox }
        let s = Sandbox(configuration: Self.configuration(), logger: Self.logger())
        try await s.start()
        sandbox = s
        return s
    }

    /// Test guests use the images `make test` points VMEXEC_IMAGES at, with the
    /// SDK shard (Python) attached: the base root file system has no Python.
    static func configuration() -> SandboxConfiguration {
        var c = SandboxConfiguration()
        c.images = try? GuestImages.locate()
        if let sdk = sdkShardPath, let shard = try? Shard.open(sdk) { c.shards = [shard] }
        return c
    }

    /// The SDK shard `make images` builds beside the guest images.
    static var sdkShardPath: String? { TestImages.sdkShardPath }

    /// A sandbox of its own, started, for tests that stop or break their guest.
    static func started() async throws -> Sandbox {
        let sandbox = Sandbox(configuration: configuration(), logger: logger())
        try await sandbox.start()
        return sandbox
    }

    static func logger() -> Logger {
        var l = Logger(label: "vmexec-test")
        l.logLevel = .warning
        return l
    }
}

/// sha256 in the guest is the reference; on the host we compare lengths and
/// a simple checksum computed on both sides with the same definition.
enum Checksum {
    /// Fletcher-like checksum, identical to the awk one-liner used in the guest tests.
    static func sum(_ bytes: [UInt8]) -> UInt64 {
        var a: UInt64 = 0, b: UInt64 = 0
        for x in bytes {
            a = (a + UInt64(x)) % 65521
            b = (b + a) % 65521
        }
        return b << 16 | a
    }
}
