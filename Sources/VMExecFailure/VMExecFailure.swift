/// The one shape of vmexec's errors, shared by every module (this target
/// imports nothing, so each module may import it without importing another).
///
/// An error carries a stable code for programs, a sentence for people that
/// says what happened and what to do, the error underneath it when there
/// is one, and a ``FailureKind`` that says what the caller can do about it.
/// The CLI maps the kind (and a few codes) to its exit status in one place;
/// the HTTP API maps it to a response status the same way.
public protocol VMExecFailure: Error, Sendable, CustomStringConvertible {
    /// A stable name (`shardRefused`, `checksumMismatch`, `frameTooLarge`).
    var failureCode: String { get }
    /// What happened and what to do about it.
    var message: String { get }
    /// What the caller can do about it.
    var kind: FailureKind { get }
    /// The error this one wraps, if any.
    var cause: (any Error & Sendable)? { get }
}

extension VMExecFailure {
    public var cause: (any Error & Sendable)? { nil }

    /// The message, then the causes underneath it that say more.
    public var explanation: String {
        var text = message
        var next = cause
        while let c = next {
            let said = (c as? any VMExecFailure)?.message ?? "\(c)"
            if !text.contains(said) { text += "\n  because: \(said)" }
            next = (c as? any VMExecFailure)?.cause
        }
        return text
    }
}

/// What a failure means for whoever asked.
public enum FailureKind: String, Sendable, CaseIterable {
    /// The request or one of its arguments is unusable: fix it and ask again.
    case invalidRequest
    /// Something it names does not exist: an image, a shard, a store, a file, a process, a program.
    case notFound
    /// It exists already (a name in use, a file not to be replaced): choose another or ask to replace it.
    case conflict
    /// Something it needs is held by someone else (a locked store, a shard in use): try again later.
    case busy
    /// An input was inspected and refused (a damaged shard, a store made over another lower).
    case refused
    /// The guest is not there: not started, stopped or crashed (start it again).
    case unavailable
    /// A deadline passed.
    case timeout
    /// This machine, host or guest cannot do it.
    case unsupported
    /// The host failed: its files, a tool, the hypervisor.
    case hostFailure
    /// The guest broke the protocol or failed inside.
    case guestFailure
}
