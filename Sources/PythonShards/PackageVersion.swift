import Foundation

/// A Python package version as PEP 440 orders them: `1.26.4`, `2.0rc1`, `1.0.post2`, `3.1.dev0`, `1!2.0`.
struct PackageVersion: Comparable, CustomStringConvertible {
    var epoch = 0
    var release: [Int]
    /// a = 0, b = 1, rc = 2, with its number.
    var pre: (kind: Int, number: Int)?
    var post: Int?
    var dev: Int?
    var text: String

    private static let pattern = try! NSRegularExpression(
        pattern:
            #"^v?(?:(\d+)!)?(\d+(?:\.\d+)*)(?:[-_.]?(a|b|c|rc|alpha|beta|pre|preview)[-_.]?(\d*))?(?:-(\d+)|[-_.]?(?:post|rev|r)[-_.]?(\d*))?(?:[-_.]?dev[-_.]?(\d*))?(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?$"#
    )

    init?(_ text: String) {
        let lower = text.lowercased().trimmingCharacters(in: .whitespaces)
        let range = NSRange(lower.startIndex..., in: lower)
        guard let m = Self.pattern.firstMatch(in: lower, range: range) else { return nil }
        func group(_ i: Int) -> String? {
            guard let r = Range(m.range(at: i), in: lower) else { return nil }
            return String(lower[r])
        }
        self.text = text
        epoch = group(1).flatMap { Int($0) } ?? 0
        release = (group(2) ?? "0").split(separator: ".").map { Int($0) ?? 0 }
        if let kind = group(3) {
            let index = ["a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2][kind] ?? 2
            pre = (index, Int(group(4) ?? "") ?? 0)
        }
        if let n = group(5) {
            post = Int(n)
        } else if m.range(at: 6).location != NSNotFound {
            post = Int(group(6) ?? "") ?? 0
        }
        if m.range(at: 7).location != NSNotFound { dev = Int(group(7) ?? "") ?? 0 }
    }

    var description: String { text }

    /// The release with trailing zeros dropped: 1.0 == 1.0.0.
    private var trimmedRelease: [Int] {
        var r = release
        while r.count > 1 && r.last == 0 { r.removeLast() }
        return r
    }

    /// PEP 440's order: 1.0.dev0 < 1.0a1 < 1.0rc1 < 1.0 < 1.0.post1.
    private var key: (Int, [Int], Int, Int, Int, Int) {
        let preKind: Int
        let preNumber: Int
        if let pre {
            (preKind, preNumber) = (pre.kind, pre.number)
        } else if post == nil && dev != nil {
            (preKind, preNumber) = (-1, 0)
        } else {
            (preKind, preNumber) = (3, 0)
        }
        return (epoch, trimmedRelease, preKind, preNumber, post ?? -1, dev ?? Int.max)
    }

    static func == (a: PackageVersion, b: PackageVersion) -> Bool {
        let (x, y) = (a.key, b.key)
        return x.0 == y.0 && x.1 == y.1 && x.2 == y.2 && x.3 == y.3 && x.4 == y.4 && x.5 == y.5
    }

    static func < (a: PackageVersion, b: PackageVersion) -> Bool {
        let (x, y) = (a.key, b.key)
        if x.0 != y.0 { return x.0 < y.0 }
        if x.1 != y.1 { return x.1.lexicographicallyPrecedes(y.1) }
        if x.2 != y.2 { return x.2 < y.2 }
        if x.3 != y.3 { return x.3 < y.3 }
        if x.4 != y.4 { return x.4 < y.4 }
        return x.5 < y.5
    }

    /// Does this version meet every clause of `specifier` (`>=1.21,<2`, `~=3.1`, `==1.*`)? An empty one is met.
    func satisfies(_ specifier: String) -> Bool {
        for clause in specifier.split(separator: ",") {
            let c = clause.trimmingCharacters(in: .whitespaces)
            guard !c.isEmpty else { continue }
            let op = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"].first { c.hasPrefix($0) } ?? "=="
            let operand = c.dropFirst(c.hasPrefix(op) ? op.count : 0).trimmingCharacters(in: .whitespaces)
            if op == "===" {
                guard text == operand else { return false }
                continue
            }
            if operand.hasSuffix(".*") {
                guard let prefix = PackageVersion(String(operand.dropLast(2))) else { return false }
                let padded = release + [Int](repeating: 0, count: max(0, prefix.release.count - release.count))
                let matches = epoch == prefix.epoch && Array(padded.prefix(prefix.release.count)) == prefix.release
                guard op == "==" ? matches : !matches else { return false }
                continue
            }
            guard let v = PackageVersion(operand) else { return false }
            let ok: Bool
            switch op {
            case "==": ok = self == v
            case "!=": ok = self != v
            case "<=": ok = self <= v
            case ">=": ok = self >= v
            case "<": ok = self < v
            case ">": ok = self > v
            default:  // ~=: at least v, and the same release up to v's second last part
                let prefix = Array(v.release.dropLast())
                let padded = release + [Int](repeating: 0, count: max(0, prefix.count - release.count))
                ok = self >= v && Array(padded.prefix(prefix.count)) == prefix
            }
            guard ok else { return false }
        }
        return true
    }
}
