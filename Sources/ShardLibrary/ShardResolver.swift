import Foundation
import SquashMounts

/// Shards taken from the library for a sandbox: resolved, opened, admitted by
/// the trust store at this moment (a key revoked since the install refuses
/// here), and held (``ShardLease``) for as long as the checkout lives.
public struct ShardCheckout: Sendable {
    public let shards: [Shard]
    public let versions: [ShardLibrary.Version]
    public let lease: ShardLease
}

extension ShardLibrary {
    /// The shards `uses` names (`NAME` takes the active version, `NAME==VERSION`
    /// that version), plus, for each requirement no named shard meets, the one
    /// active shard that provides it. Refused, before anything boots, when a
    /// requirement has no active provider: the error names the shard that
    /// requires it, the active shards of that family that do not fit, and the
    /// installed versions that would.
    /// `alongside`: shards attached beside the library's (given as files); their capabilities count.
    public func resolve(_ uses: [String], architecture: String, alongside: [ShardManifest] = []) throws -> [Version] {
        let all = try list()
        var chosen: [Version] = []
        for use in uses {
            let parts = use.split(separator: "==", maxSplits: 1).map(String.init)
            let name = parts[0]
            let versions = all.filter { $0.name == name }
            guard !versions.isEmpty else {
                let names = Set(all.map(\.name)).sorted()
                throw ShardError(
                    .notInstalled,
                    "no shard named \(name) is installed in the library\(names.isEmpty ? " (it is empty)" : "; installed: \(names.joined(separator: ", "))"); install it with `vmexec shard install FILE`"
                )
            }
            let pick: Version?
            if parts.count == 2 {
                pick = versions.first { $0.version == parts[1] }
                guard pick != nil else {
                    throw ShardError(
                        .notInstalled,
                        "\(name) \(parts[1]) is not installed; installed versions: \(versions.map(\.version).joined(separator: ", "))"
                    )
                }
            } else {
                pick = versions.first(where: \.active)
                guard pick != nil else {
                    throw ShardError(
                        .notInstalled,
                        "\(name) has no active version; activate one with `vmexec shard activate \(name) VERSION` (installed: \(versions.map(\.version).joined(separator: ", ")))"
                    )
                }
            }
            if let pick, !chosen.contains(where: { $0.name == pick.name }) { chosen.append(pick) }
        }
        var index = 0
        while index < chosen.count {
            let shard = chosen[index]
            index += 1
            for requirement in shard.manifest.requires {
                if chosen.contains(where: { $0.name != shard.name && $0.manifest.satisfies(requirement) })
                    || alongside.contains(where: { $0.name != shard.name && $0.satisfies(requirement) })
                {
                    continue
                }
                let fits = { (v: Version) in
                    v.name != shard.name && v.manifest.satisfies(requirement)
                        && (v.architecture == "any" || v.architecture == architecture)
                }
                let providers = all.filter { v in v.active && fits(v) && !chosen.contains { $0.name == v.name } }
                if providers.count == 1 {
                    chosen.append(providers[0])
                    continue
                }
                if providers.count > 1 {
                    throw ShardError(
                        .conflict,
                        "\(shard.name) \(shard.version) requires \(requirement), which several active shards provide (\(providers.map { "\($0.name) \($0.version)" }.joined(separator: ", "))); name the one to use with --use"
                    )
                }
                throw Self.unmet(requirement, of: shard, chosen: chosen, all: all, fits: fits)
            }
        }
        return chosen
    }

    /// Resolves `uses`, opens each file, admits it through the trust store and holds it.
    public func checkout(_ uses: [String], architecture: String, alongside: [Shard] = []) throws -> ShardCheckout {
        let versions = try resolve(uses, architecture: architecture, alongside: alongside.map(\.manifest))
        let lease = try ShardLease.shared(versions.map(\.path))
        var shards: [Shard] = []
        for version in versions {
            let shard = try Shard.open(version.path)
            guard shard.manifest.image?.sha256 == version.sha256 else {
                throw ShardError(
                    .checksumMismatch,
                    "the library's file of \(version.name) \(version.version) (\(version.path)) is not the shard that was installed; remove it and install it again"
                )
            }
            _ = try trust.admit(shard)
            shards.append(shard)
        }
        try ShardSet.check(shards + alongside, guestArchitecture: architecture)
        return ShardCheckout(shards: shards, versions: versions, lease: lease)
    }

    /// The sentence for a requirement nothing active meets.
    static func unmet(
        _ requirement: String, of shard: Version, chosen: [Version], all: [Version], fits: (Version) -> Bool
    ) -> ShardError {
        var text = "\(shard.name) \(shard.version) requires \(requirement), which no active shard provides"
        // The family of a capability: `python3.12` -> `python`, `numpy==2.0` -> `numpy`.
        func family(_ capability: String) -> String {
            let base = capability.split(separator: "==").first.map(String.init) ?? capability
            return String(base.prefix { !$0.isNumber && $0 != "." })
        }
        let wanted = family(requirement)
        let near = (chosen + all.filter(\.active)).filter { v in
            v.name != shard.name && !wanted.isEmpty
                && (v.manifest.provides + [v.name]).contains { family($0) == wanted }
        }
        var seen = Set<String>()
        let unique = near.filter { seen.insert($0.name).inserted }
        if !unique.isEmpty {
            text +=
                ": "
                + unique.map {
                    "\($0.name) \($0.version) provides \(($0.manifest.provides + ["\($0.name)==\($0.version)"]).joined(separator: ", "))"
                }
                .joined(separator: "; ")
        }
        let serving = all.filter { !$0.active && fits($0) }
        if serving.isEmpty {
            text += ". No installed shard provides it: install one that does (`vmexec shard install FILE`)"
        } else {
            text +=
                ". Installed versions that would: "
                + serving.map { "\($0.name) \($0.version) (`vmexec shard activate \($0.name) \($0.version)`)" }.joined(
                    separator: ", ")
        }
        return ShardError(.unmetRequirement, text)
    }
}
