import CLibvirt
import Foundation
import Synchronization

/// Joins a guest's control channel, reached through libvirt as a
/// non-blocking `virStream` (``LibvirtDomain`` opens it with
/// `virDomainOpenChannel`), to one end of a socketpair whose other end is
/// an ordinary stream socket for ``ChannelClient``. Bytes move only when
/// libvirt's event loop says a side is ready (stream callbacks on one side,
/// an event handle on the socket on the other): no thread blocks and
/// nothing polls. At most one chunk waits in each direction; while it
/// waits, the side it came from is not read (back pressure both ways).
final class ChannelBridge: Sendable {
    private struct State {
        /// Read from the socket, not yet taken by the stream.
        var toGuest: [UInt8] = []
        /// Received from the stream, not yet written to the socket.
        var toHost: [UInt8] = []
        var streamEvents: Int32 = 0
        var socketEvents: Int32 = 0
        var watch: Int32 = -1
        var closed = false
    }

    /// libvirt's streams may be used from any thread; this one is only after init.
    nonisolated(unsafe) private let stream: OpaquePointer
    private let socket: Int32
    private let state = Mutex(State())
    private let onClose: @Sendable (String) -> Void
    private static let chunk = 64 * 1024

    /// Starts moving bytes between `stream` (opened, non-blocking; the
    /// bridge owns it from here) and `socket` (the bridge's end of a
    /// socketpair, owned from here). `onClose` is called once, with why.
    init(stream: OpaquePointer, socket: Int32, onClose: @escaping @Sendable (String) -> Void) throws(VMExecError) {
        self.stream = stream
        self.socket = socket
        self.onClose = onClose
        _ = fcntl(socket, F_SETFL, fcntl(socket, F_GETFL) | O_NONBLOCK)
        let streamMask = Int32(
            VIR_STREAM_EVENT_READABLE.rawValue | VIR_STREAM_EVENT_ERROR.rawValue | VIR_STREAM_EVENT_HANGUP.rawValue)
        let socketMask = Int32(VIR_EVENT_HANDLE_READABLE.rawValue)
        state.withLock {
            $0.streamEvents = streamMask
            $0.socketEvents = socketMask
        }
        let streamRef = Unmanaged.passRetained(self).toOpaque()
        let added = virStreamEventAddCallback(
            stream, streamMask,
            { _, events, opaque in
                Unmanaged<ChannelBridge>.fromOpaque(opaque!).takeUnretainedValue().streamReady(events)
            }, streamRef,
            { opaque in Unmanaged<ChannelBridge>.fromOpaque(opaque!).release() })
        guard added == 0 else {
            Unmanaged<ChannelBridge>.fromOpaque(streamRef).release()
            let why = LibvirtEventLoop.lastError("cannot watch the channel's stream")
            virStreamAbort(stream)
            virStreamFree(stream)
            Foundation.close(socket)
            throw VMExecError(.launchFailed, "the guest's control channel: \(why)")
        }
        let socketRef = Unmanaged.passRetained(self).toOpaque()
        let watch = virEventAddHandle(
            socket, socketMask,
            { _, _, events, opaque in
                Unmanaged<ChannelBridge>.fromOpaque(opaque!).takeUnretainedValue().socketReady(events)
            }, socketRef,
            { opaque in Unmanaged<ChannelBridge>.fromOpaque(opaque!).release() })
        guard watch >= 0 else {
            Unmanaged<ChannelBridge>.fromOpaque(socketRef).release()
            close("cannot watch the channel's socket")
            throw VMExecError(.launchFailed, "the guest's control channel: cannot watch its socket")
        }
        let closedMeanwhile = state.withLock { s -> Bool in
            s.watch = watch
            return s.closed
        }
        if closedMeanwhile { virEventRemoveHandle(watch) }
    }

    /// The stream has data, has room, or broke.
    private func streamReady(_ events: Int32) {
        if events & Int32(VIR_STREAM_EVENT_READABLE.rawValue) != 0 { receive() }
        if events & Int32(VIR_STREAM_EVENT_WRITABLE.rawValue) != 0 { sendPending() }
        if events & Int32(VIR_STREAM_EVENT_ERROR.rawValue | VIR_STREAM_EVENT_HANGUP.rawValue) != 0 {
            // Data may still be buffered in front of the hang-up: take it first.
            receive()
            close(
                "the channel's stream ended (libvirt: \(events & Int32(VIR_STREAM_EVENT_ERROR.rawValue) != 0 ? "error" : "hang-up"))"
            )
            return
        }
        rearm()
    }

    /// The socket has data from the host, has room for the guest's, or broke.
    private func socketReady(_ events: Int32) {
        if events & Int32(VIR_EVENT_HANDLE_WRITABLE.rawValue) != 0 { flushToHost() }
        if events & Int32(VIR_EVENT_HANDLE_READABLE.rawValue) != 0 { readFromHost() }
        if events & Int32(VIR_EVENT_HANDLE_ERROR.rawValue | VIR_EVENT_HANDLE_HANGUP.rawValue) != 0
            && events & Int32(VIR_EVENT_HANDLE_READABLE.rawValue) == 0
        {
            close("the host closed the channel")
            return
        }
        rearm()
    }

    /// Guest to host: one chunk from the stream, written on to the socket.
    private func receive() {
        guard state.withLock({ !$0.closed && $0.toHost.isEmpty }) else { return }
        var buffer = [UInt8](repeating: 0, count: Self.chunk)
        let n = buffer.withUnsafeMutableBytes {
            virStreamRecv(stream, $0.baseAddress!.assumingMemoryBound(to: CChar.self), Self.chunk)
        }
        if n == -2 { return }  // nothing after all
        if n == 0 { return close("the guest's channel closed") }
        if n < 0 { return close("reading the guest's channel failed: \(LibvirtEventLoop.lastError("libvirt error"))") }
        state.withLock { $0.toHost = Array(buffer[0..<Int(n)]) }
        flushToHost()
    }

    private func flushToHost() {
        let pending = state.withLock { $0.toHost }
        guard !pending.isEmpty else { return }
        let n = pending.withUnsafeBytes { write(socket, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            return close("the host's end of the channel is gone")
        }
        state.withLock { $0.toHost.removeFirst(n) }
    }

    /// Host to guest: one chunk from the socket, sent on to the stream.
    private func readFromHost() {
        guard state.withLock({ !$0.closed && $0.toGuest.isEmpty }) else { return }
        var buffer = [UInt8](repeating: 0, count: Self.chunk)
        let n = buffer.withUnsafeMutableBytes { read(socket, $0.baseAddress, Self.chunk) }
        if n < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            return close("the host's end of the channel is gone")
        }
        if n == 0 { return close("the host closed the channel") }
        state.withLock { $0.toGuest = Array(buffer[0..<n]) }
        sendPending()
    }

    private func sendPending() {
        let pending = state.withLock { $0.closed ? [] : $0.toGuest }
        guard !pending.isEmpty else { return }
        let n = pending.withUnsafeBytes { virStreamSend(stream, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
        if n == -2 { return }
        if n < 0 { return close("writing to the guest's channel failed: \(LibvirtEventLoop.lastError("libvirt error"))") }
        state.withLock { $0.toGuest.removeFirst(Int(n)) }
    }

    /// Asks libvirt for the events that can make progress now: a side is read
    /// only while nothing from it waits, written only while something does.
    private func rearm() {
        let (stream, socket, watch) = state.withLock { s -> (Int32?, Int32?, Int32) in
            guard !s.closed else { return (nil, nil, -1) }
            var streamMask = Int32(VIR_STREAM_EVENT_ERROR.rawValue | VIR_STREAM_EVENT_HANGUP.rawValue)
            if s.toHost.isEmpty { streamMask |= Int32(VIR_STREAM_EVENT_READABLE.rawValue) }
            if !s.toGuest.isEmpty { streamMask |= Int32(VIR_STREAM_EVENT_WRITABLE.rawValue) }
            var socketMask: Int32 = 0
            if s.toGuest.isEmpty { socketMask |= Int32(VIR_EVENT_HANDLE_READABLE.rawValue) }
            if !s.toHost.isEmpty { socketMask |= Int32(VIR_EVENT_HANDLE_WRITABLE.rawValue) }
            let changedStream = streamMask != s.streamEvents ? streamMask : nil
            let changedSocket = socketMask != s.socketEvents ? socketMask : nil
            s.streamEvents = streamMask
            s.socketEvents = socketMask
            return (changedStream, changedSocket, s.watch)
        }
        if let stream { virStreamEventUpdateCallback(self.stream, stream) }
        if let socket, watch >= 0 { virEventUpdateHandle(watch, socket) }
    }

    /// Ends both sides, once: the socket's peer (the channel client) reads EOF.
    func close(_ why: String) {
        let watch = state.withLock { s -> Int32? in
            guard !s.closed else { return nil }
            s.closed = true
            return s.watch
        }
        guard let watch else { return }
        virStreamEventRemoveCallback(stream)
        if watch >= 0 { virEventRemoveHandle(watch) }
        virStreamAbort(stream)
        virStreamFree(stream)
        Foundation.close(socket)
        onClose(why)
    }
}
