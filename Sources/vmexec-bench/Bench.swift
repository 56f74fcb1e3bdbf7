import Foundation
import Logging
import VMExecutor

/// `make bench`: one JSON object per line and figure, vmexec measured side
/// by side with qemu-guest-agent (`guest-exec` + `guest-exec-status` polled
/// every 5 ms) running the same binaries in the same guest image.
@main
struct Bench {
    static let noopRuns = 500
    static let peerNoopRuns = 200
    static let pythonRuns = 40
    static let stdoutBytes = 256 << 20
    /// qemu-guest-agent caps captured output at 16 MB; its run moves less.
    static let peerStdoutBytes = 12 << 20

    static func main() async throws {
        signal(SIGPIPE, SIG_IGN)
        let args = CommandLine.arguments
        guard args.count == 3 else {
            FileHandle.standardError.write(Data("usage: vmexec-bench IMAGES_DIR BENCH_ROOTFS\n".utf8))
            exit(2)
        }
        var logger = Logger(label: "vmexec-bench")
        logger.logLevel = .warning
        var images = try GuestImages.locate(explicit: args[1], architecture: architecture)
        // VMEXEC_BENCH_ONLY=daemon: the daemon's figures alone (while working on them).
        if ProcessInfo.processInfo.environment["VMEXEC_BENCH_ONLY"] == "daemon" {
            return try await DaemonBench.run(images: images, logger: logger)
        }
        if ProcessInfo.processInfo.environment["VMEXEC_BENCH_ONLY"] == "python" {
            return try await PythonBench.run(images: images, logger: logger)
        }
        if ProcessInfo.processInfo.environment["VMEXEC_BENCH_ONLY"] == "program" {
            return try await ProgramBench.run(images: images, logger: logger)
        }
        if ProcessInfo.processInfo.environment["VMEXEC_BENCH_ONLY"] == "folder" {
            return try await FolderBench.run(images: images, logger: logger)
        }
        if ProcessInfo.processInfo.environment["VMEXEC_BENCH_ONLY"] == "libvirt" {
            return try await LibvirtBench.run(images: images, logger: logger)
        }
        // VMEXEC_BENCH_ONLY=guest: the guest figures alone (start, exec, Python, stdout), as for another architecture.
        let guestOnly = ProcessInfo.processInfo.environment["VMEXEC_BENCH_ONLY"] == "guest"
        if !guestOnly { try ShardBench.run(sdkTree: images.directory.appendingPathComponent("sdk.tree")) }

        // Start: launch to the init's hello, median of 5, on the standard image;
        // by default a start restores the state saved after the first boot,
        // and the cold boot is measured as its own figure.
        let states = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-bench-states-\(getpid())")
        defer { try? FileManager.default.removeItem(at: states) }
        func startTimes(reuse: Bool, runs: Int) async throws -> [Double] {
            var times: [Double] = []
            for _ in 0..<runs {
                var c = SandboxConfiguration()
                c.images = images
                c.accelerator = .tcg
                c.reuseBootState = reuse
                c.bootStateDirectory = states
                let s = Sandbox(configuration: c, logger: logger)
                let t = ContinuousClock.now
                try await s.start()
                times.append(seconds(ContinuousClock.now - t))
                await s.shutdown()
            }
            return times
        }
        let cold = try await startTimes(reuse: false, runs: 5)
        _ = try await startTimes(reuse: true, runs: 1)  // boots and saves the state
        let restored = try await startTimes(reuse: true, runs: 5)
        emit("boot_hello_s", median(restored), "s", note: "a start restoring the state saved after the first boot")
        emit("cold_boot_hello_s", median(cold), "s", note: "a start that boots the kernel")
        if architecture == .aarch64 { try await CPUModelBench.run(images: images, logger: logger) }
        if !guestOnly {
            try await StoreBench.run(images: images, logger: logger)
            try await FolderBench.run(images: images, logger: logger)
            try await DaemonBench.run(images: images, logger: logger)
            try await PythonBench.run(images: images, logger: logger)
            try await ProgramBench.run(images: images, logger: logger)
            try await LibvirtBench.run(images: images, logger: logger)
        }

        // One guest on the bench image, with the agent on a second port.
        images.rootfs = URL(fileURLWithPath: args[2])
        let agentSocket = NSTemporaryDirectory() + "/vmexec-bench-qga-\(getpid()).sock"
        var c = SandboxConfiguration()
        c.images = images
        c.accelerator = .tcg
        c.reuseBootState = false  // its command line names a per-run socket
        c.extraQEMUArguments = [
            "-chardev", "socket,id=qga,path=\(agentSocket),server=on,wait=off",
            "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
        ]
        let guest = Sandbox(configuration: c, logger: logger)
        try await guest.start()
        // qemu-ga runs as a command that stays (a command's leftovers end with
        // it, so the agent must not daemonize); as root, to open its port.
        let agentRun = try await guest.stream(
            Command(
                [
                    "sh", "-c",
                    """
                    for p in /sys/class/virtio-ports/*; do
                      [ "$(cat $p/name)" = org.qemu.guest_agent.0 ] && exec qemu-ga -m virtio-serial -p /dev/$(basename $p)
                    done; echo no agent port >&2; exit 1
                    """,
                ], user: .root, limits: Limits()))
        defer { Task { try? await agentRun.signal(SIGTERM) } }
        let agent = try GuestAgentClient(socketPath: agentSocket)
        try agent.sync()

        // Warm both paths.
        for _ in 0..<20 { _ = try await guest.exec(Command(["/usr/lib/vmexec/noop"])) }
        for _ in 0..<5 { _ = try agent.exec("/usr/lib/vmexec/noop") }

        // Like the peer's guest-exec: no memory or process limit, so no cgroup of its own,
        // and the guest's /tmp (a command with the default policy is measured below as its own figure).
        let asThePeer = Command(["/usr/lib/vmexec/noop"], limits: Limits(), privateTmp: false)
        var rounds: [Double] = [], overheads: [Double] = []
        for _ in 0..<noopRuns {
            let t = ContinuousClock.now
            let r = try await guest.exec(asThePeer)
            let ms = millis(ContinuousClock.now - t)
            rounds.append(ms)
            overheads.append(ms - Double(r.usage.wallNanoseconds) / 1e6)
        }
        var peerRounds: [Double] = []
        for _ in 0..<peerNoopRuns {
            let t = ContinuousClock.now
            _ = try agent.exec("/usr/lib/vmexec/noop")
            peerRounds.append(millis(ContinuousClock.now - t))
        }
        emit("exec_noop_p50_ms", percentile(rounds, 50), "ms", peer: percentile(peerRounds, 50))
        emit("exec_noop_p99_ms", percentile(rounds, 99), "ms", peer: percentile(peerRounds, 99))
        emit("exec_overhead_p50_ms", percentile(overheads, 50), "ms")
        var limited: [Double] = []
        for _ in 0..<peerNoopRuns {
            let t = ContinuousClock.now
            _ = try await guest.exec(Command(["/usr/lib/vmexec/noop"]))
            limited.append(millis(ContinuousClock.now - t))
        }
        emit(
            "exec_noop_limited_p50_ms", percentile(limited, 50), "ms",
            note: "with the default policy: a cgroup of its own (memory.max, pids.max) and a private /tmp (a mount namespace)")

        var py: [Double] = [], peerPy: [Double] = [], native: [Double] = []
        for _ in 0..<pythonRuns {
            var t = ContinuousClock.now
            _ = try await guest.exec(Command(["python3", "-c", "pass"]))
            py.append(millis(ContinuousClock.now - t))
            t = ContinuousClock.now
            _ = try agent.exec("/usr/bin/python3", ["-c", "pass"])
            peerPy.append(millis(ContinuousClock.now - t))
            t = ContinuousClock.now
            let p = Process()
            // The system interpreter, not a version-manager shim in PATH.
            p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            p.arguments = ["-c", "pass"]
            try p.run()
            p.waitUntilExit()
            native.append(millis(ContinuousClock.now - t))
        }
        emit("exec_python_p50_ms", percentile(py, 50), "ms", peer: percentile(peerPy, 50))
        emit("python_native_p50_ms", percentile(native, 50), "ms")

        // Streamed stdout, counted as it arrives. The producer writes 64 KiB
        // blocks (`head` writes 8 KiB ones and then measures itself).
        let blocks = stdoutBytes / 65536
        var t = ContinuousClock.now
        var got = 0
        for try await e in try await guest.stream(Command(["dd", "if=/dev/zero", "bs=64k", "count=\(blocks)", "status=none"])) {
            if case .stdout(let b) = e { got += b.count }
        }
        let mbps = Double(got) / 1e6 / seconds(ContinuousClock.now - t)
        t = ContinuousClock.now
        let peerGot = try agent.exec(
            "/usr/bin/dd", ["if=/dev/zero", "bs=64k", "count=\(peerStdoutBytes / 65536)", "status=none"])
        let peerMbps = Double(peerGot) / 1e6 / seconds(ContinuousClock.now - t)
        emit(
            "stdout_mb_s", mbps, "MB/s", peer: peerMbps,
            note: "vmexec streams \(got >> 20) MiB; qemu-guest-agent captures at most 16 MB, so it moved \(peerGot >> 20) MiB")
        // The ceiling: the same bytes through a pipe inside the guest, no channel.
        let pipe = try await guest.exec(
            Command([
                "sh", "-c",
                """
                s=$(date +%s%N); dd if=/dev/zero bs=64k count=\(blocks) status=none | dd bs=64k of=/dev/null status=none; \
                e=$(date +%s%N); echo $(( (e - s) / 1000 ))
                """,
            ]))
        if let micros = Double(pipe.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)), micros > 0 {
            emit(
                "guest_pipe_mb_s", Double(blocks * 65536) / micros, "MB/s",
                note: "reference: a pipe inside the guest alone, the ceiling for any process output under this accelerator")
        }
        await guest.shutdown()
    }

    /// The guests' architecture (`make bench ARCH=…` sets `$VMEXEC_ARCH`), on every line.
    static let architecture = GuestArchitecture.preferred

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    static func emit(
        _ figure: String, _ value: Double, _ unit: String, peer: Double? = nil,
        peerName: String = "qemu-guest-agent", note: String? = nil
    ) {
        var obj: [String: Any] = [
            "figure": figure, "value": (value * 1000).rounded() / 1000, "unit": unit, "arch": architecture.rawValue,
        ]
        if let peer {
            obj["peer"] = peerName
            obj["peer_value"] = (peer * 1000).rounded() / 1000
        }
        if let note { obj["note"] = note }
        let data = try! JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    static func millis(_ d: Duration) -> Double { seconds(d) * 1000 }

    static func median(_ xs: [Double]) -> Double { percentile(xs, 50) }

    static func percentile(_ xs: [Double], _ p: Double) -> Double {
        let s = xs.sorted()
        let i = min(s.count - 1, max(0, Int((p / 100 * Double(s.count)).rounded(.up)) - 1))
        return s[i]
    }
}
