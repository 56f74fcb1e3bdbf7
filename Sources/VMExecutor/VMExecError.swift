@_exported import VMExecFailure

/// The one error type of VMExecutor: a code to switch on, a sentence that
/// says what happened and what to do about it, and the error underneath
/// (a shard's, a store's, the channel's) when there is one. Everything
/// `Sandbox` throws is one of these.
public struct VMExecError: VMExecFailure, Equatable {
    public enum Code: String, Sendable {
        /// No kernel, initramfs or root file system where we looked.
        case imagesNotFound
        /// The QEMU binary for the guest architecture is missing.
        case qemuNotFound
        /// QEMU could not be started, or exited before the guest said hello.
        case launchFailed
        /// The guest did not say hello before the boot deadline.
        case bootTimeout
        /// The init reported that it could not set up the guest.
        case bootFailed
        /// QEMU exited or the channel closed while a call was waiting.
        case guestStopped
        /// The sandbox is not running (call start()).
        case notRunning
        /// The program does not exist in the guest (docker's 127).
        case commandNotFound
        /// The program exists but cannot be executed (docker's 126).
        case notExecutable
        /// The working directory or another part of the request was refused.
        case invalidRequest
        /// The guest broke the protocol or refused a frame.
        case protocolError
        /// A shard was refused: damaged, built for another architecture, a
        /// requirement unmet, a clash with another shard, or the guest could not mount it.
        case shardRefused
        /// A shard cannot be detached while something in the guest uses it.
        case shardBusy
        /// The store is in use by another guest (the message names it).
        case storeBusy
        /// The store cannot be used: made over another lower, damaged, a snapshot
        /// that does not exist, or the guest could not mount it.
        case storeRefused
        /// A file request failed in the guest: no such file, permission, disk
        /// full, a read-only shard (the message says which, with the guest's errno text).
        case fileRefused
        /// A file (or a directory listing) is beyond the limit set for it.
        case fileTooLarge
        /// A process request failed: no such process, or the init's own.
        case processRefused
        /// A host folder cannot be shared: outside what the daemon shares, or the guest could not mount it.
        case folderRefused
        /// The machine cannot do what was asked (its hypervisor lacks it).
        case unsupported
        /// A sandbox, job or other resource named in the request does not exist.
        case notFound
        /// The daemon's state (its job store) could not be read or written.
        case stateFailed
        /// Something of that name exists already (a sandbox, a file not to be replaced).
        case alreadyExists
        /// The request carries no token, or one the daemon does not know.
        case unauthorized
        /// A limit of the daemon is reached (guests, guest memory): try again once something ends.
        case limitReached
    }

    public let code: Code
    public let message: String
    public let cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String { message }
    public var failureCode: String { code.rawValue }

    public var kind: FailureKind {
        switch code {
        case .imagesNotFound, .qemuNotFound, .commandNotFound, .notFound: .notFound
        case .launchFailed, .stateFailed: .hostFailure
        case .bootTimeout: .timeout
        case .bootFailed, .protocolError: .guestFailure
        case .guestStopped, .notRunning: .unavailable
        case .notExecutable, .unauthorized, .shardRefused, .storeRefused, .fileRefused, .processRefused, .folderRefused:
            .refused
        case .invalidRequest, .fileTooLarge: .invalidRequest
        case .shardBusy, .storeBusy, .limitReached: .busy
        case .alreadyExists: .conflict
        case .unsupported: .unsupported
        }
    }

    /// Equal when code and message are: the cause is context, not identity.
    public static func == (a: VMExecError, b: VMExecError) -> Bool {
        a.code == b.code && a.message == b.message
    }
}
