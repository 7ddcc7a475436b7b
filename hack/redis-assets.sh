#!/usr/bin/env bash
# Fetches Debian's redis-server for the tests (pkg/testing/redistest) without
# installing it on the system: `apt-get download` of redis-server, redis-tools
# and the shared libraries a base system lacks, unpacked with `dpkg -x` into a
# cache directory outside the repository, and prints the path of a wrapper
# that runs redis-server with LD_LIBRARY_PATH pointing at the unpacked
# libraries. A second run with this script unchanged does nothing (a few
# milliseconds); the unpacked tree replaces the old one atomically, and a lock
# serialises concurrent runs.
set -euo pipefail
DIR=${KVASIR_REDIS_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/kvasir/redis}
wrapper=$DIR/bin/redis-server
stamp=$(sha256sum "$0" | cut -c1-16)
if [[ -x $wrapper && $(cat "$DIR/.stamp" 2>/dev/null) == "$stamp" ]]; then
  echo "$wrapper"
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
  echo "redis-assets: needs apt-get and dpkg (Debian or Ubuntu); elsewhere install redis-server and put it on PATH" >&2
  exit 1
}
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9
# Another run may have finished while this one waited for the lock.
if [[ -x $wrapper && $(cat "$DIR/.stamp" 2>/dev/null) == "$stamp" ]]; then
  echo "$wrapper"
  exit 0
fi
echo "redis-assets: fetching Debian's redis-server into $DIR" >&2
tmp=$(mktemp -d "$DIR/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if ! apt-cache show redis-server >/dev/null 2>&1; then
  [[ $(id -u) == 0 ]] || { echo "redis-assets: apt knows no redis-server; run 'apt-get update' as root" >&2; exit 1; }
  apt-get update -qq >&2
fi
# download fetches packages by name into the working directory, as root or
# not; as root apt warns that it cannot drop privileges for the download.
fetch() { (cd "$tmp/debs" && apt-get download -qq "$@" 2>&1 | grep -v 'unsandboxed' >&2 || true); }
mkdir -p "$tmp/debs" "$tmp/root"
fetch redis-server redis-tools libjemalloc2 liblzf1
ls "$tmp"/debs/redis-tools_*.deb >/dev/null
for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp/root"; done
libs() { find "$1/root" -name '*.so*' -printf '%h\n' | sort -u | tr '\n' ':'; }
bin=$tmp/root/usr/bin/redis-check-rdb # redis-server is a symlink to it
# Libraries a slim system may lack too: fetch their packages only then.
missing=$(LD_LIBRARY_PATH=$(libs "$tmp") ldd "$bin" | awk '/not found/ { print $1 }')
if [[ -n $missing ]]; then
  pkgs=()
  for lib in $missing; do
    case $lib in
      libssl.so.3 | libcrypto.so.3) pkgs+=(libssl3) ;;
      libsystemd.so.0) pkgs+=(libsystemd0) ;;
      libatomic.so.1) pkgs+=(libatomic1) ;;
      libjemalloc.so.2) pkgs+=(libjemalloc2) ;;
      liblzf.so.1) pkgs+=(liblzf1) ;;
      *) echo "redis-assets: redis-server needs $lib, which this script does not know how to fetch" >&2; exit 1 ;;
    esac
  done
  fetch "${pkgs[@]}"
  for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp/root"; done
  missing=$(LD_LIBRARY_PATH=$(libs "$tmp") ldd "$bin" | awk '/not found/ { print $1 }')
  [[ -z $missing ]] || { echo "redis-assets: still missing: $missing" >&2; exit 1; }
fi
rm -rf "$tmp/debs"
mkdir -p "$tmp/bin"
# The wrappers find the tree relative to themselves, so the rename below
# keeps them valid. exec -a keeps argv[0] ending in redis-server: the binary
# picks its mode (server or checker) by that name.
for tool in redis-server redis-cli; do
  cat >"$tmp/bin/$tool" <<WRAP
#!/usr/bin/env bash
root=\$(cd "\$(dirname "\$0")/.." && pwd)
LD_LIBRARY_PATH="$(libs "$tmp" | sed "s|$tmp|\$root|g")\${LD_LIBRARY_PATH:-}" exec -a $tool "\$root/root/usr/bin/$tool" "\$@"
WRAP
  chmod +x "$tmp/bin/$tool"
done
"$tmp/bin/redis-server" --version >&2
echo "$stamp" >"$tmp/.stamp"
for part in root bin; do [[ -e $DIR/$part ]] && mv "$DIR/$part" "$DIR/.old-$part"; done
mv "$tmp/root" "$DIR/root"
mv "$tmp/bin" "$DIR/bin"
mv "$tmp/.stamp" "$DIR/.stamp"
rm -rf "$DIR/.old-root" "$DIR/.old-bin"
echo "$wrapper"
