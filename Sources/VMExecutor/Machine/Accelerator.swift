/// Which accelerator runs the guest's CPU.
public enum Accelerator: String, Sendable {
    case kvm
    case tcg
}

/// How to pick the accelerator: try KVM for real and fall back, or force one.
public enum AcceleratorChoice: String, Sendable, CaseIterable {
    case auto
    case kvm
    case tcg
}
