import Foundation
import Testing

@testable import VMExecutor

@Suite("The Python runner's records on the host")
struct PythonRecordsTests {
    @Test("records split anywhere are put back together; a result is kept")
    func pieces() throws {
        var records = PythonRecords()
        let text =
            #"{"type":"stdout","data":"aGkK"}"# + "\n" + #"{"type":"step","line":3,"vars":{"x":{"repr":"1","json":"1"}}}"#
            + "\n" + #"{"type":"result","value":{"repr":"1","json":"1"},"error":null,"id":4}"# + "\n"
        var got: [PythonRecords.Record] = []
        for byte in Array(text.utf8) { got += try records.take([byte]) }
        let value = PythonValue(repr: "1", json: "1")
        #expect(
            got == [
                .stdout(Array("hi\n".utf8)), .step(PythonStep(line: 3, variables: ["x": value])),
                .result(PythonRecords.Ending(value: value, id: 4)),
            ])
        #expect(records.result?.value == value && records.result?.id == 4)
        // Many records in one piece come out in order, none lost.
        var many = PythonRecords()
        let lines = (0..<1000).map { #"{"type":"loop_limit","line":\#($0),"limit":5}"# + "\n" }.joined()
        let all = try many.take(Array(lines.utf8))
        #expect(all == (0..<1000).map { .loopLimit(PythonLoopLimit(line: $0, limit: 5)) })
    }

    @Test("a line that never ends is refused before it grows past its cap; a line that is not a record too")
    func bounded() throws {
        var records = PythonRecords()
        let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 1 << 20)
        #expect(throws: VMExecError.self) {
            for _ in 0...(PythonRecords.maxLine >> 20) { _ = try records.take(chunk) }
        }
        var other = PythonRecords()
        #expect(throws: VMExecError.self) { _ = try other.take(Array("not json\n".utf8)) }
        var fieldless = PythonRecords()
        #expect(throws: VMExecError.self) { _ = try fieldless.take(Array(#"{"type":"step"}"#.utf8) + [10]) }
        var newer = PythonRecords()
        #expect(try newer.take(Array(#"{"type":"from-a-newer-runner"}"#.utf8) + [10]).isEmpty)
    }

    @Test("the result keeps each stream up to the output limit and each report kind up to its cap")
    func keptUpToLimit() {
        var parts = PythonResultParts(outputLimit: 4)
        _ = parts.add(.stdout([1, 2, 3]))
        _ = parts.add(.stdout([4, 5, 6]))
        _ = parts.add(.stderr([1]))
        #expect(parts.stdout == [1, 2, 3, 4] && parts.stdoutTruncated)
        #expect(parts.stderr == [1] && !parts.stderrTruncated)
        for line in 0..<(PythonResultParts.reportCap + 5) { _ = parts.add(.step(PythonStep(line: line, variables: [:]))) }
        #expect(parts.steps.count == PythonResultParts.reportCap)
    }

    @Test("control goes to the runner as only what is set; bad control is refused on the host")
    func control() throws {
        #expect(PythonControl().runnerJSON == "{}")
        let set = PythonControl(
            timeLimit: .milliseconds(1500), maxInnerLoopIterations: 3, onLoopLimit: .break, onError: .continue)
        #expect(set.runnerJSON == #"{"max_inner_loops":3,"on_error":"continue","on_loop_limit":"break","timeout":1.5}"#)
        #expect(set.jobTimeout(nil) == .milliseconds(6500) && set.jobTimeout(.seconds(2)) == .seconds(2))
        #expect(throws: VMExecError.self) { try PythonControl(watch: ["a b"]).validate() }
        #expect(throws: VMExecError.self) { try PythonControl(loopFrequency: .infinity).validate() }
        try PythonControl(watch: ["x", "obj.attr", "_private"]).validate()
    }

    @Test("a callback record keeps its arguments as JSON text; answers are one line: the value, or an error")
    func callbacks() async throws {
        var records = PythonRecords()
        let line = #"{"type":"callback","id":7,"name":"f","args":[1,"a"],"kwargs":{"k":null}}"# + "\n"
        let got = try records.take(Array(line.utf8))
        guard case .callback(let callback) = got.first else {
            Issue.record("not a callback: \(got)")
            return
        }
        #expect(callback.id == 7 && callback.name == "f" && callback.arguments == #"[1,"a"]"#)
        let sharing = PythonSharing(
            shared: [:],
            functions: [
                "f": { _ in "{\n  \"pretty\": true\n}" }, "bad": { _ in "not json" },
                "fails": { _ in throw VMExecError(.invalidRequest, "no") },
            ])
        let answer = String(decoding: await sharing.answer(callback), as: UTF8.self)
        #expect(answer == #"{"id":7,"value":{  "pretty": true}}"# + "\n")
        for (name, said) in [("bad", "not JSON"), ("fails", "no"), ("absent", "no host function absent")] {
            var other = callback
            other.name = name
            let text = String(decoding: await sharing.answer(other), as: UTF8.self)
            #expect(text.hasSuffix("\n") && text.dropLast().contains("\n") == false)
            let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
            #expect(((object?["error"] as? [String: Any])?["message"] as? String)?.contains(said) == true, "\(text)")
        }
        var forged = PythonRecords()
        #expect(throws: VMExecError.self) { _ = try forged.take(Array(#"{"type":"callback","id":1}"#.utf8) + [10]) }
        #expect(throws: VMExecError.self) {
            try PythonSharing(shared: ["__x": "1"], functions: [:]).requestFields()
        }
    }
}
