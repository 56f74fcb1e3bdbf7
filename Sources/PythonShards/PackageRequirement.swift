import Foundation

/// One `Requires-Dist` line of a wheel's METADATA (PEP 508): `name[extras] specifier ; marker`.
struct PackageRequirement: CustomStringConvertible {
    var name: String
    var extras: [String]
    var specifier: String
    var marker: String?
    var description: String

    init?(_ line: String) {
        description = line.trimmingCharacters(in: .whitespaces)
        let parts = description.split(separator: ";", maxSplits: 1)
        marker = parts.count == 2 ? parts[1].trimmingCharacters(in: .whitespaces) : nil
        var rest = Substring(parts.first ?? "").trimmingCharacters(in: .whitespaces)[...]
        let nameEnd = rest.firstIndex { !($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") } ?? rest.endIndex
        name = String(rest[..<nameEnd])
        guard !name.isEmpty else { return nil }
        rest = rest[nameEnd...]
        extras = []
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            extras = rest[rest.index(after: rest.startIndex)..<close].split(separator: ",").map {
                $0.trimmingCharacters(in: .whitespaces).lowercased()
            }
            rest = rest[rest.index(after: close)...]
        }
        // `name (>=1.0)` is the older spelling of `name>=1.0`; `name @ url` is not for offline installs.
        specifier = rest.trimmingCharacters(in: CharacterSet(charactersIn: " ()"))
        if specifier.hasPrefix("@") { return nil }
    }

    /// Names compared as pip compares them: case-insensitive, runs of `-_.` equal.
    static func normalize(_ name: String) -> String {
        var out = ""
        var lastWasSeparator = false
        for c in name.lowercased() {
            if c == "-" || c == "_" || c == "." {
                if !lastWasSeparator { out.append("-") }
                lastWasSeparator = true
            } else {
                out.append(c)
                lastWasSeparator = false
            }
        }
        return out
    }

    /// Whether the marker holds in `environment` (PEP 508's variables, plus `extra`).
    func applies(in environment: [String: String]) -> Bool {
        guard let marker else { return true }
        var parser = MarkerParser(text: marker, environment: environment)
        return parser.evaluate() ?? false
    }
}

/// Evaluates a PEP 508 environment marker: `python_version < "3.12" and (sys_platform == "linux" or extra == "x")`.
/// A marker it cannot parse evaluates to nil, which callers treat as "does not apply".
struct MarkerParser {
    private var tokens: [String]
    private var at = 0
    let environment: [String: String]

    /// Variables compared as versions rather than as strings.
    static let versionVariables: Set<String> = [
        "python_version", "python_full_version", "implementation_version", "platform_release",
    ]

    init(text: String, environment: [String: String]) {
        self.environment = environment
        tokens = Self.tokenize(text)
    }

    static func tokenize(_ text: String) -> [String] {
        var tokens: [String] = []
        var i = text.startIndex
        while i < text.endIndex {
            let c = text[i]
            if c.isWhitespace {
                i = text.index(after: i)
            } else if c == "(" || c == ")" {
                tokens.append(String(c))
                i = text.index(after: i)
            } else if c == "'" || c == "\"" {
                let start = text.index(after: i)
                let end = text[start...].firstIndex(of: c) ?? text.endIndex
                tokens.append("\"" + text[start..<end])
                i = end < text.endIndex ? text.index(after: end) : end
            } else if "<>=!~".contains(c) {
                var j = i
                while j < text.endIndex && "<>=!~".contains(text[j]) { j = text.index(after: j) }
                tokens.append(String(text[i..<j]))
                i = j
            } else {
                var j = i
                while j < text.endIndex && (text[j].isLetter || text[j].isNumber || text[j] == "_" || text[j] == ".") {
                    j = text.index(after: j)
                }
                if j == i { j = text.index(after: i) }
                tokens.append(String(text[i..<j]))
                i = j
            }
        }
        return tokens
    }

    mutating func evaluate() -> Bool? {
        let result = orExpression()
        return at == tokens.count ? result : nil
    }

    private mutating func next() -> String? {
        guard at < tokens.count else { return nil }
        defer { at += 1 }
        return tokens[at]
    }

    private var peek: String? { at < tokens.count ? tokens[at] : nil }

    private mutating func orExpression() -> Bool? {
        guard var value = andExpression() else { return nil }
        while peek == "or" {
            at += 1
            guard let rhs = andExpression() else { return nil }
            value = value || rhs
        }
        return value
    }

    private mutating func andExpression() -> Bool? {
        guard var value = atom() else { return nil }
        while peek == "and" {
            at += 1
            guard let rhs = atom() else { return nil }
            value = value && rhs
        }
        return value
    }

    private mutating func atom() -> Bool? {
        if peek == "(" {
            at += 1
            let value = orExpression()
            guard next() == ")" else { return nil }
            return value
        }
        guard let lhsToken = next(), var op = next() else { return nil }
        if op == "not" {
            guard next() == "in" else { return nil }
            op = "not in"
        }
        guard let rhsToken = next() else { return nil }
        let variable = lhsToken.hasPrefix("\"") ? rhsToken : lhsToken
        guard let lhs = value(lhsToken), let rhs = value(rhsToken) else { return nil }
        switch op {
        case "in": return rhs.contains(lhs)
        case "not in": return !rhs.contains(lhs)
        default: break
        }
        if Self.versionVariables.contains(variable), let v = PackageVersion(lhs), PackageVersion(rhs) != nil {
            return v.satisfies(op + rhs)
        }
        switch op {
        case "==", "===": return lhs == rhs
        case "!=": return lhs != rhs
        default: return nil
        }
    }

    private func value(_ token: String) -> String? {
        if token.hasPrefix("\"") { return String(token.dropFirst()) }
        if token == "extra" { return environment["extra"] ?? "" }
        return environment[token]
    }
}
