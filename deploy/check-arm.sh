#!/usr/bin/env bash
# Proof that the ARM build works: cross-compiles fieldgate for aarch64 (deploy/cross-build.sh),
# then runs the aarch64 binary under qemu user emulation:
#   - fieldgate --version
#   - fieldgate check -c FILE   for every config/*.toml and deploy/fieldgate.toml
#   - a short fieldgate bench    (SQLite queue + pipeline to a file; no broker needed)
# Exits non-zero if anything fails and prints a summary.
#
#   deploy/check-arm.sh                     # profile dist, as the packages ship
#   deploy/check-arm.sh --profile release   # another cargo profile
#   deploy/check-arm.sh --no-build          # use the binary already built
#   BENCH_READINGS=200000 deploy/check-arm.sh
#
# Needs what cross-build.sh needs, plus qemu-user (sudo apt install qemu-user).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu
profile=dist
build=1
readings=${BENCH_READINGS:-100000}

while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile=${2:?--profile needs a name}; shift ;;
        --profile=*) profile=${1#--profile=} ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "check-arm.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done

command -v qemu-aarch64 >/dev/null || { echo "check-arm.sh: qemu-aarch64 missing: sudo apt install qemu-user" >&2; exit 1; }
[ -d "$sysroot/lib" ] || { echo "check-arm.sh: $sysroot missing: sudo apt install libc6-dev-arm64-cross" >&2; exit 1; }

if [ $build = 1 ]; then
    "$here/cross-build.sh" --profile "$profile" aarch64 || { echo "check-arm.sh: FAIL: cross build" >&2; exit 1; }
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin="$target_dir/$target/$profile/fieldgate"
[ -x "$bin" ] || { echo "check-arm.sh: no binary at $bin (run without --no-build)" >&2; exit 1; }
if command -v file >/dev/null && ! file "$bin" | grep -q "ARM aarch64"; then
    echo "check-arm.sh: $bin is not an aarch64 binary" >&2; exit 1
fi

qemu=(qemu-aarch64 -L "$sysroot")
passed=()
failed=()
ok() { passed+=("$1"); echo "  ok    $1"; }
bad() { failed+=("$1"); echo "  FAIL  $1"; }

echo "==> $bin under ${qemu[*]}"

# --version
if out=$("${qemu[@]}" "$bin" --version 2>&1) && grep -q '^fieldgate ' <<<"$out"; then
    ok "--version: $out"
else
    bad "--version: $out"
fi

# check every example config. The examples read their secrets from the environment, as a site
# would (tests/cli.rs sets the same variables); relative paths (example-certs/) are resolved
# against the config file's directory, so the working directory does not matter.
export MQTT_PASSWORD=example HISTORIAN_TOKEN=example FLEET_API_TOKEN=example
export AZURE_IOT_DEVICE_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=
unset FIELDGATE_CONFIG RUST_LOG
cd "$root"
for cfg in config/*.toml deploy/fieldgate.toml; do
    if out=$("${qemu[@]}" "$bin" check -c "$cfg" 2>&1); then
        ok "check $cfg: $(tail -1 <<<"$out" | sed "s|^$cfg: ||")"
    else
        bad "check $cfg (exit $?):"
        sed 's/^/          /' <<<"$out"
    fi
done

# A short bench: the bare SQLite loop, the queue and the pipeline (simulator -> queue -> file),
# with durability "crash". No broker, no hardware.
bench_dir=$(mktemp -d "${TMPDIR:-/tmp}/fieldgate-arm-bench.XXXXXX")
trap 'rm -rf "$bench_dir"' EXIT
echo "==> fieldgate bench --readings $readings --durability crash (under qemu: figures are emulated, not a Pi's)"
start=$(date +%s)
if "${qemu[@]}" "$bin" bench --readings "$readings" --durability crash --dir "$bench_dir" \
        2> >(grep -v 'clock is not synchronized' >&2) | tee "$bench_dir/bench.txt"; then
    if grep -q 'pipeline sim' "$bench_dir/bench.txt"; then
        ok "bench ($readings readings, $(( $(date +%s) - start ))s)"
    else
        bad "bench: no pipeline figure in its output"
    fi
else
    bad "bench (exit status non-zero)"
fi

echo
echo "summary: ${#passed[@]} passed, ${#failed[@]} failed ($target, profile $profile)"
for f in "${failed[@]}"; do echo "  FAIL  $f"; done
[ ${#failed[@]} -eq 0 ]
