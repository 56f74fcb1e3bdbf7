import Foundation

/// Guest CPU architectures vmexec can boot.
public enum GuestArchitecture: String, Sendable, CaseIterable {
    case x86_64
    case aarch64

    /// The architecture of the machine running this code.
    public static var host: GuestArchitecture {
        #if arch(arm64)
            return .aarch64
        #else
            return .x86_64
        #endif
    }

    /// The architecture vmexec boots when none is named: `$VMEXEC_ARCH` when
    /// set (so `make test ARCH=aarch64` and a shell can pick the guest once
    /// for every command), else the host's.
    public static var preferred: GuestArchitecture {
        (try? fromEnvironment()) ?? .host
    }

    /// `$VMEXEC_ARCH`'s architecture, the host's when it is unset or empty,
    /// and an error naming the choices when it names none of them.
    public static func fromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(VMExecError) -> GuestArchitecture {
        guard let name = environment["VMEXEC_ARCH"], !name.isEmpty else { return .host }
        guard let arch = GuestArchitecture(rawValue: name) else {
            throw VMExecError(
                .invalidRequest,
                "VMEXEC_ARCH is '\(name)', which is no architecture vmexec boots; set it to one of "
                    + allCases.map(\.rawValue).joined(separator: ", ") + " or unset it")
        }
        return arch
    }
}

/// The files a guest boots from: kernel, initramfs (the init and its
/// modules) and the base root file system.
public struct GuestImages: Sendable, Equatable {
    public var directory: URL
    public var kernel: URL
    public var initramfs: URL
    public var rootfs: URL

    static let requiredNames = ["initramfs.cpio", "rootfs.sqfs"]

    /// Finds the images for `architecture`: the explicit directory if given,
    /// else `$VMEXEC_IMAGES`, else the build folder of a source checkout
    /// (`images/build/<arch>` above the executable or the current directory).
    /// A directory may hold the files directly or in a `<arch>` subfolder.
    public static func locate(
        explicit: String? = nil, architecture: GuestArchitecture = .preferred,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(VMExecError) -> GuestImages {
        var candidates: [URL] = []
        if let explicit {
            candidates = [URL(fileURLWithPath: explicit)]
        } else if let env = environment["VMEXEC_IMAGES"], !env.isEmpty {
            candidates = [URL(fileURLWithPath: env)]
        } else {
            var roots = [URL(fileURLWithPath: FileManager.default.currentDirectoryPath)]
            var dir = URL(fileURLWithPath: CommandLine.arguments.first ?? ".").resolvingSymlinksInPath()
                .deletingLastPathComponent()
            for _ in 0..<6 {
                roots.append(dir)
                dir = dir.deletingLastPathComponent()
            }
            candidates = roots.map { $0.appendingPathComponent("images/build") }
        }
        var looked: [String] = []
        for base in candidates {
            for dir in [base.appendingPathComponent(architecture.rawValue), base] {
                looked.append(dir.path)
                if let images = GuestImages(directory: dir, architecture: architecture) { return images }
            }
        }
        let source = explicit != nil ? "--images" : environment["VMEXEC_IMAGES"] != nil ? "VMEXEC_IMAGES" : "the build folder"
        throw VMExecError(
            .imagesNotFound,
            "no \(architecture.rawValue) guest images found via \(source) (looked in \(looked.prefix(4).joined(separator: ", "))); "
                + "build them with `make images ARCH=\(architecture.rawValue)`, or point --images or VMEXEC_IMAGES "
                + "at a folder holding a kernel (vmlinux or vmlinuz), initramfs.cpio and rootfs.sqfs")
    }

    /// The images in `directory`, or nil when a file is missing.
    public init?(directory: URL, architecture: GuestArchitecture) {
        let fm = FileManager.default
        let kernelNames = architecture == .x86_64 ? ["vmlinux", "vmlinuz"] : ["vmlinuz", "Image"]
        guard
            let kernel = kernelNames.map({ directory.appendingPathComponent($0) })
                .first(where: { fm.fileExists(atPath: $0.path) })
        else { return nil }
        for name in Self.requiredNames where !fm.fileExists(atPath: directory.appendingPathComponent(name).path) {
            return nil
        }
        self.directory = directory
        self.kernel = kernel
        self.initramfs = directory.appendingPathComponent("initramfs.cpio")
        self.rootfs = directory.appendingPathComponent("rootfs.sqfs")
    }
}
