import Foundation
import NIOCore
import NIOPosix
import VMExecutor

/// The client end of a kept-alive guest's control socket (see ``Control``).
struct ControlClient {
    let channel: NIOAsyncChannel<ControlFrame, ControlFrame>

    static func connect(name: String) async throws -> ControlClient {
        guard Control.validate(name: name) else {
            throw VMExecError(.invalidRequest, "'\(name)' is not a guest name (1-64 of A-Z a-z 0-9 . _ -)")
        }
        let path = Control.socketPath(name)
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(unixDomainSocketPath: path) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(ControlFrameDecoder()))
                        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(ControlFrameEncoder()))
                        return try NIOAsyncChannel<ControlFrame, ControlFrame>(wrappingChannelSynchronously: channel)
                    }
                }
            return ControlClient(channel: channel)
        } catch {
            throw VMExecError(
                .notRunning,
                "no guest named \(name) is running (no one answers on \(path)); start one with vmexec run --keep-alive \(name)")
        }
    }

    /// Sends `request`, lets `body` exchange frames, and returns the RESULT
    /// (a failed one is thrown as the VMExecError the server reported).
    func call(
        _ request: ControlRequest,
        _ body: (inout NIOAsyncChannelInboundStream<ControlFrame>.AsyncIterator, NIOAsyncChannelOutboundWriter<ControlFrame>)
            async throws -> Void = { _, _ in }
    ) async throws -> ControlResult {
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(.json(.request, request))
            var frames = inbound.makeAsyncIterator()
            try await body(&frames, outbound)
            while let f = try await frames.next() {
                guard f.kind == .result else { continue }
                return try f.decode(ControlResult.self).check()
            }
            throw VMExecError(.guestStopped, "the guest's keeper closed the connection without a result")
        }
    }
}
