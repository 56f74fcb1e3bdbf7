import Foundation
import Logging
import NIOCore
import SerialChannel
import Synchronization
import VMExecutor

/// A ``GuestHypervisor`` whose machines are a few threads of this process:
/// the control channel is a socketpair served by ``FakeInit``, disks are a
/// list, a saved state is a small file. It lets tests drive ``Sandbox``'s own
/// logic (boot states, hot-plug, a machine dying under a waiting call)
/// without QEMU, and fail any step on purpose.
final class FakeHypervisor: GuestHypervisor, Sendable {
    struct Faults: Sendable {
        /// Machines launched to restore a state end at once, as a QEMU does on a state it cannot load.
        var restoreFails = false
        /// Hot-plugging a disk is refused, as QMP refuses a device.
        var plugFails = false
        /// Machines cannot save states at all (the protocol's default: unsupported).
        var canSave = true
        /// Machines cannot hot-plug at all (the protocol's default: unsupported).
        var canPlug = true
        /// How long a hot-plug takes (so that overlapping operations would show).
        var plugDelay: Duration = .zero
        /// The guest dies when asked to mount a drive (the channel closes under the request).
        var diesOnMount = false
    }

    let faults: Mutex<Faults>
    /// Every launch, in order: whether it restored a state.
    let launches = Mutex<[Bool]>([])
    /// The machines launched, newest last.
    let machines = Mutex<[FakeMachine]>([])

    init(_ faults: Faults = Faults()) {
        self.faults = Mutex(faults)
    }

    func stateKey(for spec: MachineSpec, accelerator: Accelerator) -> String? {
        "fake-\(spec.memoryMiB)-\(accelerator)"
    }

    func launch(
        _ spec: MachineSpec, accelerator: Accelerator, restoring: URL?,
        onExit: @escaping @Sendable (MachineEnding) -> Void
    ) async throws -> any GuestMachine {
        let f = faults.withLock { $0 }
        launches.withLock { $0.append(restoring != nil) }
        let machine: FakeMachine =
            f.canPlug
            ? (f.canSave ? FakeMachine(faults: f, onExit: onExit) : FakeMachineWithoutStates(faults: f, onExit: onExit))
            : FakeMachineWithoutDisks(faults: f, onExit: onExit)
        machines.withLock { $0.append(machine) }
        if restoring != nil && f.restoreFails {
            machine.end("the fake machine could not load the state", killed: false)
        }
        return machine
    }

    var lastMachine: FakeMachine? { machines.withLock { $0.last } }
}

/// One fake machine: an init on a socketpair, its disks, its end.
class FakeMachine: GuestMachine, @unchecked Sendable {
    let accelerator = Accelerator.tcg
    let faults: FakeHypervisor.Faults
    private let onExit: @Sendable (MachineEnding) -> Void
    private let state = Mutex<(ending: MachineEnding?, disks: [MachineDisk], server: FakeInit?)>((nil, [], nil))

    init(faults: FakeHypervisor.Faults, onExit: @escaping @Sendable (MachineEnding) -> Void) {
        self.faults = faults
        self.onExit = onExit
    }

    var ending: MachineEnding? { state.withLock { $0.ending } }
    var disks: [MachineDisk] { state.withLock { $0.disks } }
    /// "plug SERIAL", "plugged SERIAL", "unplug SERIAL", "unplugged SERIAL" in the order they happened.
    let events = Mutex<[String]>([])

    /// Ends the machine as a crash or a power-off would: the channel closes, `onExit` runs once.
    func end(_ why: String, killed: Bool) {
        let (first, fakeInit) = state.withLock { (s) -> (Bool, FakeInit?) in
            guard s.ending == nil else { return (false, nil) }
            s.ending = MachineEnding(why, killed: killed)
            return (true, s.server)
        }
        guard first else { return }
        fakeInit?.stop()
        onExit(MachineEnding(why, killed: killed))
    }

    func waitForExit(timeout: Duration) async -> MachineEnding? {
        let deadline = ContinuousClock.now + timeout
        while ending == nil && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        return ending
    }

    func connect(timeout: Duration, hostFacts: [String: String], logger: Logger) async throws -> (ChannelClient, Hello) {
        guard ending == nil else { throw VMExecError(.launchFailed, "the fake machine has ended") }
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw VMExecError(.launchFailed, "socketpair: \(String(cString: strerror(errno)))")
        }
        let fakeInit = FakeInit(fd: fds[1], diesOnMount: faults.diesOnMount) { [weak self] in
            self?.end("the fake machine powered off", killed: false)
        }
        let previous = state.withLock { s in
            defer { s.server = fakeInit }
            return s.server
        }
        previous?.stop()
        fakeInit.serve()
        return try await ChannelClient.connect(socket: fds[0], handshakeTimeout: timeout, logger: logger)
    }

    func plug(_ disk: MachineDisk) async throws {
        if faults.plugFails { throw VMExecError(.launchFailed, "the fake machine refused device \(disk.serial)") }
        events.withLock { $0.append("plug \(disk.serial)") }
        try await Task.sleep(for: faults.plugDelay)
        state.withLock { $0.disks.append(disk) }
        events.withLock { $0.append("plugged \(disk.serial)") }
    }

    func unplug(_ disk: MachineDisk) async throws {
        events.withLock { $0.append("unplug \(disk.serial)") }
        try await Task.sleep(for: faults.plugDelay)
        state.withLock { $0.disks.removeAll { $0 == disk } }
        events.withLock { $0.append("unplugged \(disk.serial)") }
    }

    func saveState(to file: URL) async throws {
        try Data("fake machine state\n".utf8).write(to: file)
    }

    func kill() { end("the fake machine was killed", killed: true) }
}

/// A machine that takes the protocol's default for saving states: unsupported.
final class FakeMachineWithoutStates: FakeMachine, @unchecked Sendable {
    override func saveState(to file: URL) async throws {
        throw VMExecError(.unsupported, "this machine cannot save its state; set reuseBootState = false")
    }
}

/// A machine without hot-plug: the protocol's default implementations answer.
final class FakeMachineWithoutDisks: FakeMachine, @unchecked Sendable {
    override func plug(_ disk: MachineDisk) async throws {
        throw VMExecError(
            .unsupported, "this machine cannot hot-plug disks (\(disk.serial)); use a hypervisor that can, such as QEMU")
    }
}

/// The guest's side of the fake channel: answers HELLO, PING, drive
/// requests (DONE) and SHUTDOWN (BYE, then power-off); an EXEC starts a
/// process that never ends, so a test can end the machine under it.
final class FakeInit: @unchecked Sendable {
    private let fd: Int32
    private let poweredOff: @Sendable () -> Void
    private let diesOnMount: Bool
    private let queue = DispatchQueue(label: "fake-init")
    private let stopped = Mutex(false)

    init(fd: Int32, diesOnMount: Bool = false, poweredOff: @escaping @Sendable () -> Void) {
        self.diesOnMount = diesOnMount
        self.fd = fd
        self.poweredOff = poweredOff
    }

    /// Closes the guest's end: the host sees the channel close.
    func stop() {
        guard
            !stopped.withLock({ s in
                defer { s = true }; return s
            })
        else { return }
        shutdown(fd, Int32(SHUT_RDWR))
    }

    func serve() {
        queue.async { [self] in
            var buffer = ByteBuffer()
            var chunk = [UInt8](repeating: 0, count: 65536)
            defer { close(fd) }
            while true {
                while let frame = try? FrameParser.parse(&buffer) {
                    if !answer(frame) { return }
                }
                let n = read(fd, &chunk, chunk.count)
                if n <= 0 { return }
                buffer.writeBytes(chunk.prefix(n))
            }
        }
    }

    /// Answers one host frame; false once the guest is gone.
    private func answer(_ frame: Frame) -> Bool {
        switch frame.kind {
        case .hello:
            send(Frame(.hello, payload: Hello(window: 65536, maxStreams: 16, info: "init=fake\nkernel=fake").encoded()))
        case .ping:
            send(Frame(.pong, stream: frame.stream, payload: frame.payload))
        case .mount where diesOnMount:
            poweredOff()
            return false
        case .mount, .unmount, .layers, .store, .sync, .freeze, .thaw:
            send(Frame(.done, stream: frame.stream))
        case .exec:
            send(Frame(.started, stream: frame.stream, payload: withUnsafeBytes(of: UInt32(42).littleEndian) { Array($0) }))
        case .shutdown:
            send(Frame(.bye))
            poweredOff()
            return false
        default:
            break
        }
        return true
    }

    private func send(_ frame: Frame) {
        let bytes = frame.encoded()
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            off += n
        }
    }
}
