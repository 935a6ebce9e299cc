import AgentProtocol
import CLQXSupport
import Glibc
import POSIXSupport

/// poweroff / reboot / halt: acknowledge first, sync, then systemd when present, else reboot(2).
struct PowerHandler {
    let core: AgentCore
    let context: StreamContext

    /// Microseconds between the reply leaving the agent's queues and the power action.
    static let transportGrace: UInt32 = 300_000

    func run(_ request: Limiquantix_Agent_V1_ShutdownRequest) async throws {
        let action = request.action
        let delay = min(request.delaySeconds, 86_400)
        let dryRun = core.configuration.dryRunPower
        let systemd = access("/run/systemd/system", F_OK) == 0 && access("/bin/systemctl", X_OK) == 0
        let method = dryRun ? "dry-run" : (systemd ? "systemd" : "reboot-syscall")
        core.audit?.record("shutdown", ["action": "\(action)", "delay": Int(delay), "method": method])
        context.logger.notice("power request accepted", metadata: ["action": "\(action)", "method": "\(method)"])
        try await context.reply(
            .with {
                $0.shutdown = .with {
                    $0.action = action
                    $0.delaySeconds = delay
                    $0.dryRun = dryRun
                    $0.method = method
                }
            }, end: true)
        guard !dryRun else { return }
        // Acknowledged means on the wire: wait until the writer took the reply (at most 2 s), then
        // give the transport (a virtio-serial relay, the virtqueue, the host's reader) a moment
        // before the power action can stop the machine under it.
        let deadline = ContinuousClock.now + .seconds(2)
        while context.mux.hasQueuedOutbound, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        let logger = context.logger
        // Detached on purpose: the power action must outlive this stream and session.
        startDetachedThread {
            usleep(Self.transportGrace)
            if delay > 0 { sleep(delay) }
            sync()
            if systemd {
                let verb =
                    switch action {
                    case .reboot: "reboot"
                    case .halt: "halt"
                    default: "poweroff"
                    }
                if let pid = try? ChildProcess.spawn(
                    SpawnRequest(
                        path: "/bin/systemctl", argv: ["systemctl", verb],
                        environment: ["PATH=\(ExecHandler.defaultPath)"], workingDirectory: "/"))
                {
                    var status: Int32 = 0
                    waitpid(pid, &status, 0)
                    if status == 0 { return }
                }
                logger.warning("systemctl failed; using the reboot syscall")
            }
            let command: Int32 =
                switch action {
                case .reboot: 0x0123_4567  // LINUX_REBOOT_CMD_RESTART
                case .halt: Int32(bitPattern: 0xCDEF_0123)  // LINUX_REBOOT_CMD_HALT
                default: 0x4321_FEDC  // LINUX_REBOOT_CMD_POWER_OFF
                }
            sync()
            _ = lqx_reboot(command)
        }
    }
}
