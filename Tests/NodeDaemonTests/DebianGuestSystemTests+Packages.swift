import Foundation
import LQXTestSupport
import NodeTestSupport
import Testing

/// The packages inside the running Debian guest, with apt from a local repository copied in
/// (the guest reaches no mirror; the image holds what limiquantix-node and -controlplane depend on):
/// the agent upgraded under the host's session, the control plane and the node installed and joined,
/// every unit verified and rated, then remove and purge.
extension DebianGuestSystemTests {
    typealias Lqx = ([String], String?) async throws -> CommandResult
    typealias Guest = (String) async throws -> CommandResult

    static let ours = ["limiquantix-agent", "limiquantix-client", "limiquantix-node", "limiquantix-controlplane"]

    func packages(_ name: String, _ lqx: Lqx, _ guest: Guest, node: TestNode, consoleLog: String) async throws {
        let repository = DebianGuest.upgradeRepository
        guard let index = try? String(contentsOfFile: repository + "/Packages", encoding: .utf8) else {
            if DebianGuest.required {
                Issue.record("\(repository)/Packages is missing: scripts/test.sh builds a newer version there")
            }
            return
        }
        let newest = try DebianGuest.newest(in: index)
        let installed = try #require(DebianGuest.imageAgentVersion, "the image has no manifest with agent=")
        let upgrade = try #require(newest["limiquantix-agent"], "no limiquantix-agent in \(repository)")
        try #require(
            try DebianGuest.debianVersion(upgrade.version, isNewerThan: installed),
            "\(upgrade.version) in \(repository) is not newer than the image's agent \(installed)")
        for package in Self.ours { try #require(newest[package] != nil, "no \(package) in \(repository)") }

        // The repository in the guest: its signed index and the newest .deb of each package.
        try #require(try await guest("mkdir -p /srv/lqx-repo/pool").status == 0)
        for file in ["InRelease", "Release", "Release.gpg", "Packages", "Packages.gz"] {
            let copied = try await lqx(["cp", repository + "/" + file, "\(name):/srv/lqx-repo/\(file)"], nil)
            try #require(copied.status == 0, "cp \(file): \(copied.stderr)")
        }
        for package in Self.ours.compactMap({ newest[$0] }) {
            let copied = try await lqx(
                ["cp", repository + "/" + package.filename, "\(name):/srv/lqx-repo/\(package.filename)"], nil)
            try #require(copied.status == 0, "cp \(package.filename): \(copied.stderr)")
        }
        let apt = "apt-get -o Dir::Etc::sourcelist=/dev/null"
        let source = try await guest(
            "echo 'deb [signed-by=/usr/share/keyrings/limiquantix-local.gpg] file:/srv/lqx-repo ./' "
                + ">/etc/apt/sources.list.d/limiquantix.list && \(apt) update 2>&1")
        try #require(source.status == 0, "apt-get update in the guest: \(source.stdout)")

        try await upgradeAgent(name, lqx, guest, to: upgrade.version, consoleLog: consoleLog, apt: apt)
        try await joinNode(guest, version: upgrade.version, apt: apt)
        try await removeAndPurge(name, lqx, guest, node: node, consoleLog: consoleLog, apt: apt)
    }

    /// `apt-get upgrade` under the running agent: the edited policy is kept, the agent restarts on
    /// the new version and the host sees it again.
    func upgradeAgent(
        _ name: String, _ lqx: Lqx, _ guest: Guest, to version: String, consoleLog: String, apt: String
    ) async throws {
        let before = try await guest(
            "echo '# edited by this site' >>/etc/limiquantix/agent.toml; systemctl show lqx-agent -p MainPID --value")
        try #require(before.status == 0, "\(before)")
        // In a unit of its own: the upgrade restarts the agent, and with it every command it runs.
        let started = try await guest(
            "systemd-run --unit=lqx-upgrade --no-block sh -c "
                + "'DEBIAN_FRONTEND=noninteractive \(apt) upgrade -y >/root/upgrade.log 2>&1; echo $? >/root/upgrade.rc'"
        )
        try #require(started.status == 0, "\(started)")
        var last = ""
        let upgraded = try await untilGuestReady(name, consoleLog: consoleLog, timeout: .seconds(240)) {
        } ready: {
            let r = try await lqx(["vm", "get", name, "-o", "json"], nil)
            last = r.stdout + r.stderr
            guard r.status == 0, r.stdout.contains("\"connected\":true"), r.stdout.contains(version) else {
                return false
            }
            return try await guest("test -s /root/upgrade.rc").status == 0
        }
        try #require(upgraded, "the agent did not come back on \(version): \(last)")
        let after = try await guest(
            "cat /root/upgrade.rc; dpkg-query -W -f='${Version}\\n' limiquantix-agent; lqx-agent --version; "
                + "tail -n 1 /etc/limiquantix/agent.toml; systemctl show lqx-agent -p MainPID --value")
        let log = try await guest("cat /root/upgrade.log").stdout
        #expect(
            after.stdout.hasPrefix("0\n\(version)\n\(version)\n# edited by this site\n"),
            "after the upgrade: \(after.stdout)\n\(log)")
        #expect(!after.stdout.hasSuffix("\n" + before.stdout), "the agent was not restarted: \(after.stdout)")
    }

    /// The control plane and the node from their packages, started by systemd; the node joins with
    /// a token and is READY; every unit passes `systemd-analyze verify` and is rated.
    func joinNode(_ guest: Guest, version: String, apt: String) async throws {
        let installed = try await guest(
            "DEBIAN_FRONTEND=noninteractive \(apt) install -y --no-install-recommends "
                + "limiquantix-controlplane=\(version) limiquantix-node=\(version) limiquantix-client=\(version) 2>&1")
        try #require(installed.status == 0, "apt-get install in the guest: \(installed.stdout.suffix(3000))")
        let joined = try await guest(
            """
            export HOME=/root
            for i in $(seq 120); do
              sha=$(journalctl -u lqx-controlplane -o cat | sed -n 's/^cluster CA: .* (sha256 \\([0-9a-f]*\\))$/\\1/p' | tail -n 1)
              [ -n "$sha" ] && break; sleep 1
            done
            [ -n "$sha" ] || { systemctl status lqx-controlplane; journalctl -u lqx-controlplane -n 30 -o cat; exit 1; }
            lqx login 127.0.0.1:8443 --token "$(cat /var/lib/limiquantix/controlplane/admin.token)" --ca-sha256 "$sha" || exit 1
            token=$(lqx node join-token create --ttl 10m 2>/dev/null) || exit 1
            printf 'LQX_NODE_OPTS="--listen 127.0.0.1:7443 --control-plane 127.0.0.1:8443 --join-token %s --ca-sha256 %s"\\n' "$token" "$sha" >/etc/default/lqx-node
            systemctl restart lqx-node
            for i in $(seq 120); do lqx node list 2>/dev/null | grep -q ' READY ' && break; sleep 1; done
            lqx node list
            systemctl is-active lqx-controlplane lqx-node
            """)
        #expect(
            joined.status == 0 && joined.stdout.contains(" READY ") && joined.stdout.hasSuffix("active\nactive\n"),
            "the node in the guest did not join: \(joined.stdout)\(joined.stderr)")
        let verified = try await guest(
            "for u in lqx-controlplane lqx-node; do systemd-analyze verify --man=no /lib/systemd/system/$u.service 2>&1; "
                + "done; echo rc=$?; ps -o user= -C lqx-controlplane")
        #expect(verified.stdout == "rc=0\nlqx-controlplane\n", "units in the guest: \(verified.stdout)")
        let security = try await guest(
            "for u in lqx-agent lqx-node lqx-controlplane; do systemd-analyze security --no-pager $u | tail -n 1; done")
        print("systemd-analyze security in the guest:\n\(security.stdout)")
        #expect(security.stdout.components(separatedBy: "Overall exposure level").count == 4, "\(security.stdout)")
    }

    /// `apt-get remove` stops everything and keeps state, conffiles and the audit log; `purge`
    /// leaves no file of ours; the agent is installed again so the host gets its session back.
    func removeAndPurge(
        _ name: String, _ lqx: Lqx, _ guest: Guest, node: TestNode, consoleLog: String, apt: String
    ) async throws {
        let packages = Self.ours.joined(separator: " ")
        let script = """
            exec >/root/purge.log 2>&1
            export DEBIAN_FRONTEND=noninteractive
            \(apt) remove -y \(packages) >/root/remove.apt 2>&1 || echo "remove failed"
            systemctl is-active lqx-agent lqx-node lqx-controlplane
            for d in lqx-agent lqx-node lqx-controlplane; do
              pgrep -f "^/usr/sbin/$d( |$)" >/dev/null || echo "no $d process"
            done
            tail -n 1 /etc/limiquantix/agent.toml
            test -s /var/log/limiquantix/agent-audit.log && echo "audit log kept"
            test -s /var/lib/limiquantix/controlplane/admin.token && echo "cluster state kept"
            test -f /etc/default/lqx-node && echo "node options kept"
            \(apt) purge -y \(packages) >/root/purge.apt 2>&1 || echo "purge failed"
            find / -xdev \\( -path /proc -o -path /sys -o -path /srv/lqx-repo -o -path /root \\) -prune -o \\
              \\( -name '*limiquantix*' -o -name 'lqx-*' -o -name lqx \\) -print \\
              | grep -v -e '^/usr/share/keyrings/limiquantix-local.gpg$' -e '^/etc/apt/sources.list.d/limiquantix.list$' \\
              -e '^/var/lib/apt/lists/' -e '^/var/log/journal/' \\
              | sed 's/^/left: /'
            for p in \(packages); do
              st=$(dpkg-query -W -f='${db:Status-Status}' $p 2>/dev/null || true)
              case "$st" in ""|not-installed) ;; *) echo "dpkg: $p is $st" ;; esac
            done
            \(apt) install -y --no-install-recommends limiquantix-agent >/root/reinstall.apt 2>&1 || echo "reinstall failed"
            echo done
            """
        let local = node.root + "/purge.sh"
        try script.write(toFile: local, atomically: true, encoding: .utf8)
        try #require(try await lqx(["cp", local, "\(name):/root/purge.sh"], nil).status == 0)
        let started = try await guest("systemd-run --unit=lqx-purge --no-block sh /root/purge.sh")
        try #require(started.status == 0, "\(started)")
        var log = ""
        let back = try await untilGuestReady(name, consoleLog: consoleLog, timeout: .seconds(240)) {
        } ready: {
            let r = try await guest("cat /root/purge.log")
            log = r.stdout
            return r.status == 0 && log.hasSuffix("done\n")
        }
        #expect(back, "the agent did not come back after purge and reinstall: \(log)")
        let expected =
            [
                "inactive", "inactive", "inactive",
                "no lqx-agent process", "no lqx-node process", "no lqx-controlplane process",
                "# edited by this site", "audit log kept", "cluster state kept", "node options kept",
                "done",
            ].joined(separator: "\n") + "\n"
        #expect(log == expected, "remove and purge in the guest:\n\(log)")
    }
}
