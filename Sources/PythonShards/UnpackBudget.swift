import SquashMounts

/// The bytes an unpacking may write in all. Archives and wheels are untrusted input, and a
/// few megabytes of zip can hold terabytes of zeros: past the budget the unpacking stops with
/// an error that says so, and what it wrote is removed with its staging folder.
final class UnpackBudget {
    /// 8 GiB: far above any program or set of wheels (numpy's wheel unpacks to 60 MB).
    static let defaultBytes: UInt64 = 8 << 30

    private(set) var remaining: UInt64
    private let limit: UInt64
    private let source: String

    init(_ limit: UInt64, source: String) {
        self.limit = limit
        self.remaining = limit
        self.source = source
    }

    /// Accounts for `count` more bytes of `entry`; throws once the total passes the budget.
    func take(_ count: Int, entry: String) throws(ShardError) {
        guard UInt64(count) <= remaining else {
            throw ShardError(
                .unsupportedEntry,
                "\(source) unpacks to more than \(limit >= 1 << 20 ? "\(limit >> 20) MiB" : "\(limit) bytes") (at \(entry)); an archive that large is refused as a likely decompression bomb"
            )
        }
        remaining -= UInt64(count)
    }
}
