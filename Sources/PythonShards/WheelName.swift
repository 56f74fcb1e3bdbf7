/// A wheel's file name: `{distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl` (PEP 427),
/// and whether its tags fit a ``PythonTarget`` as pip would decide.
struct WheelName {
    var distribution: String
    var version: String
    var pythonTags: [String]
    var abiTags: [String]
    var platformTags: [String]
    var file: String

    init?(_ file: String) {
        guard file.hasSuffix(".whl") else { return nil }
        let parts = file.dropLast(4).split(separator: "-").map(String.init)
        guard parts.count == 5 || parts.count == 6 else { return nil }
        self.file = file
        distribution = parts[0]
        version = parts[1]
        pythonTags = parts[parts.count - 3].split(separator: ".").map(String.init)
        abiTags = parts[parts.count - 2].split(separator: ".").map(String.init)
        platformTags = parts[parts.count - 1].split(separator: ".").map(String.init)
    }

    /// True when the wheel has no machine code (its platform is `any`).
    var isPure: Bool { platformTags == ["any"] }

    /// Nil when some python-abi-platform triple of the wheel fits `target`; else why none does.
    func mismatch(for target: PythonTarget) -> String? {
        let platformsFit = platformTags.contains { platformFits($0, target) }
        guard platformsFit else {
            return
                "it is built for \(platformTags.joined(separator: ", ")), and the SDK is Linux \(target.architecture) with glibc \(target.glibc.major).\(target.glibc.minor)"
        }
        for python in pythonTags {
            for abi in abiTags where Self.fits(python: python, abi: abi, target) { return nil }
        }
        return
            "it is for \(pythonTags.joined(separator: ".")) (ABI \(abiTags.joined(separator: "."))), and the SDK is CPython \(target.major).\(target.minor)"
    }

    /// `cp311` for 3.11; the minor of a `py3X`/`cp3X` tag, or nil.
    private static func minor(of tag: String, prefix: String, _ target: PythonTarget) -> Int? {
        guard tag.hasPrefix(prefix + "\(target.major)") else { return nil }
        let rest = tag.dropFirst(prefix.count + String(target.major).count)
        return rest.isEmpty ? -1 : Int(rest)
    }

    static func fits(python: String, abi: String, _ target: PythonTarget) -> Bool {
        let exact = "cp\(target.major)\(target.minor)"
        switch abi {
        case exact:
            return python == exact
        case "abi3":
            // The stable ABI of CPython 3.N: any 3.N <= the SDK's.
            guard let m = minor(of: python, prefix: "cp", target), m >= 0 else { return false }
            return m <= target.minor
        case "none":
            if let m = minor(of: python, prefix: "py", target) { return m <= target.minor }
            if let m = minor(of: python, prefix: "cp", target) { return m <= target.minor }
            return false
        default:
            return false
        }
    }

    private func platformFits(_ platform: String, _ target: PythonTarget) -> Bool {
        if platform == "any" { return true }
        let arch = target.architecture
        guard platform.hasSuffix("_" + arch) else { return false }
        let stem = platform.dropLast(arch.count + 1)
        let legacy: [String: (Int, Int)] = ["manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)]
        if let glibc = legacy[String(stem)] { return glibc <= target.glibc }
        if stem == "linux" { return true }  // as pip: built on a Linux of this architecture
        let parts = stem.split(separator: "_")
        guard parts.count == 3, parts[0] == "manylinux", let major = Int(parts[1]), let minor = Int(parts[2]) else {
            return false  // musllinux and the rest: not for a glibc guest
        }
        return (major, minor) <= target.glibc
    }
}
