import Foundation
import Logging
import VMExecutor

/// The aarch64 guest's CPU model under TCG, measured rather than assumed:
/// vmexec's `neoverse-n1` beside the other models QEMU offers for `virt`, each
/// on the same images in the same run. A cold boot (the kernel's own start
/// dominates) and a no-op command with the default policy (the steady state).
/// `-cpu max` emulates pointer authentication with QARMA, which is slow under
/// TCG; `pauth-impdef=on` swaps in QEMU's cheaper hash.
enum CPUModelBench {
    static let alternatives = ["cortex-a57", "max,pauth-impdef=on", "max"]
    static let boots = 3
    static let execs = 100

    static func run(images: GuestImages, logger: Logger) async throws {
        let chosen = try await measure(cpu: nil, images: images, logger: logger)
        for model in alternatives {
            let other = try await measure(cpu: model, images: images, logger: logger)
            Bench.emit(
                "cpu_model_cold_boot_hello_s", chosen.boot, "s", peer: other.boot, peerName: "-cpu \(model)",
                note: "vmexec's neoverse-n1 beside another CPU model, cold boots, median of \(boots)")
            Bench.emit(
                "cpu_model_exec_noop_p50_ms", chosen.exec, "ms", peer: other.exec, peerName: "-cpu \(model)",
                note: "a no-op with the default policy, \(execs) runs")
        }
    }

    /// Cold boots, then no-op commands in the last guest; `cpu` nil is vmexec's own choice.
    static func measure(cpu: String?, images: GuestImages, logger: Logger) async throws -> (boot: Double, exec: Double) {
        var boots: [Double] = []
        var last: Sandbox?
        for i in 0..<Self.boots {
            var c = SandboxConfiguration()
            c.images = images
            c.accelerator = .tcg
            c.reuseBootState = false
            // QEMU takes the last -cpu it is given.
            if let cpu { c.extraQEMUArguments = ["-cpu", cpu] }
            let s = Sandbox(configuration: c, logger: logger)
            let t = ContinuousClock.now
            try await s.start()
            boots.append(Bench.seconds(ContinuousClock.now - t))
            if i < Self.boots - 1 { await s.shutdown() } else { last = s }
        }
        guard let guest = last else { throw Bench.Failure("no guest") }
        for _ in 0..<10 { _ = try await guest.exec(Command(["/usr/lib/vmexec/noop"])) }
        var execs: [Double] = []
        for _ in 0..<Self.execs {
            let t = ContinuousClock.now
            _ = try await guest.exec(Command(["/usr/lib/vmexec/noop"]))
            execs.append(Bench.millis(ContinuousClock.now - t))
        }
        await guest.shutdown()
        return (Bench.median(boots), Bench.percentile(execs, 50))
    }
}
