import CLibvirt
import Dispatch
import Foundation
import Synchronization

/// A libvirt object (a domain, a stream): libvirt's objects may be used from any thread.
struct LibvirtHandle: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// One open connection to a libvirt host (`qemu:///system`,
/// `qemu+tls://host/system`, …), shared by every machine placed there.
///
/// libvirt's calls block (each is a round trip to the daemon, and to a host
/// that stopped answering until its keepalive gives up), so they run on a
/// dispatch queue of the connection's, never on Swift's cooperative pool.
/// Keepalives (every second, three missed) notice a host that went away
/// within a few seconds; the close callback and the domains' lifecycle
/// events end the machines on it, so their waiting callers fail at once.
public final class LibvirtConnection: Sendable {
    /// The host's libvirt URI, as given.
    public let uri: String
    /// The virConnectPtr: libvirt's connections are safe to use from several threads.
    nonisolated(unsafe) let pointer: OpaquePointer
    private let queue: DispatchQueue

    private struct State {
        /// Whom to tell when a domain of this connection ends, by domain name.
        var watchers: [String: @Sendable (MachineEnding) -> Void] = [:]
        /// Why the connection is gone, once it is.
        var lost: String?
        /// Domains that were running when the connection was lost: their QEMUs may still run there.
        var abandoned: [String] = []
        var lifecycleCallback: Int32 = -1
        var volumes: HostVolumes?
    }
    private let state = Mutex(State())

    private init(uri: String, pointer: OpaquePointer) {
        self.uri = uri
        self.pointer = pointer
        self.queue = DispatchQueue(label: "vmexec.libvirt \(uri)", attributes: .concurrent)
    }

    /// Opens `uri` (read-write) and starts watching it.
    public static func open(_ uri: String) async throws(VMExecError) -> LibvirtConnection {
        LibvirtEventLoop.ensureRunning()
        let opened: Result<OpaquePointer, VMExecError> = await withCheckedContinuation { c in
            DispatchQueue.global().async {
                if let pointer = virConnectOpen(uri) {
                    c.resume(returning: .success(pointer))
                } else {
                    let why = LibvirtEventLoop.lastError("no answer")
                    c.resume(
                        returning: .failure(
                            VMExecError(
                                .launchFailed,
                                "cannot connect to the libvirt host \(uri): \(why); check that its daemon runs and that "
                                    + "this user may reach it (see README, \"Adding a libvirt host\")")))
                }
            }
        }
        let connection = try LibvirtConnection(uri: uri, pointer: opened.get())
        connection.watch()
        return connection
    }

    /// The close callback: one C function, so that it can be unregistered.
    private static let closeCallback: virConnectCloseFunc = { _, reason, opaque in
        Unmanaged<LibvirtConnection>.fromOpaque(opaque!).takeUnretainedValue().connectionClosed(reason)
    }

    /// libvirt's callbacks hold the connection (each a retain, released by libvirt's free
    /// function when the callback goes): until ``release()`` after a loss, or for good.
    private func watch() {
        virConnectSetKeepAlive(pointer, 1, 3)
        let closeRef = Unmanaged.passRetained(self).toOpaque()
        if virConnectRegisterCloseCallback(
            pointer, Self.closeCallback, closeRef,
            { opaque in LibvirtConnection.releaseLater(opaque) }) < 0
        {
            Unmanaged<LibvirtConnection>.fromOpaque(closeRef).release()
        }
        let eventRef = Unmanaged.passRetained(self).toOpaque()
        let lifecycle: @convention(c) (OpaquePointer?, OpaquePointer?, Int32, Int32, UnsafeMutableRawPointer?) -> Void = {
            _, domain, event, detail, opaque in
            guard let domain, let name = virDomainGetName(domain) else { return }
            Unmanaged<LibvirtConnection>.fromOpaque(opaque!).takeUnretainedValue()
                .domainEvent(String(cString: name), event: event, detail: detail)
        }
        let id = virConnectDomainEventRegisterAny(
            pointer, nil, Int32(VIR_DOMAIN_EVENT_ID_LIFECYCLE.rawValue),
            unsafeBitCast(lifecycle, to: virConnectDomainEventGenericCallback.self), eventRef,
            { opaque in LibvirtConnection.releaseLater(opaque) })
        if id < 0 { Unmanaged<LibvirtConnection>.fromOpaque(eventRef).release() }
        state.withLock { $0.lifecycleCallback = id }
    }

    /// libvirt's free function for a callback's retain. The release happens off libvirt's
    /// thread: when it is the last one, deinit's virConnectClose must not run inside libvirt.
    private static func releaseLater(_ opaque: UnsafeMutableRawPointer?) {
        guard let opaque else { return }
        let address = UInt(bitPattern: opaque)
        DispatchQueue.global().async {
            Unmanaged<LibvirtConnection>.fromOpaque(UnsafeRawPointer(bitPattern: address)!).release()
        }
    }

    /// Unregisters the callbacks of a lost connection, so that it is freed (and closed) once
    /// nobody else holds it. On the connection's queue: not inside libvirt's own callback.
    private func release() {
        queue.async {
            let id = self.state.withLock { s -> Int32 in
                defer { s.lifecycleCallback = -1 }
                return s.lifecycleCallback
            }
            if id >= 0 { virConnectDomainEventDeregisterAny(self.pointer, id) }
            virConnectUnregisterCloseCallback(self.pointer, Self.closeCallback)
        }
    }

    /// The host's volumes of vmexec's files (remote hosts), made on first use.
    var volumes: HostVolumes {
        state.withLock { s in
            if let volumes = s.volumes { return volumes }
            let volumes = HostVolumes(connection: self)
            s.volumes = volumes
            return volumes
        }
    }

    /// The domains this connection ran when it was lost (their guests' calls have failed;
    /// their QEMUs may still run on the host). ``destroy(_:)`` them through a new connection.
    public var abandoned: [String] { state.withLock { $0.abandoned } }

    /// Destroys domains by name (those a lost connection left), those still there; how many were.
    public func destroy(_ names: [String]) async -> Int {
        (try? await call { () -> Int in
            var destroyed = 0
            for name in names {
                guard let domain = virDomainLookupByName(self.pointer, name) else { continue }
                if virDomainDestroy(domain) == 0 { destroyed += 1 }
                virDomainFree(domain)
            }
            return destroyed
        }) ?? 0
    }

    /// Why the connection is gone, or nil while it stands.
    public var lost: String? { state.withLock { $0.lost } }

    /// Whether the host still answers: a cheap call, false once the connection is lost.
    public func isAlive() async -> Bool {
        guard lost == nil else { return false }
        return (try? await call { virConnectIsAlive(self.pointer) == 1 }) ?? false
    }

    /// The host's free memory in MiB (what libvirt's node reports), or nil when it does not answer.
    public func freeMemoryMiB() async -> Int? {
        guard lost == nil else { return nil }
        let bytes = try? await call { virNodeGetFreeMemory(self.pointer) }
        guard let bytes, bytes > 0 else { return nil }
        return Int(bytes >> 20)
    }

    /// Runs a blocking libvirt call on the connection's queue.
    func call<T: Sendable>(_ body: @escaping @Sendable () throws(VMExecError) -> T) async throws(VMExecError) -> T {
        let result: Result<T, VMExecError> = await withCheckedContinuation { c in
            queue.async {
                do throws(VMExecError) {
                    c.resume(returning: .success(try body()))
                } catch {
                    c.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }

    /// Tells `onEnd` (once) when the domain `name` stops, crashes, or the connection is lost.
    func watch(domain name: String, onEnd: @escaping @Sendable (MachineEnding) -> Void) {
        let lost = state.withLock { s -> String? in
            if s.lost == nil { s.watchers[name] = onEnd }
            return s.lost
        }
        if let lost { onEnd(MachineEnding(lost, killed: true)) }
    }

    func unwatch(domain name: String) {
        _ = state.withLock { $0.watchers.removeValue(forKey: name) }
    }

    private func domainEvent(_ name: String, event: Int32, detail: Int32) {
        let ending: MachineEnding
        switch event {
        case Int32(VIR_DOMAIN_EVENT_STOPPED.rawValue):
            switch detail {
            case Int32(VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN.rawValue):
                ending = MachineEnding("the guest powered off", killed: false)
            case Int32(VIR_DOMAIN_EVENT_STOPPED_DESTROYED.rawValue):
                ending = MachineEnding("the guest was destroyed through libvirt on \(uri)", killed: true)
            case Int32(VIR_DOMAIN_EVENT_STOPPED_CRASHED.rawValue):
                ending = MachineEnding("the guest crashed (libvirt on \(uri))", killed: true)
            case Int32(VIR_DOMAIN_EVENT_STOPPED_SAVED.rawValue):
                ending = MachineEnding("the guest was saved to a file and stopped", killed: false)
            case Int32(VIR_DOMAIN_EVENT_STOPPED_FAILED.rawValue):
                ending = MachineEnding("QEMU ended unexpectedly (libvirt on \(uri) lost its monitor)", killed: true)
            default:
                ending = MachineEnding("the guest stopped (libvirt event detail \(detail) on \(uri))", killed: true)
            }
        case Int32(VIR_DOMAIN_EVENT_CRASHED.rawValue):
            ending = MachineEnding("the guest crashed (libvirt on \(uri))", killed: true)
        default:
            return
        }
        let watcher = state.withLock { $0.watchers.removeValue(forKey: name) }
        watcher?(ending)
    }

    private func connectionClosed(_ reason: Int32) {
        let why: String
        switch reason {
        case Int32(VIR_CONNECT_CLOSE_REASON_KEEPALIVE.rawValue): why = "it stopped answering keepalives"
        case Int32(VIR_CONNECT_CLOSE_REASON_EOF.rawValue): why = "its daemon closed the connection"
        case Int32(VIR_CONNECT_CLOSE_REASON_ERROR.rawValue): why = "a connection error"
        default: why = "the client closed it"
        }
        let message = "lost the libvirt host \(uri): \(why)"
        let watchers = state.withLock { s -> [@Sendable (MachineEnding) -> Void]? in
            guard s.lost == nil else { return nil }
            s.lost = message
            s.abandoned = Array(s.watchers.keys)
            defer { s.watchers = [:] }
            return Array(s.watchers.values)
        }
        guard let watchers else { return }
        for watcher in watchers { watcher(MachineEnding(message, killed: true)) }
        release()
    }

    deinit {
        virConnectClose(pointer)
    }
}
