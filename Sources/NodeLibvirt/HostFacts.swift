import Glibc
import NodeCore

/// What this host offers the VMs; decides the domain type and optional devices.
public struct HostFacts: Sendable, Equatable {
    /// KVM is used only when a KVM module is loaded (on these CI hosts /dev/kvm exists but hangs).
    public var kvmUsable: Bool
    /// /dev/vhost-vsock exists: VMs get a vsock device with a unique guest CID.
    public var vhostVsock: Bool
    /// OVMF code and variables template, when installed (UEFI firmware).
    public var ovmf: (code: String, varsTemplate: String)?
    /// Path of the QEMU binary domains run.
    public var emulator: String
    /// The user libvirt runs QEMU as (Debian: libvirt-qemu); VM run directories belong to it so
    /// QEMU can create the agent socket there.
    public var qemuUser: (uid: uid_t, gid: gid_t)?

    /// Compares every fact (the tuples field by field).
    public static func == (a: HostFacts, b: HostFacts) -> Bool {
        a.kvmUsable == b.kvmUsable && a.vhostVsock == b.vhostVsock && a.ovmf?.code == b.ovmf?.code
            && a.ovmf?.varsTemplate == b.ovmf?.varsTemplate && a.emulator == b.emulator
            && a.qemuUser?.uid == b.qemuUser?.uid && a.qemuUser?.gid == b.qemuUser?.gid
    }

    /// Creates facts from given values (`detect()` reads them from this host).
    public init(
        kvmUsable: Bool, vhostVsock: Bool, ovmf: (code: String, varsTemplate: String)?, emulator: String,
        qemuUser: (uid: uid_t, gid: gid_t)?
    ) {
        self.kvmUsable = kvmUsable
        self.vhostVsock = vhostVsock
        self.ovmf = ovmf
        self.emulator = emulator
        self.qemuUser = qemuUser
    }

    /// Looks at this host.
    public static func detect() -> HostFacts {
        func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }
        let kvm = exists("/dev/kvm") && (exists("/sys/module/kvm_intel") || exists("/sys/module/kvm_amd"))
        let firmware = [
            ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
            ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        ].first { exists($0.0) && exists($0.1) }
        var user: (uid_t, gid_t)?
        if let entry = getpwnam("libvirt-qemu") { user = (entry.pointee.pw_uid, entry.pointee.pw_gid) }
        return HostFacts(
            kvmUsable: kvm, vhostVsock: exists("/dev/vhost-vsock"),
            ovmf: firmware.map { (code: $0.0, varsTemplate: $0.1) }, emulator: "/usr/bin/qemu-system-x86_64",
            qemuUser: user.map { (uid: $0.0, gid: $0.1) })
    }
}
