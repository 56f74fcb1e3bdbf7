import NIOCore
import SerialChannel

/// The Swift side of the golden vectors: the canonical text of what the
/// Swift codec makes of some bytes (format in Tests/Vectors/frames.vec).
enum FrameDescription {
    static func describe(_ bytes: [UInt8]) -> (text: String, consumed: Int) {
        var buffer = ByteBuffer(bytes: bytes)
        let frame: Frame
        do {
            guard let f = try FrameParser.parse(&buffer) else { return ("incomplete", 0) }
            frame = f
        } catch {
            switch error {
            case .frameTooLarge: return ("fatal TOO_BIG", 0)
            default: return ("fatal MALFORMED", 0)
            }
        }
        let consumed = bytes.count - buffer.readableBytes
        if let code = frame.violation() { return ("refused \(code.name)", consumed) }
        var s = "\(name(frame.kind!)) stream=\(frame.stream) sub=\(frame.sub)"
        let p = frame.payload
        switch frame.kind! {
        case .hello:
            let h = try! Hello(decoding: p)
            s += " major=\(h.major) minor=\(h.minor) max_payload=\(h.maxPayload) window=\(h.window)"
            s += " max_streams=\(h.maxStreams) info=\(quote(Array(h.info.utf8)))"
        case .ping, .pong, .data:
            s += " hex=" + p.map { String(format2: $0) }.joined()
        case .error:
            let e = try! ErrorReply(decoding: p)
            s += " code=\(e.code.name) errno=\(e.errno) message=\(quote(Array(e.message.utf8)))"
        case .exec:
            let e = try! ExecRequest(decoding: p)
            s +=
                " flags=\((e.hasStdin ? 1 : 0) | (e.policy != nil ? 2 : 0) | (e.terminal != nil ? 4 : 0)) timeout_ms=\(e.timeoutMilliseconds) cwd=\(quote(Array(e.workingDirectory.utf8)))"
            s += " argv=[" + e.arguments.map { quote(Array($0.utf8)) }.joined(separator: ",") + "]"
            s += " env=[" + e.environment.map { quote(Array($0.utf8)) }.joined(separator: ",") + "]"
            if let q = e.policy {
                s +=
                    " uid=\(q.uid) gid=\(q.gid) memory_max=\(q.memoryMax) pids_max=\(q.pidsMax) nofile=\(q.openFiles) cpu_seconds=\(q.cpuSeconds)"
                if q.privateTmp { s += " private_tmp" }
                if q.service { s += " service" }
                if let t = q.tmpBytes { s += " tmp_bytes=\(t)" }
            }
            if let t = e.terminal { s += " rows=\(t.rows) cols=\(t.columns)" }
        case .started:
            s += " pid=\(le32(p))"
        case .window:
            s += " credit=\(le32(p))"
        case .signal:
            s += " signal=\(le32(p))"
        case .resize:
            let t = try! TerminalSize(decoding: p)
            s += " rows=\(t.rows) cols=\(t.columns)"
        case .exit:
            let x = try! ExitStatus(decoding: p)
            let (how, value): (String, Int32) =
                switch x.termination {
                case .exited(let v): ("exited", v)
                case .signaled(let v): ("signaled", v)
                case .timedOut(let v): ("timed_out", v)
                case .outOfMemory(let v): ("memory", v)
                }
            s += " how=\(how) value=\(value) run_ns=\(x.runNanoseconds) utime_us=\(x.userMicroseconds)"
            s += " stime_us=\(x.systemMicroseconds) maxrss_kb=\(x.maxRSSKiB)"
        case .mount, .unmount, .layers, .store, .sync, .freeze, .thaw, .folder:
            switch try! DriveRequest(frame.kind!, decoding: p) {
            case .mount(let serial, let target):
                s += " serial=\(quote(Array(serial.utf8))) target=\(quote(Array(target.utf8)))"
            case .unmount(let serial), .store(let serial):
                s += " serial=\(quote(Array(serial.utf8)))"
            case .sync, .freeze, .thaw:
                break
            case .layers(let serials):
                s += " serials=[" + serials.map { quote(Array($0.utf8)) }.joined(separator: ",") + "]"
            case .folder(let tag, let target, let mode):
                s += " tag=\(quote(Array(tag.utf8))) target=\(quote(Array(target.utf8))) mode=\(mode.rawValue)"
            }
        case .put, .get, .stat, .list, .mkdir, .delete, .move:
            let r = try! FileRequest(frame.kind!, decoding: p)
            s += " flags=\(r.flags.rawValue) mode=\(String(r.mode, radix: 8)) uid=\(r.uid) gid=\(r.gid) size=\(r.size)"
            s += " path=\(quote(Array(r.path.utf8)))"
            if let to = r.to { s += " to=\(quote(Array(to.utf8)))" }
        case .entry:
            let e = try! FileEntry(decoding: p)
            s += " mode=\(String(e.mode, radix: 8)) uid=\(e.uid) gid=\(e.gid) nlink=\(e.linkCount) size=\(e.size)"
            s += " mtime_ns=\(e.modifiedNanoseconds) name=\(quote(Array(e.name.utf8))) link=\(quote(Array(e.linkTarget.utf8)))"
        case .process:
            let x = try! ProcessEntry(decoding: p)
            s += " pid=\(x.pid) ppid=\(x.parentPID) pgid=\(x.processGroup) uid=\(x.uid) process_stream=\(x.stream)"
            s += " state=\(x.state) start_ns=\(x.startNanoseconds) cpu_us=\(x.cpuMicroseconds) rss_kb=\(x.residentKiB)"
            s += " argv=[" + x.arguments.map { quote(Array($0.utf8)) }.joined(separator: ",") + "]"
        case .kill:
            let k = try! KillRequest(decoding: p)
            s += " pid=\(k.pid) signal=\(k.signal) flags=\(k.group ? 1 : 0)"
        case .shutdown, .bye, .eof, .done, .ps:
            break
        }
        return (s, consumed)
    }

    static func name(_ t: FrameType) -> String {
        switch t {
        case .hello: "HELLO"
        case .ping: "PING"
        case .pong: "PONG"
        case .error: "ERROR"
        case .shutdown: "SHUTDOWN"
        case .bye: "BYE"
        case .exec: "EXEC"
        case .started: "STARTED"
        case .data: "DATA"
        case .eof: "EOF"
        case .window: "WINDOW"
        case .signal: "SIGNAL"
        case .exit: "EXIT"
        case .resize: "RESIZE"
        case .mount: "MOUNT"
        case .unmount: "UNMOUNT"
        case .layers: "LAYERS"
        case .done: "DONE"
        case .store: "STORE"
        case .sync: "SYNC"
        case .freeze: "FREEZE"
        case .thaw: "THAW"
        case .folder: "FOLDER"
        case .put: "PUT"
        case .get: "GET"
        case .stat: "STAT"
        case .list: "LIST"
        case .mkdir: "MKDIR"
        case .delete: "DELETE"
        case .move: "MOVE"
        case .entry: "ENTRY"
        case .ps: "PS"
        case .process: "PROCESS"
        case .kill: "KILL"
        }
    }

    static func quote(_ bytes: [UInt8]) -> String {
        var s = "\""
        for b in bytes {
            switch b {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): s += "\\" + String(UnicodeScalar(b))
            case UInt8(ascii: "\n"): s += "\\n"
            case 0x20..<0x7f: s += String(UnicodeScalar(b))
            default: s += "\\x" + String(format2: b)
            }
        }
        return s + "\""
    }

    static func le32(_ p: [UInt8]) -> UInt32 {
        UInt32(p[0]) | UInt32(p[1]) << 8 | UInt32(p[2]) << 16 | UInt32(p[3]) << 24
    }
}

extension String {
    /// Two lowercase hex digits.
    init(format2 b: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(b >> 4)], digits[Int(b & 15)]])
    }
}
