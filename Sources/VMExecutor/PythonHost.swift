import Foundation

/// A host function Python code calls by name (``PythonCode/hostFunctions``): it gets the
/// call's JSON arguments and returns JSON text, which the code gets as a Python value. An
/// error it throws reaches the code as a `CallbackError` with the error's message.
public typealias PythonHostFunction = @Sendable (PythonHostCall) async throws -> String

/// A call the code made to a host function.
public struct PythonHostCall: Sendable {
    public var name: String
    /// The positional arguments, a JSON array as text.
    public var arguments: String
    /// The keyword arguments, a JSON object as text.
    public var keywordArguments: String
}

/// What the caller shares with Python code: JSON values among its globals, and host
/// functions it may call. Nothing but these names is reachable from the code.
struct PythonSharing: Sendable {
    var shared: [String: String]
    var functions: [String: PythonHostFunction]

    var isEmpty: Bool { shared.isEmpty && functions.isEmpty }

    /// The request's `shared` and `callbacks` fields; names and JSON checked before the guest runs anything.
    func requestFields() throws -> [String: Any] {
        var values: [String: Any] = [:]
        for (name, text) in shared {
            guard let value = try? JSONSerialization.jsonObject(with: Data(text.utf8), options: .fragmentsAllowed) else {
                throw VMExecError(.invalidRequest, "the shared value \(name) is not JSON: \(text.prefix(80))")
            }
            values[name] = value
        }
        for name in Array(shared.keys) + Array(functions.keys) where !Self.isName(name) {
            throw VMExecError(
                .invalidRequest,
                "\(name.debugDescription) cannot be shared with Python code: give a Python name not starting with __")
        }
        if let both = shared.keys.first(where: { functions[$0] != nil }) {
            throw VMExecError(.invalidRequest, "\(both) is both a shared value and a host function")
        }
        return ["shared": values, "callbacks": functions.keys.sorted()]
    }

    private static func isName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first == "_" || CharacterSet.letters.contains(first), !name.hasPrefix("__")
        else { return false }
        return name.unicodeScalars.allSatisfy { $0 == "_" || CharacterSet.alphanumerics.contains($0) }
    }

    /// The answer line to a callback record: the function's JSON value, or its error.
    func answer(_ callback: PythonRecords.Callback) async -> [UInt8] {
        var line: [UInt8]
        do {
            guard let function = functions[callback.name] else {
                throw VMExecError(.notFound, "no host function \(callback.name) is exposed to this code")
            }
            let value = try await function(
                PythonHostCall(name: callback.name, arguments: callback.arguments, keywordArguments: callback.keywordArguments))
            guard (try? JSONSerialization.jsonObject(with: Data(value.utf8), options: .fragmentsAllowed)) != nil else {
                throw VMExecError(.protocolError, "the host function \(callback.name) returned text that is not JSON")
            }
            line = Array(#"{"id":\#(callback.id),"value":"#.utf8) + Array(value.utf8) + Array("}".utf8)
        } catch {
            let message = (error as? VMExecError)?.message ?? String(describing: error)
            let object: [String: Any] = ["id": callback.id, "error": ["message": message]]
            line = Array((try? JSONSerialization.data(withJSONObject: object)) ?? Data("{}".utf8))
        }
        // One line each: JSON text from the host function may hold newlines only inside strings, escaped.
        line.removeAll { $0 == UInt8(ascii: "\n") }
        return line + [UInt8(ascii: "\n")]
    }
}
