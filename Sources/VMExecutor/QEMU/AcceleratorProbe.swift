import CVMExecHost
import Foundation
import Logging

/// Decides whether KVM can be used, by trying it.
///
/// The presence of /dev/kvm proves little: on some hosts (nested
/// virtualisation) a one-instruction guest runs but a real kernel hangs.
/// So the probe has two steps: a HLT guest through the KVM ioctls (catches
/// a missing or broken KVM in milliseconds), then the real guest booted
/// under KVM with a short hello deadline (done by ``Sandbox``). The verdict
/// of the second step is cached per host boot, so only the first start on a
/// host pays for a hanging KVM.
enum AcceleratorProbe {
    /// How long a trial boot under KVM may take before KVM is judged hung.
    static let trialDeadline: Duration = .seconds(4)

    /// Step one: nil when KVM passes the HLT check, else why it cannot be used.
    /// Runs on a Dispatch thread: it forks and may wait up to 500 ms, which
    /// must not hold a thread of Swift's cooperative pool.
    static func quickCheck() async -> String? {
        await withCheckedContinuation { c in
            DispatchQueue.global().async { c.resume(returning: quickCheckBlocking()) }
        }
    }

    private static func quickCheckBlocking() -> String? {
        switch vmexec_kvm_probe(500) {
        case Int32(VMEXEC_KVM_USABLE.rawValue): return nil
        case Int32(VMEXEC_KVM_ABSENT.rawValue): return "/dev/kvm is missing or not accessible"
        case Int32(VMEXEC_KVM_HUNG.rawValue): return "a test vCPU under KVM did not return within 500 ms"
        case Int32(VMEXEC_KVM_UNSUPPORTED.rawValue): return "no KVM probe for this host architecture"
        default: return "the KVM ioctls failed"
        }
    }

    /// The cached verdict of a trial boot on this host boot: true usable,
    /// false hung, nil unknown.
    static func cachedVerdict(qemu: String) -> Bool? {
        guard let text = HostCache.read(cacheName(qemu: qemu)) else { return nil }
        return text.hasPrefix("usable") ? true : text.hasPrefix("unusable") ? false : nil
    }

    static func record(usable: Bool, qemu: String, reason: String) {
        HostCache.write(cacheName(qemu: qemu), "\(usable ? "usable" : "unusable"): \(reason)\n")
    }

    private static func cacheName(qemu: String) -> String {
        "kvm-" + qemu.replacingOccurrences(of: "/", with: "_")
    }
}
