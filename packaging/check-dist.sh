#!/usr/bin/env bash
# check-dist.sh VERSION DISTDIR: reads what dist.sh made with the tools that install it
# (`make check-dist`), for both architectures. Checksums, package metadata, the exact file lists
# with owners and modes, the packaged unit, the same binary in every artefact of an
# architecture, that binary's machine and version (the aarch64 one run by qemu-aarch64-static).
# lintian, when installed, is run and reported but does not fail the check.
set -euo pipefail

fail() { printf 'check-dist: FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf 'check-dist: ok: %s\n' "$*"; }
[ $# -eq 2 ] || fail "usage: $0 VERSION DISTDIR"
version=$1
dist=$2
repo=$(cd "$(dirname "$0")/.." && pwd)
pkg_version=${version//-/\~}
[ -d "$dist" ] || fail "no $dist: run make dist"
cd "$dist"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Compares a listing with the expected one, showing the difference when they differ.
same() {
    local what=$1 want=$2 got=$3
    if [ "$want" != "$got" ]; then
        diff -u <(printf '%s\n' "$want") <(printf '%s\n' "$got") >&2 || true
        fail "$what differs from what is expected (- expected, + found)"
    fi
}

# The documents dist.sh ships, as file names.
doc_names=$(cd "$repo" && printf '%s\n' README.md docs/*.md | sed 's|.*/||' | sort)

names_of() { # names_of ARCH DEBARCH
    printf '%s\n' "drover-$version-$1-linux" "drover-$version-$1-linux.tar.gz" \
        "drover_${pkg_version}_$2.deb" "drover-$pkg_version-1.$1.rpm"
}
sha256sum --quiet -c SHA256SUMS || fail "SHA256SUMS does not match"
same "SHA256SUMS names" "$({ names_of x86_64 amd64; names_of aarch64 arm64; } | sort)" \
    "$(awk '{ print $2 }' SHA256SUMS | sort)"
ok "SHA256SUMS covers the eight artefacts of both architectures and matches"

check_arch() { # check_arch ARCH DEBARCH MACHINE (as file(1) names it) RUNNER...
    local arch=$1 deb_arch=$2 machine=$3
    shift 3
    local name=drover-$version-$arch-linux
    local deb=drover_${pkg_version}_$deb_arch.deb
    local rpm=drover-$pkg_version-1.$arch.rpm
    local work=$work/$arch
    mkdir -p "$work"

    binary_sha=$(sha256sum <"$name" | cut -d' ' -f1)
    file -b "$name" | grep -q 'static-pie linked' || fail "$name is not a static binary: $(file -b "$name")"
    file -b "$name" | grep -q "$machine" || fail "$name is not for $machine: $(file -b "$name")"
    got_version=$("$@" ./"$name" --version)
    case $got_version in
        "drover $version (commit "?*")") ;;
        *) fail "$name --version says '$got_version', not 'drover $version (commit ...)'" ;;
    esac
    ok "$name: static, --version says $got_version"

    # The .deb.
    field() { dpkg-deb --field "$deb" "$1"; }
    [ "$(field Package)" = drover ] || fail "$deb: Package is '$(field Package)'"
    [ "$(field Version)" = "$pkg_version" ] || fail "$deb: Version is '$(field Version)', not $pkg_version"
    [ "$(field Architecture)" = "$deb_arch" ] || fail "$deb: Architecture is '$(field Architecture)'"
    dpkg-deb --info "$deb" >/dev/null
    same "$deb control files" "$(printf '%s\n' conffiles control md5sums postinst postrm prerm)" \
        "$(dpkg-deb --ctrl-tarfile "$deb" | tar t | sed -n 's|^\./\(..*\)|\1|p' | sort)"
    want_files=$(
        {
            printf '%s\n' ./etc/drover/config.toml.example ./lib/systemd/system/drover.service \
                ./usr/bin/drover ./usr/share/doc/drover/copyright
            printf './usr/share/doc/drover/%s\n' $doc_names
        } | sort
    )
    same "$deb files" "$want_files" \
        "$(dpkg-deb --contents "$deb" | awk '$1 !~ /^d/ { print $6 }' | sort)"
    owners=$(dpkg-deb --contents "$deb" | awk '{ print $2 }' | sort -u)
    [ "$owners" = root/root ] || fail "$deb: files not owned by root/root: $owners"
    [ "$(dpkg-deb --contents "$deb" | awk '$6 == "./usr/bin/drover" { print $1 }')" = -rwxr-xr-x ] \
        || fail "$deb: /usr/bin/drover is not 0755"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" ./usr/bin/drover ./lib/systemd/system/drover.service
    dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$work" ./postinst ./prerm ./postrm
    for script in postinst prerm postrm; do
        sh -n "$work/$script" || fail "$deb: $script is not valid sh"
    done
    [ "$(sha256sum <"$work/usr/bin/drover" | cut -d' ' -f1)" = "$binary_sha" ] \
        || fail "$deb: /usr/bin/drover is not $name"
    unit=$work/lib/systemd/system/drover.service
    grep -qx 'ExecStart=/usr/bin/drover run' "$unit" || fail "$deb: the unit does not run /usr/bin/drover"
    grep -qx 'ConditionPathExists=/etc/drover/config.toml' "$unit" \
        || fail "$deb: the unit has no ConditionPathExists=/etc/drover/config.toml"
    ok "$deb: drover $pkg_version $deb_arch, $(echo "$want_files" | wc -l) files as expected, root-owned, unit runs /usr/bin/drover once a config exists"

    # The .rpm.
    rpm -K --nosignature "$rpm" >/dev/null || fail "$rpm: digests do not match"
    query() { rpm -qp --queryformat "$1" "$rpm"; }
    [ "$(query '%{NAME} %{VERSION}-%{RELEASE} %{ARCH}')" = "drover $pkg_version-1 $arch" ] \
        || fail "$rpm: is '$(query '%{NAME} %{VERSION}-%{RELEASE} %{ARCH}')'"
    want_rpm=$(
        {
            printf '%s\n' /etc/drover /etc/drover/config.toml.example /usr/bin/drover \
                /usr/lib/systemd/system/drover.service /usr/share/doc/drover \
                /usr/share/doc/drover/copyright
            printf '/usr/share/doc/drover/%s\n' $doc_names
        } | sort
    )
    same "$rpm files (rpm -qlp)" "$want_rpm" "$(rpm -qlp "$rpm" | sort)"
    same "$rpm config files (rpm -qcp)" /etc/drover/config.toml.example "$(rpm -qcp "$rpm")"
    same "$rpm modes and owners" "$(printf '%s\n' '-rwxr-xr-x root root /usr/bin/drover' \
        '-rw-r--r-- root root /usr/lib/systemd/system/drover.service' | sort)" \
        "$(rpm -qp --queryformat '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]' "$rpm" \
            | grep -E ' (/usr/bin/drover|/usr/lib/systemd/system/drover.service)$' | sort)"
    rpm2archive - <"$rpm" | tar -xz -C "$work" ./usr/bin/drover ./usr/lib/systemd/system/drover.service
    [ "$(sha256sum <"$work/usr/bin/drover" | cut -d' ' -f1)" = "$binary_sha" ] \
        || fail "$rpm: /usr/bin/drover is not $name"
    cmp -s "$unit" "$work/usr/lib/systemd/system/drover.service" \
        || fail "$rpm and $deb install different units"
    for tag in POSTIN PREUN POSTUN; do
        body=$(query "%{$tag}")
        [ "$body" != "(none)" ] || fail "$rpm: no %{$tag} scriptlet"
        printf '%s\n' "$body" | sh -n || fail "$rpm: %{$tag} is not valid sh"
    done
    ok "$rpm: drover $pkg_version-1 $arch, $(echo "$want_rpm" | wc -l) paths as expected, same binary and unit as the .deb"

    # The tarball.
    want_tar=$(
        {
            printf "$name/%s\n" COPYRIGHT README.md config.toml.example drover drover.service
            printf "$name/docs/%s\n" $(printf '%s\n' $doc_names | grep -vx README.md)
        } | sort
    )
    same "$name.tar.gz files" "$want_tar" "$(tar -tzf "$name.tar.gz" | grep -v '/$' | sort)"
    tar -xzf "$name.tar.gz" -C "$work" "$name/drover"
    [ "$(sha256sum <"$work/$name/drover" | cut -d' ' -f1)" = "$binary_sha" ] \
        || fail "$name.tar.gz: drover is not $name"
    ok "$name.tar.gz: $(echo "$want_tar" | wc -l) files as expected, same binary"
}

check_arch x86_64 amd64 x86-64
check_arch aarch64 arm64 'ARM aarch64' qemu-aarch64-static
deb=drover_${pkg_version}_amd64.deb

if command -v lintian >/dev/null; then
    printf 'check-dist: lintian %s (reported, not enforced):\n' "$deb"
    lintian --tag-display-limit 0 "$deb" 2>&1 | grep -v '^running with root privileges' || true
else
    printf 'check-dist: no lintian (apt-get install lintian to see its report)\n'
fi
