import LQXModel

// The one mapping between the model's machine (LQXModel.VMSpec) and limiquantix.types.v1, used by
// the node API and the cluster API alike.

extension VMSpec {
    /// The spec a client sent, with the API's defaults (1 vCPU, 512 MiB) applied. Validation is
    /// `validate()`'s job; this only maps fields.
    public init(_ pb: Limiquantix_Types_V1_VMSpec) {
        self.init(
            name: pb.name, vcpus: pb.hasVcpus ? Int(pb.vcpus) : 1,
            topology: pb.hasTopology
                ? CPUTopology(
                    sockets: Int(pb.topology.sockets), cores: Int(pb.topology.cores),
                    threads: Int(pb.topology.threads)) : nil,
            memoryMiB: pb.hasMemoryMib ? Int(clamping: pb.memoryMib) : 512,
            firmware: pb.firmware == .uefi ? .uefi : .bios,
            boot: pb.hasKernel
                ? .kernel(
                    path: pb.kernel.kernel, initrd: pb.kernel.initrd.isEmpty ? nil : pb.kernel.initrd,
                    cmdline: pb.kernel.cmdline) : .disk,
            disks: pb.disks.map(DiskSpec.init), nics: pb.nics.map(NICSpec.init),
            watchdog: {
                switch pb.watchdog {
                case .poweroff: .poweroff
                case .none: .none
                default: .reset
                }
            }())
    }

    /// The spec as the APIs' message.
    public var proto: Limiquantix_Types_V1_VMSpec {
        .with {
            $0.name = name
            $0.vcpus = UInt32(clamping: vcpus)
            if let topology {
                $0.topology = .with {
                    $0.sockets = UInt32(clamping: topology.sockets)
                    $0.cores = UInt32(clamping: topology.cores)
                    $0.threads = UInt32(clamping: topology.threads)
                }
            }
            $0.memoryMib = UInt64(clamping: memoryMiB)
            $0.firmware = firmware == .uefi ? .uefi : .bios
            if case .kernel(let path, let initrd, let cmdline) = boot {
                $0.kernel = .with {
                    $0.kernel = path
                    $0.initrd = initrd ?? ""
                    $0.cmdline = cmdline
                }
            }
            $0.disks = disks.map(\.proto)
            $0.nics = nics.map(\.proto)
            $0.watchdog =
                switch watchdog {
                case .reset: .reset
                case .poweroff: .poweroff
                case .none: .none
                }
        }
    }
}

extension DiskSpec {
    /// A disk as a client sent it (validation is `VMSpec.validate()`'s job).
    public init(_ pb: Limiquantix_Types_V1_DiskSpec) {
        let source: Source =
            switch pb.source {
            case .newSizeGib(let size): .new(sizeGiB: Int(clamping: size))
            case .cloneOf(let backing): .clone(backing: backing)
            case .path(let path): .path(path)
            case nil: .new(sizeGiB: 0)  // rejected by validation: "size must be greater than 0"
            }
        let bus: Bus =
            switch pb.bus {
            case .sata: .sata
            case .scsi: .scsi
            default: .virtio
            }
        self.init(source: source, bus: bus, readOnly: pb.readOnly)
    }

    /// The disk as the APIs' message.
    public var proto: Limiquantix_Types_V1_DiskSpec {
        .with {
            switch source {
            case .new(let size): $0.newSizeGib = UInt64(clamping: size)
            case .clone(let backing): $0.cloneOf = backing
            case .path(let path): $0.path = path
            }
            $0.bus =
                switch bus {
                case .virtio: .virtio
                case .sata: .sata
                case .scsi: .scsi
                }
            $0.readOnly = readOnly
        }
    }
}

extension NICSpec {
    /// A NIC as a client sent it (validation is `VMSpec.validate()`'s job).
    public init(_ pb: Limiquantix_Types_V1_NICSpec) {
        let attachment: Attachment =
            switch pb.attachment {
            case .bridge(let name): .bridge(name)
            case .network(let name): .network(name)
            case nil: .network("")  // rejected by validation
            }
        self.init(attachment, mac: pb.mac.isEmpty ? nil : pb.mac)
    }

    /// The NIC as the APIs' message.
    public var proto: Limiquantix_Types_V1_NICSpec {
        .with {
            switch attachment {
            case .network(let name): $0.network = name
            case .bridge(let name): $0.bridge = name
            }
            if let mac { $0.mac = mac }
        }
    }
}
