import CLibvirt
import Foundation
import Synchronization

/// libvirt's default event loop, run on a thread of its own for the whole
/// process: keepalives, lifecycle events, stream and file-descriptor
/// callbacks all fire from it. It must be registered before the first
/// connection is opened, so every connection goes through ``ensureRunning()``.
enum LibvirtEventLoop {
    private static let started = Mutex(false)

    /// Registers the default implementation and starts its thread, once.
    /// libvirt's own error printing to stderr is turned off: its errors reach
    /// users as ``VMExecError``s that say what to do.
    static func ensureRunning() {
        started.withLock { started in
            guard !started else { return }
            started = true
            virSetErrorFunc(nil) { _, _ in }
            virEventRegisterDefaultImpl()
            let thread = Thread {
                while true { _ = virEventRunDefaultImpl() }
            }
            thread.name = "vmexec-libvirt-events"
            thread.start()
        }
    }

    /// The message of libvirt's last error on this thread, or `fallback`.
    static func lastError(_ fallback: String) -> String {
        guard let message = virGetLastErrorMessage() else { return fallback }
        let text = String(cString: message)
        return text.isEmpty || text == "no error" ? fallback : text
    }
}
