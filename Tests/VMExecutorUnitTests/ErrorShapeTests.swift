import Foundation
import PersistOverlay
import SerialChannel
import SquashMounts
import Testing
import VMExecutor

/// Every module's errors have the one shape: a stable code, a sentence, a
/// kind that says what the caller can do, and the cause underneath.
@Suite("One error shape")
struct ErrorShapeTests {
    @Test("each module's error is a VMExecFailure with a code, a sentence and a kind")
    func everyModule() {
        let errors: [any VMExecFailure] = [
            VMExecError(.storeBusy, "the store is in use by pid 7; stop that guest first"),
            ShardError(.checksumMismatch, "x.shard: the image's sha256 does not match its manifest; rebuild it"),
            StoreError(.locked, "work is locked by pid 7"),
            ProtocolError.closed("EOF"),
        ]
        #expect(errors.map(\.failureCode) == ["storeBusy", "checksumMismatch", "locked", "closed"])
        #expect(errors.map(\.kind) == [.busy, .refused, .busy, .unavailable])
        for e in errors { #expect(!e.message.isEmpty && e.description == e.message) }
    }

    @Test("a wrapped error keeps its cause, and the explanation adds what the cause says")
    func causes() {
        let store = StoreError(.lowerChanged, "the store was made over another base image")
        let wrapped = VMExecError(.storeRefused, "cannot use the store work", cause: store)
        #expect((wrapped.cause as? StoreError) == store)
        #expect(wrapped.explanation == "cannot use the store work\n  because: the store was made over another base image")
        // A cause whose sentence is already in the message is not repeated.
        let same = VMExecError(.storeRefused, store.message, cause: store)
        #expect(same.explanation == store.message)
    }

    @Test("every VMExecError code has a kind, and the guest-side ones say so")
    func kinds() {
        #expect(VMExecError(.guestStopped, "x").kind == .unavailable)
        #expect(VMExecError(.bootTimeout, "x").kind == .timeout)
        #expect(VMExecError(.unsupported, "x").kind == .unsupported)
        #expect(VMExecError(.commandNotFound, "x").kind == .notFound)
        #expect(ProtocolError.frameTooLarge(1 << 30).kind == .guestFailure)
    }
}
