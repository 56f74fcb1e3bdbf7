import Foundation

/// A domain state saved by libvirt's QEMU driver (the file of an external
/// memory snapshot, which `virDomainRestore` reads like a `virDomainSave`
/// file): a 92-byte header ("LibvirtQemudSave", version, the length of what
/// follows), the domain's XML, then QEMU's migration stream.
///
/// libvirt restores a file only under the UUID inside it, and two running
/// domains cannot share one; so each restore gets a private copy whose UUID
/// and name (vmexec's names are all of one length) are replaced in place:
/// nothing else moves.
enum SavedDomainImage {
    static let magic = Array("LibvirtQemudSave".utf8)
    static let headerSize = 92

    /// Copies `source` to `destination` with the domain's UUID replaced by `uuid` and its
    /// name by `name` (libvirt refuses a different name or UUID through the restore's XML).
    static func copy(_ source: String, to destination: String, uuid: UUID, name: String) throws(VMExecError) {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw failure("cannot open the saved state \(source): \(String(cString: strerror(errno)))") }
        defer { close(input) }
        var header = [UInt8](repeating: 0, count: headerSize)
        guard read(input, &header, headerSize) == headerSize, Array(header[0..<16]) == magic else {
            throw failure("\(source) is not a state saved by libvirt")
        }
        let dataLength = Int(header[20]) | Int(header[21]) << 8 | Int(header[22]) << 16 | Int(header[23]) << 24
        guard dataLength > 0, dataLength < 16 << 20 else { throw failure("\(source) has a damaged header") }
        var data = [UInt8](repeating: 0, count: dataLength)
        guard read(input, &data, dataLength) == dataLength else { throw failure("\(source) ends inside its header") }
        let open = Array("<uuid>".utf8)
        guard let at = firstIndex(of: open, in: data), at + open.count + 36 <= data.count else {
            throw failure("the saved state \(source) names no domain UUID")
        }
        let replacement = Array(uuid.uuidString.lowercased().utf8)
        data.replaceSubrange((at + open.count)..<(at + open.count + 36), with: replacement)
        let nameOpen = Array("<name>".utf8)
        let newName = Array(name.utf8)
        guard let n = firstIndex(of: nameOpen, in: data), n + nameOpen.count + newName.count < data.count,
            data[n + nameOpen.count + newName.count] == UInt8(ascii: "<")
        else {
            throw failure(
                "the saved state \(source) names its domain otherwise than vmexec does (a name of \(newName.count) bytes)")
        }
        data.replaceSubrange((n + nameOpen.count)..<(n + nameOpen.count + newName.count), with: newName)

        let output = Foundation.open(destination, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw failure("cannot write \(destination): \(String(cString: strerror(errno)))") }
        defer { close(output) }
        guard write(output, header, headerSize) == headerSize, write(output, data, dataLength) == dataLength else {
            throw failure("cannot write \(destination): \(String(cString: strerror(errno)))")
        }
        // The migration stream as it is.
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = read(input, &buffer, buffer.count)
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                throw failure("cannot read the saved state \(source): \(String(cString: strerror(errno)))")
            }
            var done = 0
            while done < n {
                let w = buffer[done..<n].withUnsafeBytes { write(output, $0.baseAddress, $0.count) }
                if w < 0 {
                    if errno == EINTR { continue }
                    throw failure("cannot copy the saved state to \(destination): \(String(cString: strerror(errno)))")
                }
                done += w
            }
        }
    }

    private static func firstIndex(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for i in 0...(haystack.count - needle.count) where haystack[i] == needle[0] {
            if Array(haystack[i..<(i + needle.count)]) == needle { return i }
        }
        return nil
    }

    private static func failure(_ message: String) -> VMExecError { VMExecError(.launchFailed, message) }
}
