#!/usr/bin/env bash
# Builds the limiquantix Debian packages and a signed local apt repository:
#
#   packaging/build-debs.sh            → .build-deb/*.deb, .build-deb/repo/ (apt source), lintian, sizes
#
# limiquantix-agent, limiquantix-node, limiquantix-controlplane and limiquantix-client, built the
# Debian way (packaging/debian with debhelper, dpkg-buildpackage -b) from a copy of this tree in
# .build-deb/src/limiquantix, with release binaries linking the Swift runtime statically. The
# version comes from the tree: Sources/CLQXVersion/version.c's version, the last commit's date,
# the number of commits and its hash (0.1.0~git20261204.97.6dbde8b), plus +dSECONDS (since that
# commit) when the tree has uncommitted changes, so each later build upgrades an earlier one.
# LQX_DEB_VERSION=V sets the version instead. A clean tree whose version is already built is
# not built again.
#
# LQX_DEB_OUT=DIR writes the packages and their repository to DIR instead of .build-deb (the
# build tree, Swift's build folder and the signing key stay in .build-deb, so a second output
# costs a rebuild of the version only), e.g. a newer version for an upgrade test:
#   LQX_DEB_OUT=.build-deb-next LQX_DEB_VERSION="$(cat .build-deb/version)+up1" packaging/build-debs.sh
# (lintian warns on .deb names over 80 characters: a dirty tree's +dSECONDS plus a suffix is too long.)
#
# The repository (.build-deb/repo) keeps every version built, and is signed with a key made on
# the first run and kept in .build-deb/gnupg: apt then checks each later build's index against
# the key the machine installed, which `[trusted=yes]` would not. Use it with:
#
#   install -m 0644 .build-deb/repo/limiquantix-local.gpg /usr/share/keyrings/
#   echo "deb [signed-by=/usr/share/keyrings/limiquantix-local.gpg] file:$PWD/.build-deb/repo ./" \
#       > /etc/apt/sources.list.d/limiquantix.list
#   apt-get update && apt-get install limiquantix-agent
#
# Installs what it needs with apt (debhelper, help2man, lintian, apt-utils, gnupg, rsync and the
# -dev packages the build links). Swift itself comes from /opt/swift (SWIFT_BIN to change).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$root/.build-deb
out=${LQX_DEB_OUT:-$work}
case $out in /*) ;; *) out=$root/$out ;; esac
log() { echo "build-debs: $*" >&2; }

need=()
for pkg in debhelper dpkg-dev help2man lintian apt-utils gnupg rsync libvirt-dev libsqlite3-dev pkgconf; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi

# --- the version ---------------------------------------------------------------------------------
base=$(sed -n 's/^#define LQX_VERSION "\(.*\)"$/\1/p' "$root/Sources/CLQXVersion/version.c")
[ -n "$base" ] || { log "no LQX_VERSION in Sources/CLQXVersion/version.c"; exit 1; }
commit=$(git -C "$root" rev-parse --short=7 HEAD)
if [ -n "${LQX_DEB_VERSION:-}" ]; then
    version=$LQX_DEB_VERSION
else
    version="$base~git$(TZ=UTC git -C "$root" log -1 --date=format-local:%Y%m%d --format=%cd).$(git -C "$root" rev-list --count HEAD).$commit"
    if [ -n "$(git -C "$root" status --porcelain --untracked-files=normal -- . ':!.build*')" ]; then
        # Seconds since the commit: grows with each build of this commit, and is short (lintian
        # wants file names under 80 characters).
        version+="+d$(($(date +%s) - $(git -C "$root" log -1 --format=%ct)))"
    fi
fi
log "version $version"
if [ "$(cat "$out/version" 2>/dev/null)" = "$version" ] && [[ $version != *+d* ]] &&
    [ "$(ls "$out"/limiquantix-*_"$version"_*.deb 2>/dev/null | wc -l)" -eq 4 ] && [ -f "$out/repo/InRelease" ]; then
    log "up to date ($out, version $version)"
    cat "$out/sizes.md"
    exit 0
fi

# --- the source tree: this one (tracked and untracked files), debian/ from packaging/debian ----
src=$work/src/limiquantix
mkdir -p "$src"
# Same folder every run, mtimes kept: SwiftPM rebuilds only what changed (the version is one C file).
rsync -a --delete --exclude=/.git --exclude='/.build*' --exclude=/Package.resolved --exclude=/debian \
    "$root/" "$src/"
rsync -a --delete "$root/packaging/debian/" "$src/debian/"
{
    echo "limiquantix ($version) unstable; urgency=medium"
    echo
    echo "  * Built from commit $commit: $(git -C "$root" log -1 --format=%s | cut -c1-40)…"
    echo
    echo " -- limiquantix maintainers <maintainers@limiquantix.invalid>  $(date -R)"
} >"$src/debian/changelog"

# --- build ---------------------------------------------------------------------------------------
log "dpkg-buildpackage -b (release, static Swift runtime; the first build takes a while)"
rm -f "$work"/src/*.deb "$work"/src/*.changes "$work"/src/*.buildinfo
started=$(date +%s)
(cd "$src" && LQX_SWIFT_SCRATCH="$work/swift" LQX_BUILD_HOME="$HOME" dpkg-buildpackage -b -us -uc >&2)
log "built in $(($(date +%s) - started)) s"
mkdir -p "$out/repo/pool"
rm -f "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo
mv "$work"/src/*.deb "$work"/src/*.changes "$work"/src/*.buildinfo "$out/"
cp "$out"/*.deb "$out/repo/pool/"

# --- lintian: no errors, no warnings (what is accepted is overridden with a reason) -------------
changes=$(ls "$out"/*.changes)
log "lintian $changes"
lintian --fail-on error,warning --display-info --info "$changes" | tee "$out/lintian.txt" >&2

# --- the repository, signed --------------------------------------------------------------------
export GNUPGHOME=$work/gnupg
if [ ! -f "$GNUPGHOME/key-id" ]; then
    log "making the repository's signing key ($GNUPGHOME)"
    mkdir -p "$GNUPGHOME" && chmod 0700 "$GNUPGHOME"
    gpg --batch --passphrase '' --quick-generate-key "limiquantix local repository <maintainers@limiquantix.invalid>" \
        ed25519 sign never 2>/dev/null
    gpg --batch --list-keys --with-colons | awk -F: '/^fpr/{print $10; exit}' >"$GNUPGHOME/key-id"
fi
key=$(cat "$GNUPGHOME/key-id")
(
    cd "$out/repo"
    dpkg-scanpackages --multiversion pool /dev/null 2>/dev/null >Packages
    gzip -9nkf Packages
    apt-ftparchive -o APT::FTPArchive::Release::Origin=limiquantix -o APT::FTPArchive::Release::Label=limiquantix \
        -o APT::FTPArchive::Release::Suite=local -o APT::FTPArchive::Release::Codename=local release . >Release
    rm -f InRelease Release.gpg
    gpg --batch --yes --local-user "$key" --clearsign -o InRelease Release
    gpg --batch --yes --local-user "$key" --detach-sign -o Release.gpg Release
    gpg --batch --yes --export "$key" >limiquantix-local.gpg
)

# --- sizes ---------------------------------------------------------------------------------------
{
    echo "| package | version | .deb | installed |"
    echo "|---|---|---:|---:|"
    for deb in "$out"/*.deb; do
        name=$(dpkg-deb -f "$deb" Package)
        kib=$(dpkg-deb -f "$deb" Installed-Size)
        awk -v n="$name" -v v="$(dpkg-deb -f "$deb" Version)" -v b="$(stat -c %s "$deb")" -v k="$kib" \
            'BEGIN { printf "| %s | %s | %.1f MB | %.1f MB |\n", n, v, b / 1e6, k * 1024 / 1e6 }'
    done
} >"$out/sizes.md"
cat "$out/sizes.md"
agent=$(ls "$out"/limiquantix-agent_*.deb)
if [ "$(stat -c %s "$agent")" -gt 10000000 ]; then
    log "limiquantix-agent is $(stat -c %s "$agent") bytes: over the 10 MB the agent package may take"
    exit 1
fi
echo "$version" >"$out/version"
log "repository: $out/repo (key $key); see the top of this script for the apt source line"
