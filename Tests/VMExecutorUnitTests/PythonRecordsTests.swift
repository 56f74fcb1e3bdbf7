import Foundation
import Testing

@testable import VMExecutor

@Suite("The Python runner's records on the host")
struct PythonRecordsTests {
    @Test("records split anywhere are put back together; a result is kept")
    func pieces() throws {
        var records = PythonRecords()
        let text =
            #"{"type":"stdout","data":"aGkK"}"# + "\n" + #"{"type":"result","value":{"repr":"1","json":"1"},"error":null}"# + "\n"
        var got: [PythonRecords.Record] = []
        for byte in Array(text.utf8) { got += try records.take([byte]) }
        #expect(got == [.stdout(Array("hi\n".utf8)), .result])
        #expect(records.result?.0 == PythonValue(repr: "1", json: "1"))
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
    }

    @Test("the result keeps each stream up to the output limit")
    func keptUpToLimit() {
        var kept: [UInt8] = []
        PythonRunner.keep([1, 2, 3], in: &kept, limit: 4)
        PythonRunner.keep([4, 5, 6], in: &kept, limit: 4)
        #expect(kept == [1, 2, 3, 4])
    }
}
