import CSquashfs
import VMExecFailure

/// Every failure of building, reading, verifying or combining shards.
///
/// One type with a code, as apple/containerization does: callers switch on
/// `code`, people read `message`, which names the shard or path and says what
/// to do.
public struct ShardError: VMExecFailure, Equatable {
    public enum Code: String, Sendable {
        /// An argument or option is unusable (bad name, bad mount point, bad block size).
        case invalidArgument
        /// A file could not be read or written on the host.
        case io
        /// The input tree holds something a shard cannot carry.
        case unsupportedEntry
        /// An archive entry would land outside the shard (`../`, absolute, links out).
        case pathTraversal
        /// The archive itself is unreadable.
        case badArchive
        /// The image is not a shard, or its manifest is missing or malformed.
        case notAShard
        /// The image's bytes do not match its manifest's sha256.
        case checksumMismatch
        /// The squashfs structure is damaged or insane.
        case corrupt
        /// A shard's requirement is not provided by any other shard.
        case unmetRequirement
        /// Two shards claim the same mount point or name.
        case conflict
        /// The shard is built for another architecture than the guest.
        case wrongArchitecture
        /// A path asked for does not exist in the shard.
        case notFound
        /// The trust policy wants a signature and the shard carries none.
        case unsigned
        /// A signature does not match the shard's manifest: changed after signing.
        case badSignature
        /// Signed, but by no key the host trusts.
        case untrustedSigner
        /// Signed only by keys the host has revoked.
        case revokedSigner
        /// No such shard (or version) is installed in the library.
        case notInstalled
        /// The version is installed already with other content.
        case exists
        /// A running sandbox uses the version.
        case inUse
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
    public var failureCode: String { code.rawValue }

    public var kind: FailureKind {
        switch code {
        case .invalidArgument, .unsupportedEntry, .pathTraversal: .invalidRequest
        case .io: .hostFailure
        case .notFound, .notInstalled: .notFound
        case .exists: .conflict
        case .inUse: .busy
        case .unsigned, .badSignature, .untrustedSigner, .revokedSigner: .refused
        case .badArchive, .notAShard, .checksumMismatch, .corrupt, .unmetRequirement, .conflict, .wrongArchitecture: .refused
        }
    }

    /// A libsquashfs failure while doing `what`.
    static func squashfs(_ status: Int32, _ what: String, code: Code = .io) -> ShardError {
        ShardError(code, "\(what): \(squashfsErrorName(status))")
    }
}

/// Human words for libsquashfs's negative status codes.
func squashfsErrorName(_ status: Int32) -> String {
    switch Int(status) {
    case Int(SQFS_ERROR_ALLOC.rawValue): return "out of memory"
    case Int(SQFS_ERROR_IO.rawValue): return "input/output error"
    case Int(SQFS_ERROR_COMPRESSOR.rawValue): return "the compressor failed (damaged data?)"
    case Int(SQFS_ERROR_INTERNAL.rawValue): return "internal error in libsquashfs"
    case Int(SQFS_ERROR_CORRUPTED.rawValue): return "the image is corrupted"
    case Int(SQFS_ERROR_UNSUPPORTED.rawValue): return "unsupported feature"
    case Int(SQFS_ERROR_OVERFLOW.rawValue): return "a size or offset overflows"
    case Int(SQFS_ERROR_OUT_OF_BOUNDS.rawValue): return "an offset points outside the image"
    case Int(SFQS_ERROR_SUPER_MAGIC.rawValue): return "no squashfs superblock (wrong magic)"
    case Int(SFQS_ERROR_SUPER_VERSION.rawValue): return "unsupported squashfs version"
    case Int(SQFS_ERROR_SUPER_BLOCK_SIZE.rawValue): return "invalid block size in the superblock"
    case Int(SQFS_ERROR_NOT_DIR.rawValue): return "not a directory"
    case Int(SQFS_ERROR_NO_ENTRY.rawValue): return "no such file or directory"
    case Int(SQFS_ERROR_LINK_LOOP.rawValue): return "hard link loop in the directory tree"
    case Int(SQFS_ERROR_NOT_FILE.rawValue): return "not a regular file"
    case Int(SQFS_ERROR_ARG_INVALID.rawValue): return "invalid argument"
    case Int(SQFS_ERROR_SEQUENCE.rawValue): return "calls in the wrong order"
    default: return "libsquashfs error \(status)"
    }
}
