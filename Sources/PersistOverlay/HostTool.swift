import CHostTool
import Foundation

/// Runs a host program (e2fsprogs, unsquashfs, …) and collects what it
/// printed, stdout and stderr together.
///
/// Foundation's `Process` with a `Pipe` can close a descriptor number
/// twice when programs start from several threads at once (swiftlang/swift
/// #57827): another thread's pipe then reads EBADF and Foundation traps.
/// Stores are worked on from many tasks, so this spawns with posix_spawn
/// (`CHostTool`) and owns every descriptor itself: the pipe is made
/// close-on-exec in one step, and each end is closed exactly once.
public enum HostTool {
    /// Output kept from its start (a superblock dump fits) and from its end
    /// (where a tool's error is); e2fsck on an image a guest damaged on
    /// purpose can print without end, and the middle is dropped.
    static let headLimit = 1 << 20
    static let tailLimit = 64 << 10

    /// The program's exit status (or 128+N for signal N) and its output.
    public struct Outcome: Sendable {
        public var status: Int32
        public var output: String
    }

    /// Runs `arguments[0]` (looked up in PATH, with the sbin folders added)
    /// with the rest as its arguments, stdin from /dev/null, in `directory`
    /// (default: this process's).
    public static func run(_ arguments: [String], in directory: String? = nil) throws(StoreError) -> Outcome {
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = (environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        let argv = (["/usr/bin/env"] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var fd: Int32 = -1
        let pid = argv.withUnsafeBufferPointer { a in
            envp.withUnsafeBufferPointer { e in
                a.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: a.count) { av in
                    e.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: e.count) { ev in
                        host_tool_spawn(av, ev, directory, &fd)
                    }
                }
            }
        }
        guard pid > 0 else {
            throw StoreError(.tool, "cannot run \(arguments[0]): \(String(cString: strerror(-pid)))")
        }
        var head: [UInt8] = []
        var tail: [UInt8] = []
        var dropped = 0
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n > 0 {
                let room = min(n, headLimit - head.count)
                head += chunk[0..<room]
                tail += chunk[room..<n]
                if tail.count > tailLimit {
                    dropped += tail.count - tailLimit
                    tail.removeFirst(tail.count - tailLimit)
                }
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        close(fd)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exit = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let gap = dropped > 0 ? Array("\n[… \(dropped) bytes of output dropped …]\n".utf8) : []
        return Outcome(status: exit, output: String(decoding: head + gap + tail, as: UTF8.self))
    }
}
