#!/usr/bin/env bash
# Cross-builds the fieldgate binary for ARM Linux (Raspberry Pi and friends) with rustup targets
# and Debian's cross gcc — no container, no `cross`. The C parts of the tree (bundled SQLite in
# rusqlite, ring's C/asm) are compiled with the cross gcc, which also links.
#
#   deploy/cross-build.sh                          # aarch64 and armv7, profile dist
#   deploy/cross-build.sh aarch64                  # one target (aarch64 | armv7 | a full triple)
#   deploy/cross-build.sh --deb                    # also a .deb per target (needs cargo-deb)
#   deploy/cross-build.sh --profile release armv7  # another cargo profile
#
# The default profile is `dist` (root Cargo.toml: release with opt-level "s"), which the .debs
# use too: release (opt-level 3) makes an 11.6 MB aarch64 binary, dist an 8.4 MB one
# (docs/deploy.md has the sizes and the speed cost).
# Binaries land in $CARGO_TARGET_DIR (default: target/)/<triple>/<profile>/fieldgate and .debs in
# .../<triple>/debian/. The script prints the stripped size of each binary.
#
# Prerequisites (Debian/Ubuntu):
#   rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
#   sudo apt install gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
#                    gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
#   cargo install cargo-deb --locked        # only for --deb
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

profile=dist
make_deb=0
targets=()

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --deb) make_deb=1 ;;
        --profile) profile=${2:?--profile needs a name}; shift ;;
        --profile=*) profile=${1#--profile=} ;;
        -h|--help) usage; exit 0 ;;
        aarch64|arm64) targets+=(aarch64-unknown-linux-gnu) ;;
        armv7|armhf) targets+=(armv7-unknown-linux-gnueabihf) ;;
        *-*-*) targets+=("$1") ;;
        *) echo "cross-build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# The GNU triple of Debian's cross toolchain and the Debian package names, per Rust target.
gnu_triple() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
        x86_64-unknown-linux-gnu) echo x86_64-linux-gnu ;;
        *) echo "cross-build.sh: no cross toolchain mapping for '$1'" >&2; return 1 ;;
    esac
}
debian_arch() {
    case "$1" in
        aarch64-*) echo arm64 ;;
        armv7-*) echo armhf ;;
        x86_64-*) echo amd64 ;;
    esac
}

# --- prerequisites -------------------------------------------------------------------------------
missing=()
command -v cargo >/dev/null || missing+=("cargo (https://rustup.rs)")
command -v rustup >/dev/null || missing+=("rustup (https://rustup.rs)")
installed_targets=$(rustup target list --installed 2>/dev/null || true)
for t in "${targets[@]}"; do
    g=$(gnu_triple "$t")
    a=$(debian_arch "$t")
    grep -qx "$t" <<<"$installed_targets" || missing+=("rust target $t:  rustup target add $t")
    if [ "$t" != x86_64-unknown-linux-gnu ]; then
        command -v "$g-gcc" >/dev/null ||
            missing+=("$g-gcc:  sudo apt install gcc-$g libc6-dev-$a-cross")
        [ -d "/usr/$g/include" ] ||
            missing+=("/usr/$g (cross libc headers):  sudo apt install libc6-dev-$a-cross")
    fi
done
if [ $make_deb = 1 ]; then
    cargo deb --version >/dev/null 2>&1 || missing+=("cargo-deb:  cargo install cargo-deb --locked")
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "cross-build.sh: missing prerequisites:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
export CARGO_TARGET_DIR=$target_dir

# --- build ---------------------------------------------------------------------------------------
human() { awk -v b="$1" 'BEGIN { printf "%.2f MB (%.2f MiB)", b / 1e6, b / 1048576 }'; }
summary=()
cd "$root"
for t in "${targets[@]}"; do
    g=$(gnu_triple "$t")
    # Cargo's and the cc crate's per-target variables: the underscores form for cc, the
    # upper-case form for cargo's linker.
    tu=${t//-/_}
    TU=$(tr '[:lower:]' '[:upper:]' <<<"$tu")
    if [ "$t" != x86_64-unknown-linux-gnu ]; then
        export "CC_$tu=$g-gcc" "AR_$tu=$g-ar"
        export "CARGO_TARGET_${TU}_LINKER=$g-gcc"
    fi
    echo "==> cargo build -p fieldgate --profile $profile --target $t  (CARGO_TARGET_DIR=$target_dir)"
    start=$(date +%s)
    cargo build -p fieldgate --locked --profile "$profile" --target "$t"
    echo "    built in $(( $(date +%s) - start ))s"

    bin="$target_dir/$t/$profile/fieldgate"
    strip_tool="$g-strip"
    [ "$t" = x86_64-unknown-linux-gnu ] && ! command -v "$strip_tool" >/dev/null && strip_tool=strip
    # release and dist already strip (strip = true); strip a copy anyway so the figure is the
    # stripped size whatever the profile says.
    stripped="$bin.stripped"
    "$strip_tool" -o "$stripped" "$bin"
    size=$(stat -c %s "$stripped")
    echo "    $bin: $(stat -c %s "$bin") bytes as built; stripped $size bytes = $(human "$size")"
    summary+=("$t ($profile): stripped $size bytes = $(human "$size")")

    if [ $make_deb = 1 ]; then
        # --no-strip: cargo already stripped it (strip = true), and the host's strip cannot
        # read an ARM binary.
        echo "==> cargo deb -p fieldgate --target $t --profile $profile --no-build --no-strip"
        cargo deb -p fieldgate --target "$t" --profile "$profile" --no-build --no-strip
    fi
done

echo
echo "summary:"
printf '  %s\n' "${summary[@]}"
if [ $make_deb = 1 ]; then
    for t in "${targets[@]}"; do ls -l "$target_dir/$t/debian/"*.deb 2>/dev/null | sed 's/^/  /'; done
fi
