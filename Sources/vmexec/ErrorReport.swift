import Foundation
import OpenAPIRuntime
import VMExecutor

/// The one place where the CLI turns an error into what the user sees and
/// the exit status, as `docker run` does: 127 when the program does not
/// exist in the guest, 126 when it cannot be executed, 125 for any other
/// error of vmexec itself (the program's own status otherwise).
enum ErrorReport {
    static let vmexecError: Int32 = 125
    static let notExecutable: Int32 = 126
    static let notFound: Int32 = 127

    static func exitStatus(for error: any Error) -> Int32 {
        guard let e = error as? VMExecError else { return vmexecError }
        switch e.code {
        case .commandNotFound: return notFound
        case .notExecutable: return notExecutable
        default: return vmexecError
        }
    }

    /// The sentence to print: the error's own, with the causes beneath it that add to it.
    static func message(for error: any Error) -> String {
        (error as? any VMExecFailure)?.explanation ?? "\(error)"
    }

    /// What a failed call to the daemon's API says: the daemon's own error
    /// when it is one, else that the daemon could not be reached or answered.
    static func fromClient(_ error: ClientError) -> any Error {
        if let failure = error.underlyingError as? any VMExecFailure { return failure }
        return VMExecError(
            .notRunning,
            "the vmexec daemon did not answer \(error.operationID): \(error.underlyingError); see its log (vmexec serve's, or daemon.log in the runtime folder)"
        )
    }

    /// Prints `vmexec: <message>` on stderr and exits with the error's status.
    static func fail(_ error: any Error) -> Never {
        fail(message(for: error), status: exitStatus(for: error))
    }

    static func fail(_ message: String, status: Int32 = vmexecError) -> Never {
        FileHandle.standardError.write(Data("vmexec: \(message)\n".utf8))
        Foundation.exit(status)
    }
}
