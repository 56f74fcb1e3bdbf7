import Foundation

/// Writes small but real wheels for tests, with Python's zipfile (an independent writer):
/// METADATA with Requires-Dist lines, WHEEL, entry points, and a RECORD of sha256s.
public enum WheelFactory {
    /// Writes `folder/NAME-VERSION-PYTHON-ABI-PLATFORM.whl` holding `files` (path -> text); returns its path.
    @discardableResult
    public static func wheel(
        in folder: String, name: String, version: String, requires: [String] = [], python: String = "py3",
        abi: String = "none", platform: String = "any", files: [String: String], consoleScripts: [String: String] = [:],
        corruptRecord: Bool = false
    ) throws -> String {
        let spec: [String: Any] = [
            "folder": folder, "name": name, "version": version, "requires": requires, "tag": "\(python)-\(abi)-\(platform)",
            "files": files, "scripts": consoleScripts, "corrupt": corruptRecord,
        ]
        let json = String(decoding: try JSONSerialization.data(withJSONObject: spec), as: UTF8.self)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", script, json]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        p.waitUntilExit()
        let path = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard p.terminationStatus == 0 else { throw TestImagesMissing(reason: "writing the wheel \(name) failed") }
        return path
    }

    private static let script = #"""
        import base64, hashlib, json, os, sys, zipfile
        s = json.loads(sys.argv[1])
        dist = s["name"].replace("-", "_")
        info = f"{dist}-{s['version']}.dist-info"
        entries = dict(s["files"])
        meta = [f"Metadata-Version: 2.1", f"Name: {s['name']}", f"Version: {s['version']}"]
        meta += [f"Requires-Dist: {r}" for r in s["requires"]]
        entries[f"{info}/METADATA"] = "\n".join(meta) + "\n\nA test package.\n"
        entries[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {s['tag']}\n"
        if s["scripts"]:
            entries[f"{info}/entry_points.txt"] = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in s["scripts"].items())
        record = []
        for path, text in entries.items():
            data = text.encode()
            if s["corrupt"] and path.endswith(".py"):
                data = data + b"#"
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        out = os.path.join(s["folder"], f"{dist}-{s['version']}-{s['tag']}.whl")
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for path, text in entries.items():
                z.writestr(path, text)
            z.writestr(f"{info}/RECORD", "\r\n".join(record) + "\r\n")
        print(out)
        """#
}
