#!/usr/bin/env bash
# dist.sh VERSION OUTDIR ARCH=BINARY...: drover's release artefacts from the static binaries
# (`make dist` runs it after `make static-all`, with x86_64=... aarch64=...). Writes into OUTDIR,
# replacing what was there, for each ARCH (x86_64, aarch64):
#   drover-VERSION-ARCH-linux             the bare binary (what cloud-init user-data pins)
#   drover-VERSION-ARCH-linux.tar.gz      binary, systemd/drover.service, example config, docs
#   drover_VERSION_DEBARCH.deb            dpkg-deb --build of a staged tree (amd64, arm64)
#   drover-VERSION-1.ARCH.rpm             rpmbuild of packaging/rpm/drover.spec
# and one SHA256SUMS over all of them.
# The packages install /usr/bin/drover and a unit generated from systemd/drover.service (see
# packaged_unit). Timestamps come from SOURCE_DATE_EPOCH, by default the last commit's time.
# Installs the `rpm` package (rpmbuild) with apt-get when it is missing and this runs as root.
set -euo pipefail
umask 022

fail() { printf 'dist: error: %s\n' "$*" >&2; exit 1; }
[ $# -ge 3 ] || fail "usage: $0 VERSION OUTDIR ARCH=BINARY..."
version=$1
out=$(realpath -m -- "$2")
shift 2
case $version in
    '' | *[!A-Za-z0-9.+-]*) fail "not a version: '$version'" ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
packaging=$repo/packaging
maintainer=${DIST_MAINTAINER:-drover maintainers <maintainers@users.noreply.b-seed-0bb35853.example>}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
# Debian and RPM sort "~" before anything, as Cargo sorts a pre-release ("1.0.0-rc.1") before
# its release; "-" would separate the revision in both.
pkg_version=${version//-/\~}

if ! command -v rpmbuild >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        printf 'dist: installing rpm (for rpmbuild)\n'
        apt-get update -qq || fail "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rpm \
            >/dev/null || fail "apt-get install rpm failed"
    else
        fail "no rpmbuild: install the rpm package (apt-get install rpm)"
    fi
fi

mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$out.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
new=$work/out
mkdir "$new"

# systemd/drover.service as the packages install it: the binary in /usr/bin, and inactive (not
# failed, not restarting) until the operator has written a config.
packaged_unit() {
    awk '
        NR == 1 {
            print "# Generated from drover'"'"'s systemd/drover.service for the packages: ExecStart= names"
            print "# /usr/bin/drover, and the agent waits for /etc/drover/config.toml."
        }
        /^ExecStart=\/usr\/local\/bin\/drover( |$)/ { sub("/usr/local/bin/drover", "/usr/bin/drover"); exec_lines++ }
        { print }
        /^\[Unit\]$/ {
            print "# A fresh install has no config; without one the agent could only fail and restart."
            print "ConditionPathExists=/etc/drover/config.toml"
            unit_sections++
        }
        END { if (exec_lines != 1 || unit_sections != 1) exit 1 }
    ' "$repo/systemd/drover.service" \
        || fail "systemd/drover.service: expected one [Unit] and one ExecStart=/usr/local/bin/drover"
}

# The documentation every artefact carries: README and the operator guide pages.
docs() {
    printf '%s\n' "$repo/README.md" "$repo"/docs/*.md
}

# One architecture's four artefacts, from its binary; their names go to $artefacts.
artefacts=()
build_arch() {
    local arch=$1 binary=$2 deb_arch name deb_name rpm_name stage tree root rpmtop installed_kib
    case $arch in
        x86_64) deb_arch=amd64 ;;
        aarch64) deb_arch=arm64 ;;
        *) fail "unknown architecture '$arch' (x86_64 or aarch64)" ;;
    esac
    [ -x "$binary" ] || fail "no $arch binary at $binary (make static ARCH=$arch)"
    name=drover-$version-$arch-linux
    deb_name=drover_${pkg_version}_$deb_arch.deb
    rpm_name=drover-$pkg_version-1.$arch.rpm
    mkdir -p "$work/$arch"
    stage=$work/$arch/stage
    mkdir -p "$stage/doc"
    install -m 0755 "$binary" "$stage/drover"
    packaged_unit >"$stage/drover.service"
    grep -q /usr/local/bin "$stage/drover.service" && fail "packaged unit still names /usr/local/bin"
    install -m 0644 "$packaging/config.toml.example" "$stage/config.toml.example"
    docs | xargs install -m 0644 -t "$stage/doc"
    install -m 0644 "$packaging/copyright" "$stage/doc/copyright"

    # The bare binary and the tarball: for installs without a package manager, with the repository's
    # unit as it is (ExecStart=/usr/local/bin/drover, as cloud-init installs it).
    install -m 0755 "$binary" "$new/$name"
    tree=$work/$arch/tar/$name
    mkdir -p "$tree/docs"
    install -m 0755 "$binary" "$tree/drover"
    install -m 0644 "$repo/systemd/drover.service" "$packaging/config.toml.example" "$repo/README.md" "$tree/"
    install -m 0644 "$packaging/copyright" "$tree/COPYRIGHT"
    install -m 0644 "$repo"/docs/*.md "$tree/docs/"
    tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
        -C "$work/$arch/tar" -cf - "$name" | gzip -9 -n >"$new/$name.tar.gz"

    # The .deb: a staged tree and DEBIAN/ control files, owned by root:root in the archive.
    root=$work/$arch/deb
    install -D -m 0755 "$stage/drover" "$root/usr/bin/drover"
    install -D -m 0644 "$stage/drover.service" "$root/lib/systemd/system/drover.service"
    install -D -m 0644 "$stage/config.toml.example" "$root/etc/drover/config.toml.example"
    mkdir -p "$root/usr/share/doc/drover"
    install -m 0644 "$stage"/doc/* "$root/usr/share/doc/drover/"
    mkdir -p "$root/DEBIAN"
    install -m 0755 "$packaging"/deb/postinst "$packaging"/deb/prerm "$packaging"/deb/postrm "$root/DEBIAN/"
    printf '/etc/drover/config.toml.example\n' >"$root/DEBIAN/conffiles"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
        >"$root/DEBIAN/md5sums"
    installed_kib=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    cat >"$root/DEBIAN/control" <<EOF
Package: drover
Version: $pkg_version
Architecture: $deb_arch
Maintainer: $maintainer
Installed-Size: $installed_kib
Section: admin
Priority: optional
Description: pull-based deployment agent for EC2
 drover polls an SSM parameter for the version to deploy, downloads that
 version's tarball from S3, verifies its SHA-256 while it streams in, unpacks
 it into its own release directory, switches a "current" symlink atomically,
 restarts the app's systemd units and checks its health, and switches back on
 its own when the new version is unhealthy.
 .
 The agent starts once /etc/drover/config.toml exists; see
 /etc/drover/config.toml.example.
EOF
    dpkg-deb --root-owner-group -Zxz --build "$root" "$new/$deb_name" >/dev/null

    # The .rpm, from the same staged files.
    rpmtop=$work/$arch/rpm
    rpmbuild --quiet -bb \
        --define "_topdir $rpmtop" \
        --define "drover_version $pkg_version" \
        --define "drover_stage $stage" \
        --target "$arch" \
        "$packaging/rpm/drover.spec" >"$work/$arch/rpmbuild.log" 2>&1 \
        || { cat "$work/$arch/rpmbuild.log" >&2; fail "rpmbuild failed"; }
    mv "$rpmtop/RPMS/$arch/$rpm_name" "$new/$rpm_name"
    artefacts+=("$name" "$name.tar.gz" "$deb_name" "$rpm_name")
}

for spec in "$@"; do
    case $spec in
        *=*) build_arch "${spec%%=*}" "$(realpath -m -- "${spec#*=}")" ;;
        *) fail "not ARCH=BINARY: '$spec'" ;;
    esac
done

(cd "$new" && sha256sum -- "${artefacts[@]}" >SHA256SUMS)

# Swap the new set in whole: OUTDIR never mixes two builds.
rm -rf "$out.old"
if [ -e "$out" ]; then mv "$out" "$out.old"; fi
mv "$new" "$out"
rm -rf "$out.old"

cd "$out"
for f in "${artefacts[@]}"; do
    stat -c '%s %n' -- "$f" | awk '{ printf "dist: %-40s %9d bytes (%.2f MiB)\n", $2, $1, $1 / 1048576 }'
done
printf 'dist: %s/SHA256SUMS\n' "$out"
