import Foundation

/// Writes small but real wheels for tests, with Python's zipfile (an independent writer):
/// METADATA with Requires-Dist lines, WHEEL, entry points, and a RECORD of sha256s.
public enum WheelFactory {
    /// Writes `folder/NAME-VERSION-PYTHON-ABI-PLATFORM.whl` holding `files` (path -> text) and
    /// `binaryFiles` (path -> bytes); returns its path.
    @discardableResult
    public static func wheel(
        in folder: String, name: String, version: String, requires: [String] = [], python: String = "py3",
        abi: String = "none", platform: String = "any", files: [String: String], binaryFiles: [String: [UInt8]] = [:],
        consoleScripts: [String: String] = [:], corruptRecord: Bool = false
    ) throws -> String {
        let spec: [String: Any] = [
            "folder": folder, "name": name, "version": version, "requires": requires, "tag": "\(python)-\(abi)-\(platform)",
            "files": files, "binary": binaryFiles.mapValues { Data($0).base64EncodedString() }, "scripts": consoleScripts,
            "corrupt": corruptRecord,
        ]
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", script]
        // The spec on standard input: files of megabytes do not fit an argument list.
        let input = Pipe()
        let out = Pipe()
        p.standardInput = input
        p.standardOutput = out
        try p.run()
        try input.fileHandleForWriting.write(contentsOf: try JSONSerialization.data(withJSONObject: spec))
        try input.fileHandleForWriting.close()
        p.waitUntilExit()
        let path = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard p.terminationStatus == 0 else { throw TestImagesMissing(reason: "writing the wheel \(name) failed") }
        return path
    }

    private static let script = #"""
        import base64, hashlib, json, os, sys, zipfile
        s = json.load(sys.stdin)
        dist = s["name"].replace("-", "_")
        info = f"{dist}-{s['version']}.dist-info"
        entries = {path: text.encode() for path, text in s["files"].items()}
        entries.update({path: base64.b64decode(data) for path, data in s["binary"].items()})
        meta = [f"Metadata-Version: 2.1", f"Name: {s['name']}", f"Version: {s['version']}"]
        meta += [f"Requires-Dist: {r}" for r in s["requires"]]
        entries[f"{info}/METADATA"] = ("\n".join(meta) + "\n\nA test package.\n").encode()
        entries[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {s['tag']}\n".encode()
        if s["scripts"]:
            entries[f"{info}/entry_points.txt"] = ("[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in s["scripts"].items())).encode()
        record = []
        for path, data in entries.items():
            if s["corrupt"] and path.endswith(".py"):
                data = data + b"#"
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        out = os.path.join(s["folder"], f"{dist}-{s['version']}-{s['tag']}.whl")
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for path, data in entries.items():
                z.writestr(path, data)
            z.writestr(f"{info}/RECORD", "\r\n".join(record) + "\r\n")
        print(out)
        """#
}
