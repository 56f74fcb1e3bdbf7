import Foundation
import VMExecFailure

/// Error codes carried in ERROR frames (docs/PROTOCOL.md, "Errors").
public enum ErrorCode: UInt32, Sendable, CaseIterable {
    case malformed = 1
    case tooBig = 2
    case unknownType = 3
    case badStream = 4
    case version = 5
    case exec = 6
    case limit = 7
    case flow = 8
    case `internal` = 9
    case state = 10
    case workdir = 11
    case mount = 12
    case busy = 13
    case file = 14
    case process = 15
    /// A code this side does not know (kept in ``ErrorReply/rawCode``).
    case unknown = 0

    /// The name the spec and the golden vectors use.
    public var name: String {
        switch self {
        case .malformed: "MALFORMED"
        case .tooBig: "TOO_BIG"
        case .unknownType: "UNKNOWN_TYPE"
        case .badStream: "BAD_STREAM"
        case .version: "VERSION"
        case .exec: "EXEC"
        case .limit: "LIMIT"
        case .flow: "FLOW"
        case .internal: "INTERNAL"
        case .state: "STATE"
        case .workdir: "WORKDIR"
        case .mount: "MOUNT"
        case .busy: "BUSY"
        case .file: "FILE"
        case .process: "PROCESS"
        case .unknown: "UNKNOWN"
        }
    }
}

/// Everything that can go wrong on the channel, each with a sentence that
/// says what happened and, where there is one, what to do.
public enum ProtocolError: VMExecFailure, Equatable {
    /// A header claimed a payload beyond the cap: the peer is broken or hostile.
    case frameTooLarge(Int)
    /// A header's reserved bits were set: the byte stream is out of step.
    case malformedHeader
    /// A delimited frame's payload did not match its type's layout.
    case malformedPayload(String)
    /// The caller asked for something the protocol cannot carry.
    case invalidRequest(String)
    /// The peer speaks another major version.
    case versionMismatch(guest: String, host: String)
    /// The guest refused a request (code, errno, its message).
    case refused(ErrorReply)
    /// A program could not be started: code EXEC (missing, not executable)
    /// or WORKDIR (its working directory could not be entered).
    case execFailed(ErrorReply)
    /// The guest broke the protocol (a frame it must not send).
    case violation(String)
    /// No HELLO within the deadline.
    case handshakeTimeout(seconds: Double)
    /// The connection ended; the reason says why (EOF, QEMU exit, error).
    case closed(String)

    public var description: String {
        switch self {
        case .frameTooLarge(let n):
            "frame header claims \(n) bytes, more than the \(WireProtocol.maxPayload)-byte cap; the connection was closed"
        case .malformedHeader:
            "frame header has reserved bits set; the byte stream is out of step and the connection was closed"
        case .malformedPayload(let what): "malformed \(what) payload"
        case .invalidRequest(let why): "invalid request: \(why)"
        case .versionMismatch(let guest, let host):
            "the guest init speaks protocol \(guest) but this host speaks \(host); rebuild the guest images (make images)"
        case .refused(let e): "the guest refused the request (\(e.code.name)): \(e.message)"
        case .execFailed(let e): e.message
        case .violation(let why): "the guest broke the protocol: \(why)"
        case .handshakeTimeout(let s):
            "the guest init did not say HELLO within \(s) s"
        case .closed(let why): "the channel to the guest closed: \(why)"
        }
    }

    public var message: String { description }

    public var failureCode: String {
        switch self {
        case .frameTooLarge: "frameTooLarge"
        case .malformedHeader: "malformedHeader"
        case .malformedPayload: "malformedPayload"
        case .invalidRequest: "invalidRequest"
        case .versionMismatch: "versionMismatch"
        case .refused: "refused"
        case .execFailed: "execFailed"
        case .violation: "violation"
        case .handshakeTimeout: "handshakeTimeout"
        case .closed: "closed"
        }
    }

    public var kind: FailureKind {
        switch self {
        case .frameTooLarge, .malformedHeader, .malformedPayload, .violation, .versionMismatch: .guestFailure
        case .invalidRequest: .invalidRequest
        case .refused(let e): e.code == .busy ? .busy : .refused
        case .execFailed(let e): e.errno == ENOENT || e.errno == ENOTDIR ? .notFound : .refused
        case .handshakeTimeout: .timeout
        case .closed: .unavailable
        }
    }
}
