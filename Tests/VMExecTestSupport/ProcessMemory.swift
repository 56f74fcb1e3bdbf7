import Foundation

/// A memory figure of /proc/PID/status in KiB (`VmRSS` resident now, `VmHWM` its peak), or nil once it is gone.
public func memoryKiB(_ field: String, of pid: Int32) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") })
    else { return nil }
    return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])
}

/// Resident memory of a process in KiB, or 0 once it is gone.
public func residentKiB(of pid: Int32) -> Int { memoryKiB("VmRSS", of: pid) ?? 0 }
