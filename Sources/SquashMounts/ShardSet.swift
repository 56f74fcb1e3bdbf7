/// The shards given to one guest, checked against each other before any is attached.
public enum ShardSet {
    /// Refuses a set in which a shard is built for another architecture, needs a
    /// capability no other shard provides, or shares its name or mount point (or
    /// a mount point inside another's) with another shard. Errors name the shard
    /// and the reason.
    public static func check(_ shards: [Shard], guestArchitecture: String) throws(ShardError) {
        for shard in shards {
            let arch = shard.manifest.architecture
            guard arch == "any" || arch == guestArchitecture else {
                throw ShardError(
                    .wrongArchitecture,
                    "shard \(shard.label) is built for \(arch), but the guest is \(guestArchitecture); use the \(guestArchitecture) build of it"
                )
            }
        }
        for (i, a) in shards.enumerated() {
            for b in shards[(i + 1)...] {
                if a.manifest.name == b.manifest.name {
                    throw ShardError(
                        .conflict, "shards \(a.label) and \(b.label) have the same name; attach one version of a shard at a time")
                }
                if case .mount(let pa) = a.manifest.placement, case .mount(let pb) = b.manifest.placement,
                    pa == pb || pa.hasPrefix(pb + "/") || pb.hasPrefix(pa + "/")
                {
                    let how = pa == pb ? "both mount at \(pa)" : "mount at \(pa) and \(pb), one inside the other"
                    throw ShardError(.conflict, "shards \(a.label) and \(b.label) \(how)")
                }
            }
        }
        for shard in shards {
            for requirement in shard.manifest.requires {
                let met = shards.contains { $0 != shard && $0.manifest.satisfies(requirement) }
                guard met else {
                    throw ShardError(
                        .unmetRequirement,
                        "shard \(shard.label) requires \(requirement), which no attached shard provides; attach a shard that provides it"
                    )
                }
            }
        }
    }

    /// The layer shards, bottom (nearest the base) first.
    public static func layers(_ shards: [Shard]) -> [Shard] {
        shards.compactMap { shard -> (Int, Shard)? in
            if case .layer(let order) = shard.manifest.placement { return (order, shard) }
            return nil
        }
        .sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1.manifest.name < $1.1.manifest.name }
        .map(\.1)
    }

    /// `base` with each shard's path lists prepended (shards taken by name, so the
    /// result does not depend on the order they were given in).
    public static func environment(_ shards: [Shard], base: [String: String]) -> [String: String] {
        var env = base
        for shard in shards.sorted(by: { $0.manifest.name > $1.manifest.name }) {
            for (key, value) in shard.manifest.environment.sorted(by: { $0.key < $1.key }) {
                if let current = env[key], !current.isEmpty {
                    env[key] = value + ":" + current
                } else {
                    env[key] = value
                }
            }
        }
        return env
    }
}
