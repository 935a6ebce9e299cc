#!/usr/bin/env bash
# Tests the packages packaging/build-debs.sh wrote, on this machine, with apt from the local
# repository: dependencies resolved by apt, every unit passes `systemd-analyze verify`, every
# binary reports the package's version, conffiles are conffiles, the control plane's system user
# exists, `remove` keeps state and conffiles, `purge` leaves no file of ours.
# (Units run by systemd, upgrades and the agent in a guest are tested in a booted Debian guest.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/.build-deb
version=$(cat "$out/version")
packages=(limiquantix-agent limiquantix-client limiquantix-node limiquantix-controlplane)
fail() {
    echo "test-debs: FAIL: $*" >&2
    exit 1
}
say() { echo "test-debs: $*" >&2; }

keyring=/usr/share/keyrings/limiquantix-local.gpg
list=/etc/apt/sources.list.d/limiquantix-local.list
cleanup() { rm -f "$list" "$keyring"; }
trap cleanup EXIT
install -m 0644 "$out/repo/limiquantix-local.gpg" "$keyring"
echo "deb [signed-by=$keyring] file:$out/repo ./" >"$list"
# Only our source is read again; Debian's indexes are those this machine already has.
apt-get update -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 >&2
say "apt-get install ${packages[*]} ($version)"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${packages[@]/%/=$version}" >&2

for p in "${packages[@]}"; do
    [ "$(dpkg-query -W -f='${Version} ${db:Status-Abbrev}' "$p")" = "$version ii " ] || fail "$p is not installed at $version"
done
for b in /usr/sbin/lqx-agent /usr/sbin/lqx-node /usr/sbin/lqx-controlplane /usr/bin/lqx; do
    [ "$("$b" --version)" = "$version" ] || fail "$b --version says $("$b" --version), not $version"
done
say "binaries report $version"

for unit in limiquantix-agent:lqx-agent limiquantix-node:lqx-node limiquantix-controlplane:lqx-controlplane; do
    file=$(dpkg -L "${unit%%:*}" | grep "/systemd/system/${unit#*:}.service$") || fail "${unit%%:*} has no ${unit#*:}.service"
    # Unknown keys are only warnings to systemd: any output at all fails here.
    said=$(systemd-analyze verify "$file" 2>&1) || fail "systemd-analyze verify $file: $said"
    [ -z "$said" ] || fail "systemd-analyze verify $file: $said"
done
rule=$(dpkg -L limiquantix-agent | grep "/udev/rules.d/60-lqx-agent.rules$") || fail "no udev rule"
grep -q 'SYSTEMD_WANTS}+="lqx-agent.service"' "$rule" || fail "the udev rule wants no lqx-agent"
say "units verified"

for conf in limiquantix-agent:/etc/limiquantix/agent.toml limiquantix-node:/etc/default/lqx-node \
    limiquantix-controlplane:/etc/default/lqx-controlplane; do
    dpkg-query -W -f='${Conffiles}\n' "${conf%%:*}" | grep -q " ${conf#*:} " || fail "${conf#*:} is not a conffile"
done
for page in lqx-agent.8 lqx-node.8 lqx-controlplane.8; do [ -f "/usr/share/man/man8/$page.gz" ] || fail "no $page"; done
[ -f /usr/share/man/man1/lqx.1.gz ] || fail "no lqx.1"
grep -q "_lqx" /usr/share/bash-completion/completions/lqx || fail "no bash completion"
getent passwd lqx-controlplane >/dev/null || fail "no lqx-controlplane user"
say "conffiles, man pages, completions, system user present"

# The agent, with the policy as installed, answers the client: both report the package's version.
sock=$(mktemp -u /tmp/lqx-agent-deb.XXXXXX)
/usr/sbin/lqx-agent --policy /etc/limiquantix/agent.toml --listen "unix:$sock" --audit-log /dev/null >/dev/null 2>&1 &
agent=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
info=$(/usr/bin/lqx --agent "unix:$sock" info -o json) || fail "lqx info against the installed agent failed"
kill "$agent"
wait "$agent" 2>/dev/null || true
echo "$info" | grep -q "\"agent_version\" *: *\"$version\"" || fail "the agent reports another version: $info"
say "installed agent and client talk (agent $version)"

# remove keeps conffiles and state; purge leaves nothing of ours.
mkdir -p /var/lib/limiquantix/controlplane /var/log/limiquantix
echo state >/var/lib/limiquantix/controlplane/marker
echo audit >/var/log/limiquantix/agent-audit.log
echo "# edited" >>/etc/limiquantix/agent.toml
declare -A files
for p in "${packages[@]}"; do files[$p]=$(dpkg -L "$p" | while read -r f; do [ -f "$f" ] && echo "$f"; done); done
DEBIAN_FRONTEND=noninteractive apt-get remove -y "${packages[@]}" >&2
[ -f /usr/sbin/lqx-agent ] && fail "remove left /usr/sbin/lqx-agent"
grep -q "# edited" /etc/limiquantix/agent.toml || fail "remove did not keep the edited policy"
[ -f /var/lib/limiquantix/controlplane/marker ] || fail "remove did not keep the control plane's state"
[ -f /var/log/limiquantix/agent-audit.log ] || fail "remove did not keep the audit log"
DEBIAN_FRONTEND=noninteractive apt-get purge -y "${packages[@]}" >&2
for p in "${packages[@]}"; do
    for f in ${files[$p]}; do [ -e "$f" ] && fail "purge of $p left $f"; done
done
for left in /etc/limiquantix /var/lib/limiquantix/controlplane /var/log/limiquantix/agent-audit.log /etc/default/lqx-node; do
    [ -e "$left" ] && fail "purge left $left"
done
say "remove kept conffiles and state; purge left no file of ours"
say "ok"
