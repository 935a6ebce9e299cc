import AgentProtocol

/// Guest messages with every field set, for tests that check a value survives encoding and relays.
public enum GuestFixtures {
    /// A telemetry sample in which every field, nested ones included, has a non-default value.
    public static let telemetry = Limiquantix_Agent_V1_TelemetrySample.with {
        $0.timestampMs = 1_700_000_000_123
        $0.cpu = .with {
            $0.totalPercent = 12.5
            $0.perCpuPercent = [10, 15]
        }
        $0.memory = .with {
            $0.totalBytes = 4 << 30
            $0.availableBytes = 3 << 30
            $0.freeBytes = 2 << 30
            $0.buffersBytes = 1 << 20
            $0.cachedBytes = 512 << 20
            $0.swapTotalBytes = 1 << 30
            $0.swapFreeBytes = 1 << 29
        }
        $0.load = .with {
            $0.one = 0.5
            $0.five = 0.25
            $0.fifteen = 0.125
            $0.runnable = 2
            $0.total = 180
        }
        $0.filesystems = [
            .with {
                $0.mountPoint = "/"
                $0.device = "/dev/vda1"
                $0.type = "ext4"
                $0.totalBytes = 10 << 30
                $0.usedBytes = 4 << 30
                $0.freeBytes = 6 << 30
                $0.totalInodes = 655_360
                $0.freeInodes = 600_000
            }
        ]
        $0.disks = [
            .with {
                $0.name = "vda"
                $0.readsCompleted = 10
                $0.readBytes = 4096
                $0.writesCompleted = 20
                $0.writtenBytes = 8192
                $0.ioTimeMs = 30
            }
        ]
        $0.interfaces = [
            .with {
                $0.name = "eth0"
                $0.rxBytes = 1
                $0.rxPackets = 2
                $0.rxErrors = 3
                $0.rxDropped = 4
                $0.txBytes = 5
                $0.txPackets = 6
                $0.txErrors = 7
                $0.txDropped = 8
                $0.addresses = ["10.0.2.15/24", "fe80::1/64"]
                $0.macAddress = "52:54:00:12:34:56"
                $0.up = true
            }
        ]
        $0.processCount = 123
        $0.uptimeSeconds = 99.5
        $0.cpuCount = 2
    }
}
