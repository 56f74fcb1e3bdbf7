import VMExecFailure

/// Every failure of the overlay store: one type with a code to switch on and
/// a sentence that says what happened and what to do.
public struct StoreError: VMExecFailure, Equatable {
    public enum Code: String, Sendable {
        /// A size, name or path argument is unusable.
        case invalidArgument
        /// No store at that path, or it is damaged.
        case notAStore
        /// A store already exists there.
        case exists
        /// Another guest (or a command) holds the store.
        case locked
        /// The store was made over another base or other layers.
        case lowerChanged
        /// A snapshot of that name does not exist, or already does.
        case snapshot
        /// A host tool (mkfs.ext4, resize2fs, e2fsck) failed.
        case tool
        /// A file could not be read or written on the host.
        case io
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
        case .invalidArgument, .exists: .invalidRequest
        case .notAStore: .notFound
        case .locked: .busy
        case .lowerChanged, .snapshot: .refused
        case .tool, .io: .hostFailure
        }
    }
}
