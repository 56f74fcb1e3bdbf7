import Foundation
import Logging
import VMExecutor

/// The field's download-to-ready figure: from the start of `vmexec program install` of a 10 MB
/// program folder to its first output line through `vmexec program run`, beside the same
/// program's first run by plain `vmexec up` + `vmexec cp` (the folder as one tar) + `vmexec exec`.
/// Both through the vmexec command, whole processes, in a library and daemon home of their own.
enum ProgramBench {
    static func run(images: GuestImages, logger: Logger) async throws {
        let home = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmexec-bench-program-\(getpid())")
        defer { try? FileManager.default.removeItem(at: home) }
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        let environment = [
            "VMEXEC_LIBRARY": home.appendingPathComponent("library").path,
            "VMEXEC_STATE": home.appendingPathComponent("state").path,
            "VMEXEC_RUNTIME": home.appendingPathComponent("run").path, "VMEXEC_IMAGES": images.directory.path,
        ]
        func vmexec(_ args: [String]) throws -> String {
            let (status, output) = try launch(args, environment: environment, untilLine: false)
            guard status == 0 else { throw Bench.Failure("vmexec \(args.joined(separator: " ")) exited \(status): \(output)") }
            return output
        }
        // The vendor's signed SDK in the library (not timed: it arrives once, apart from programs).
        let key = home.appendingPathComponent("vendor").path
        let sdk = home.appendingPathComponent("sdk-python.shard").path
        try FileManager.default.copyItem(atPath: images.directory.appendingPathComponent("sdk-python.shard").path, toPath: sdk)
        _ = try vmexec(["keygen", "-o", key])
        _ = try vmexec(["shard", "sign", "--key", key + ".key", sdk])
        _ = try vmexec(["trust", "add", key + ".pub"])
        _ = try vmexec(["shard", "install", sdk])
        let program = try makeProgram(in: home)

        // Download to ready: install, then run until the first line.
        var ready: [Double] = []
        for round in 1...3 {
            let t = ContinuousClock.now
            _ = try vmexec(["program", "install", program.path, "--name", "bench", "--version", "\(round)"])
            let (status, line) = try launch(["program", "run", "bench"], environment: environment, untilLine: true)
            guard status == 0, line.hasPrefix("ready") else { throw Bench.Failure("program run: \(status) \(line)") }
            ready.append(Bench.seconds(ContinuousClock.now - t))
        }
        // The peer: a sandbox, the folder copied in as one tar, then the program.
        let tar = home.appendingPathComponent("program.tar").path
        let pack = Process()
        pack.executableURL = URL(fileURLWithPath: "/bin/tar")
        pack.arguments = ["-cf", tar, "-C", home.path, "program"]
        try pack.run()
        pack.waitUntilExit()
        var copied: [Double] = []
        for round in 1...3 {
            let t = ContinuousClock.now
            _ = try vmexec(["up", "peer\(round)", "--shard", "cpython"])
            _ = try vmexec(["cp", tar, "peer\(round):/home/vmexec/program.tar"])
            let (status, line) = try launch(
                [
                    "exec", "peer\(round)", "--", "sh", "-c",
                    "cd /home/vmexec && tar -xf program.tar && exec python3 program/main.py",
                ], environment: environment, untilLine: true)
            guard status == 0, line.hasPrefix("ready") else { throw Bench.Failure("peer exec: \(status) \(line)") }
            copied.append(Bench.seconds(ContinuousClock.now - t))
            _ = try vmexec(["down", "peer\(round)"])
        }
        if let pid = try? String(contentsOfFile: environment["VMEXEC_RUNTIME"]! + "/daemon.sock.pid", encoding: .utf8),
            let n = Int32(pid.trimmingCharacters(in: .whitespacesAndNewlines))
        {
            kill(n, SIGTERM)
        }
        Bench.emit(
            "program_ready_s", Bench.median(ready), "s", peer: Bench.median(copied),
            peerName: "vmexec up + vmexec cp of the folder as a tar + vmexec exec",
            note: "vmexec program install of a 10 MB folder, then program run to its first line, whole processes (target 5 s)")
    }

    /// A 10 MB program: a package of 200 modules (4 MB of source) and 6 MB of data it reads.
    static func makeProgram(in home: URL) throws -> URL {
        let root = home.appendingPathComponent("program")
        let package = root.appendingPathComponent("fieldapp")
        try FileManager.default.createDirectory(at: package, withIntermediateDirectories: true)
        try "".write(to: package.appendingPathComponent("__init__.py"), atomically: true, encoding: .utf8)
        let body = (0..<400).map { "def f\($0)(x):\n    return x * \($0) + \($0 % 7)  # a line of field logic\n" }.joined()
        for i in 0..<200 {
            try "# module \(i)\n\(body)".write(to: package.appendingPathComponent("m\(i).py"), atomically: true, encoding: .utf8)
        }
        var random = SystemRandomNumberGenerator()
        let data = (0..<(6 << 20)).map { _ in UInt8.random(in: 0...255, using: &random) }
        try Data(data).write(to: root.appendingPathComponent("calibration.bin"))
        try """
        print("ready", flush=True)
        import os
        from fieldapp import m0, m199
        print(m0.f1(2) + m199.f399(1), os.path.getsize(os.path.join(os.path.dirname(__file__), "calibration.bin")))
        """.write(to: root.appendingPathComponent("main.py"), atomically: true, encoding: .utf8)
        return root
    }

    /// Runs the vmexec command beside this benchmark; with `untilLine`, returns at its first stdout line
    /// (the process left to finish), else waits for it and returns its output.
    static func launch(_ args: [String], environment: [String: String], untilLine: Bool) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = PythonBench.vmexecBinary
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        p.standardOutput = out
        let err = Pipe()
        p.standardError = err
        try p.run()
        if untilLine {
            var line = Data()
            while !line.contains(10), let chunk = try out.fileHandleForReading.read(upToCount: 1), !chunk.isEmpty {
                line += chunk
            }
            let first = String(decoding: line, as: UTF8.self)
            _ = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            let why = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            return (p.terminationStatus, first.isEmpty ? why : first)
        }
        let output = out.fileHandleForReading.readDataToEndOfFile()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: output + errors, as: UTF8.self))
    }
}
