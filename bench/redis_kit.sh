#!/usr/bin/env bash
# A redis-server to carry to a machine that has none and cannot install one (the GPU kit: no network, no apt),
# for bench/cache_bench.py's redis variant (bench/gpu_suite.sh cache, REDIS_SERVER=DIR/redis-server).
#
#   bench/redis_kit.sh DIR     on a Debian 12 machine with redis-server installed (apt-get install redis-server)
#
# DIR gets Debian's redis-server binary, the shared libraries it needs that a host may lack (jemalloc, lzf,
# OpenSSL 3, libsystemd and its own), and a wrapper DIR/redis-server that runs it with them. The binary needs
# glibc 2.34 or newer on the host (Ubuntu 22.04 and later); the host's own glibc, libstdc++ and libgcc are used.
set -euo pipefail
target=${1:?usage: $0 DIR}
binary=$(readlink -f "$(command -v redis-server)")
mkdir -p "$target/lib"
cp "$binary" "$target/redis-server.bin"
ldd "$binary" | awk '/=> \//{print $3}' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.*|libm.so.*|libstdc++.so.*|libgcc_s.so.*|ld-linux*) ;;  # the host's: tied to its glibc
    *) cp -L "$lib" "$target/lib/" ;;
  esac
done
cat >"$target/redis-server" <<'EOF'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/redis-server.bin" "$@"
EOF
chmod +x "$target/redis-server"
"$target/redis-server" --version
du -sh "$target"
