#!/usr/bin/env bash
# Writes the seed inputs of each fuzz target into CORPUS/<target>/seed-*: a few valid parameter
# values, .sha256 lines and small release archives (GNU, ustar and pax tar; a symlink, a hard link,
# a long name), made here rather than committed as binary files. Existing seeds are kept.
# Usage: seeds.sh CORPUS
set -euo pipefail
corpus=$1
if ! command -v zstd >/dev/null; then
  echo "seeds.sh: needs zstd for the .tar.zst seeds (apt-get install zstd)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

seed() { # seed TARGET NAME: stdin becomes CORPUS/TARGET/seed-NAME unless it exists
  mkdir -p "$corpus/$1"
  local f="$corpus/$1/seed-$2"
  if [[ -e $f ]]; then cat >/dev/null; else cat >"$f"; fi
}

hex=$(printf 'drover' | sha256sum | cut -d' ' -f1)

printf '1.4.2' | seed parse_value bare
printf '  v2.0.0-rc.1+build.5\n' | seed parse_value bare-padded
printf '{"version": "1.4.2", "sha256": "%s"}' "$hex" | seed parse_value json
printf '{"version":"1.4.2","sha256":null,"wave":{"size":3}}' | seed parse_value json-extra
printf '{"version": "A_b"}' | seed parse_value json-no-digest
printf '{"version": "2.0", "rollout": {"duration": "30m"}}' | seed parse_value rollout-linear
printf '{"version": "2.0", "rollout": {"start": "2026-12-01T10:00:00Z", "waves": [{"fraction": 0.05, "after": "0s"}, {"fraction": 1, "after": "2h"}], "max_failures": 2}}' | seed parse_value rollout-waves

printf '%s  releases/1.4.2.tar.gz\n' "$hex" | seed parse_sha256sum text
printf '%s *1.4.2.tar.gz\n' "${hex^^}" | seed parse_sha256sum binary-upper
printf '%s\n' "$hex" | seed parse_sha256sum bare

# A small release: an executable, a config, an empty file, a directory, a symlink and a hard link,
# and a path over 100 bytes (a GNU long name or a pax header, depending on the format).
tree=$tmp/release
mkdir -p "$tree/bin" "$tree/etc" "$tree/share/$(printf 'd%.0s' {1..60})/$(printf 'e%.0s' {1..50})"
printf '#!/bin/sh\necho hello\n' >"$tree/bin/app"
chmod 755 "$tree/bin/app"
printf 'port = 8080\n' >"$tree/etc/app.conf"
: >"$tree/etc/empty"
ln -s bin/app "$tree/run"
ln -s ../etc/app.conf "$tree/bin/app.conf"
ln "$tree/etc/app.conf" "$tree/etc/hard.conf"
printf 'x\n' >"$tree/share/$(printf 'd%.0s' {1..60})/$(printf 'e%.0s' {1..50})/f"

tarball() { # tarball FORMAT [tar options...]: the release as a tar stream on stdout
  local format=$1
  shift
  tar -C "$tree" --format="$format" --sort=name --mtime=@1700000000 --owner=0 --group=0 \
    --numeric-owner --blocking-factor=1 "$@" -cf - .
}
for format in gnu ustar pax; do
  case $format in
    ustar) opts=(--exclude=./share) ;; # ustar cannot hold the long path
    pax) opts=(--pax-option=delete=atime,delete=ctime) ;; # only the long path's header
    *) opts=() ;;
  esac
  tarball "$format" "${opts[@]}" | seed unpack_tar "$format"
  tarball "$format" "${opts[@]}" | seed unpack_tarzst "$format"
  tarball "$format" "${opts[@]}" | gzip -n -9 | seed unpack_targz "$format"
  # The downloaded artifact may be zstd too (told by its magic bytes).
  tarball "$format" "${opts[@]}" | zstd -q -9 --check | seed unpack_targz "$format-zstd"
done
# One entry, no directories: the smallest accepted archive.
one_file() {
  tar -C "$tree/etc" --format=ustar --mtime=@1700000000 --owner=0 --group=0 --numeric-owner \
    --blocking-factor=1 -cf - app.conf
}
one_file | seed unpack_tar one-file
one_file | seed unpack_tarzst one-file
one_file | gzip -n -9 | seed unpack_targz one-file
one_file | zstd -q -9 --check | seed unpack_targz one-file-zstd
