import Crypto
import Foundation
import Testing
import VMExecTestSupport

/// Peak resident memory (VmHWM) of a running process, in KiB; nil once it is gone.
func peakKiB(of pid: Int32) -> Int? { memoryKiB("VmHWM", of: pid) }

/// The CLI binary `make test` builds.
var vmexecBinary: String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/debug/vmexec")
        .standardized.path
}

/// A CLI process run to its end on a Dispatch thread, with its peak memory sampled while it runs.
func runMeasured(_ args: [String], timeout: Double = 300, environment: [String: String] = [:]) async throws -> (
    status: Int32, stderr: String, peakKiB: Int
) {
    try await withCheckedThrowingContinuation { c in
        DispatchQueue.global().async {
            c.resume(
                with: Result {
                    let p = Process()
                    p.executableURL = URL(fileURLWithPath: vmexecBinary)
                    p.arguments = args
                    p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
                    let err = Pipe()
                    p.standardError = err
                    p.standardOutput = FileHandle.nullDevice
                    try p.run()
                    let deadline = Date().addingTimeInterval(timeout)
                    var peak = 0
                    while p.isRunning {
                        if let kib = peakKiB(of: p.processIdentifier) { peak = max(peak, kib) }
                        if Date() > deadline { kill(p.processIdentifier, SIGKILL) }
                        usleep(20_000)
                    }
                    p.waitUntilExit()
                    let e = err.fileHandleForReading.readDataToEndOfFile()
                    return (p.terminationStatus, String(decoding: e, as: UTF8.self), peak)
                })
        }
    }
}

/// sha256 of a host file, read in 1 MiB pieces.
func sha256(ofFile path: String) throws -> String {
    let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
    defer { try? h.close() }
    var hasher = SHA256()
    while let d = try h.read(upToCount: 1 << 20), !d.isEmpty { hasher.update(data: d) }
    return hasher.finalize().map { String(format: "%02x", $0) }.joined()
}

/// A wait in a test that ran past its deadline.
struct TestTimeout: Error, CustomStringConvertible {
    let description: String
}
