#!/bin/sh
# Prepares this machine for drover's integration tests and demo: the host packages, a Python venv
# with moto (the AWS emulator) and a cached Debian root filesystem that the tests boot with
# systemd-nspawn (see /work/shared/TESTBED.md). Idempotent and quick when all is in place; run as
# root. Everything lives under $DROVER_TEST_CACHE (default /var/cache/drover-test), outside the
# checkout. Set DROVER_TEST_MIRROR to override the Debian mirror read from apt's configuration.
set -eu

CACHE=${DROVER_TEST_CACHE:-/var/cache/drover-test}
VENV="$CACHE/venv"
ROOTFS="$CACHE/rootfs"
# An arm64 tree for installing the arm64 .deb (tests/graviton.rs): not booted, so no cloud-init.
# Built only where qemu-aarch64 is registered with binfmt_misc (debootstrap's second stage runs
# its arm64 binaries).
ROOTFS_ARM64="$CACHE/rootfs-arm64"

# openssl, curl and wget: the tests of install-drover serve its download over https and lend the
# container the host's curl and wget (the test image has neither, as Debian's minimal images).
# minisign: tests/signing.rs makes keys and signatures with the reference tool, and checks
# `drover publish --sign` with it.
# cmake: flate2's zlib-ng backend builds zlib-ng with it.
# The aarch64 build (`make static ARCH=aarch64`) and its tests: Debian's cross toolchain and
# static glibc, and qemu-user to run the result (binfmt_misc, where the kernel lets us register it).
HOST_PACKAGES="systemd-container debootstrap cloud-init python3 python3-venv openssl curl wget minisign cmake
gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static binfmt-support zstd"
# The venv's packages, pinned: moto, and prometheus_client, whose text-format parser reads the
# metrics an instance writes (tests/metrics.rs). The venv's stamp is this text.
VENV_REQUIREMENTS='moto[server]==5.2.5 prometheus_client==0.26.0'

# The root filesystem recipe. Any change here makes the next run rebuild the rootfs, because the
# stamp written into it (ROOTFS_STAMP) is this text.
RECIPE_VERSION=1
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,cloud-init,python3,python3-cffi-backend,locales
INCLUDE_ARM64=systemd,systemd-sysv,dbus
ETC_HOSTS='127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback'
# The locale line matters: without it the first boot ends "degraded".
CLOUD_CFG='datasource_list: [ NoCloud, None ]
network: {config: disabled}
locale: C.UTF-8'
ROOTFS_STAMP=.drover-test-recipe

step() { printf 'setup: %-16s %s\n' "$1" "$2"; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# recipe ARCH INCLUDE
recipe() {
    r_arch=
    [ "$1" = native ] || r_arch="arch $1
"
    printf 'recipe %s\n%ssuite %s\ninclude %s\n--- /etc/hosts\n%s\n--- 99-test.cfg\n%s\n' \
        "$RECIPE_VERSION" "$r_arch" "$SUITE" "$2" "$ETC_HOSTS" "$CLOUD_CFG"
}

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

host_packages() {
    missing=
    for pkg in $HOST_PACKAGES; do
        is_installed "$pkg" || missing="$missing $pkg"
    done
    if [ -z "$missing" ]; then
        step "host packages" "ok"
        return
    fi
    step "host packages" "installing$missing"
    apt-get update -qq || fail "apt-get update failed"
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
        >/dev/null || fail "apt-get install$missing failed"
}

python_venv() {
    if [ "$(cat "$VENV/.drover-test-recipe" 2>/dev/null)" = "$VENV_REQUIREMENTS" ] \
        && [ -x "$VENV/bin/moto_server" ]; then
        step "moto venv" "ok ($VENV)"
        return
    fi
    started=$(date +%s)
    # A venv that works is brought up to the requirements where it is: a moto that tests of
    # another checkout run from it meanwhile keeps its files. Only a broken one is made anew.
    if "$VENV/bin/python3" -m pip --version >/dev/null 2>&1; then
        step "moto venv" "installing $VENV_REQUIREMENTS into $VENV"
    else
        step "moto venv" "creating $VENV with $VENV_REQUIREMENTS"
        rm -rf "$VENV"
        # The system interpreter, not whatever python3 comes first on PATH (pyenv shims, ...).
        /usr/bin/python3 -m venv "$VENV" || fail "python3 -m venv $VENV failed"
    fi
    # One word per requirement, and no globbing of moto[server].
    set -f
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $VENV_REQUIREMENTS \
        || fail "pip install $VENV_REQUIREMENTS failed"
    set +f
    [ -x "$VENV/bin/moto_server" ] || fail "$VENV/bin/moto_server missing after pip install"
    printf '%s\n' "$VENV_REQUIREMENTS" >"$VENV/.drover-test-recipe"
    step "moto venv" "done in $(($(date +%s) - started))s"
}

# The URI apt uses for Debian's main suite: a deb822 stanza in sources.list.d whose Suites name
# $SUITE, else a one-line entry in a .list file or sources.list.
debian_mirror() {
    if [ -n "${DROVER_TEST_MIRROR:-}" ]; then
        printf '%s\n' "$DROVER_TEST_MIRROR"
        return
    fi
    mirror=$(
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            awk -v suite="$SUITE" '
                function flush() {
                    if (deb && has_suite && enabled && uri != "") { print uri; found = 1; exit }
                    deb = 0; has_suite = 0; enabled = 1; uri = ""
                }
                BEGIN { enabled = 1 }
                /^[ \t]*$/ { flush(); next }
                /^[ \t]*#/ { next }
                tolower($1) == "types:"   { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
                tolower($1) == "suites:"  { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
                tolower($1) == "enabled:" { if (tolower($2) == "no") enabled = 0 }
                tolower($1) == "uris:"    { uri = $2 }
                END { if (!found) flush() }
            ' "$f"
        done | head -n 1
    )
    if [ -z "$mirror" ]; then
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -e 's/\[[^]]*\]//' \
            | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }')
    fi
    printf '%s\n' "${mirror:-http://deb.debian.org/debian}"
}

# (POSIX sh has no local variables: each function below names its own.)
# rootfs_complete DIR INCLUDE: true when DIR holds a finished debootstrap of $SUITE with every
# package of INCLUDE installed. debootstrap removes DIR/debootstrap only when it succeeds, so a
# half-made tree never passes.
rootfs_complete() {
    c_dir=$1
    c_include=$2
    [ -d "$c_dir/usr" ] && [ ! -e "$c_dir/debootstrap" ] || return 1
    case "$(cat "$c_dir/etc/debian_version" 2>/dev/null)" in 12.*) ;; *) return 1 ;; esac
    for pkg in $(printf '%s' "$c_include" | tr ',' ' '); do
        status=$(dpkg-query --admindir="$c_dir/var/lib/dpkg" -W -f='${Status}' "$pkg" 2>/dev/null) \
            || return 1
        [ "$status" = "install ok installed" ] || return 1
    done
}

# configure_rootfs DIR ARCH INCLUDE
configure_rootfs() {
    printf '%s\n' "$ETC_HOSTS" >"$1/etc/hosts"
    mkdir -p "$1/etc/cloud/cloud.cfg.d"
    printf '%s\n' "$CLOUD_CFG" >"$1/etc/cloud/cloud.cfg.d/99-test.cfg"
    recipe "$2" "$3" >"$1/$ROOTFS_STAMP"
}

# root_filesystem DIR ARCH INCLUDE: ARCH is `native` or a Debian architecture (arm64).
root_filesystem() {
    dir=$1
    arch=$2
    include=$3
    tmp="$dir-tmp"
    if [ -f "$dir/$ROOTFS_STAMP" ] && [ "$(cat "$dir/$ROOTFS_STAMP")" = "$(recipe "$arch" "$include")" ]; then
        step "rootfs" "ok ($dir)"
        return
    fi
    started=$(date +%s)
    if rootfs_complete "$tmp" "$include"; then
        step "rootfs" "adopting the finished debootstrap in $tmp"
    else
        mirror=$(debian_mirror)
        archopt=
        [ "$arch" = native ] || archopt="--arch=$arch"
        step "rootfs" "debootstrap $SUITE ${archopt:+($arch) }from $mirror into $tmp (about 2 minutes)"
        rm -rf "$tmp"
        log="$dir.debootstrap.log"
        # shellcheck disable=SC2086 # archopt is one word or none
        if ! debootstrap $archopt --variant=minbase --include="$include" "$SUITE" "$tmp" "$mirror" \
            >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            fail "debootstrap failed, full log in $log"
        fi
        rootfs_complete "$tmp" "$include" \
            || fail "debootstrap finished but $tmp lacks packages of $include"
    fi
    configure_rootfs "$tmp" "$arch" "$include"
    # Swap it in by renames, so that $dir is always either the old tree or the complete new one.
    if [ -e "$dir" ]; then
        rm -rf "$dir.old"
        mv "$dir" "$dir.old"
    fi
    mv "$tmp" "$dir"
    rm -rf "$dir.old"
    step "rootfs" "done in $(($(date +%s) - started))s ($dir)"
}

# rustup's aarch64 standard library, and qemu-aarch64 registered with binfmt_misc so that an
# aarch64 binary runs by itself, in a chroot or a container too (the F flag). Where the kernel
# does not allow registering, the tests that need it say so and skip.
aarch64() {
    if rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
        step "rust aarch64 target" "ok"
    else
        step "rust aarch64 target" "adding"
        rustup target add aarch64-unknown-linux-gnu >/dev/null \
            || fail "rustup target add aarch64-unknown-linux-gnu failed"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    fi
    if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        step "binfmt qemu-aarch64" "ok"
    elif update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 \
        && [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        step "binfmt qemu-aarch64" "registered"
    else
        step "binfmt qemu-aarch64" "not available here: the tests that need it will skip"
    fi
}

main() {
    [ "$(id -u)" = 0 ] || fail "run as root: the tests boot containers with systemd-nspawn"
    mkdir -p "$CACHE"
    # One set-up at a time: a second run waits instead of deleting a debootstrap in progress.
    exec 9>"$CACHE/.setup.lock"
    flock 9
    host_packages
    aarch64
    python_venv
    root_filesystem "$ROOTFS" native "$INCLUDE"
    if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        root_filesystem "$ROOTFS_ARM64" arm64 "$INCLUDE_ARM64"
    else
        step "rootfs arm64" "skipped: qemu-aarch64 is not registered (the arm64 .deb test will say so)"
    fi
    step "ready" "DROVER_TEST_CACHE=$CACHE"
}

main "$@"
