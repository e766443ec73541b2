#!/usr/bin/env bash
# Checks a fieldgate .deb without a container:
#   1. dpkg-deb -c: the binary, the unit, the conffile, docs and examples are in it;
#   2. dpkg-deb -I: conffiles, maintainer scripts (user creation, systemd enable/start), Depends;
#   3. dpkg-deb -x: the unit is deploy/fieldgate.service, the binary runs (natively, or under
#      qemu-user for arm64/armhf) and `fieldgate check` passes on the installed config and on
#      every installed example;
#   4. dpkg --root: a real install into a throwaway root, then a purge. Maintainer scripts run
#      chrootless, so the commands that would touch this machine (adduser, getent, chown,
#      deb-systemd-helper, deb-systemd-invoke, systemctl) are stubs that record their calls;
#      the records are checked.
#
#   deploy/test-deb.sh                 # builds the amd64 .deb (cargo deb) and checks it
#   deploy/test-deb.sh FILE.deb        # checks this .deb (any architecture)
#
# Exits non-zero on any missing piece.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}

for tool in dpkg dpkg-deb; do
    command -v $tool >/dev/null || { echo "test-deb.sh: $tool missing (a Debian/Ubuntu host is needed)" >&2; exit 1; }
done

if [ $# -ge 1 ]; then
    deb=$(realpath "$1")
else
    cargo deb --version >/dev/null 2>&1 || { echo "test-deb.sh: cargo-deb missing: cargo install cargo-deb --locked" >&2; exit 1; }
    echo "==> cargo deb -p fieldgate --locked   (CARGO_TARGET_DIR=$target_dir)"
    export CARGO_TARGET_DIR=$target_dir
    deb=$(cd "$root" && cargo deb -p fieldgate --locked | tail -1) || { echo "test-deb.sh: cargo deb failed" >&2; exit 1; }
fi
[ -f "$deb" ] || { echo "test-deb.sh: no .deb at '$deb'" >&2; exit 1; }

passed=0
failed=()
ok() { passed=$((passed + 1)); echo "  ok    $1"; }
bad() { failed+=("$1"); echo "  FAIL  $1"; }
expect() { # expect DESCRIPTION COMMAND...: ok when the command succeeds
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}

work=$(mktemp -d "${TMPDIR:-/tmp}/fieldgate-deb-test.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "==> $deb ($(stat -c %s "$deb") bytes)"
arch=$(dpkg-deb -f "$deb" Architecture)
echo "    Package: $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) $arch"
echo "    Depends: $(dpkg-deb -f "$deb" Depends)"

# ---- 1. contents --------------------------------------------------------------------------------
echo "==> dpkg-deb -c"
dpkg-deb -c "$deb" | awk '{ print $1, $2, $NF }' >"$work/contents"
has() { grep -q " \./$1\$" "$work/contents"; }
unit_path=
for p in usr/lib/systemd/system/fieldgate.service lib/systemd/system/fieldgate.service; do
    has "$p" && unit_path=$p
done
expect "contains /usr/bin/fieldgate (mode -rwxr-xr-x)" grep -q '^-rwxr-xr-x .* \./usr/bin/fieldgate$' "$work/contents"
if [ -n "$unit_path" ]; then ok "contains /$unit_path"; else bad "contains the unit fieldgate.service"; fi
for p in etc/fieldgate/fieldgate.toml usr/share/doc/fieldgate/copyright \
         usr/share/doc/fieldgate/README.md usr/share/doc/fieldgate/ARCHITECTURE.md \
         usr/share/doc/fieldgate/examples/minimal.toml \
         usr/share/doc/fieldgate/examples/example-certs/ca.pem; do
    expect "contains /$p" has "$p"
done
n_examples=$(grep -c ' \./usr/share/doc/fieldgate/examples/[^/]*\.toml$' "$work/contents")
n_configs=$(ls "$root"/config/*.toml | wc -l)
if [ "$n_examples" -eq "$n_configs" ]; then ok "all $n_configs config/*.toml as examples"; else bad "examples: $n_examples of $n_configs config/*.toml"; fi

# ---- 2. control ---------------------------------------------------------------------------------
echo "==> dpkg-deb -I"
dpkg-deb -I "$deb" >"$work/info"
sed -n '/^ new Debian package/,/^ Package:/p' "$work/info" | sed 's/^/    /'
dpkg-deb -e "$deb" "$work/control"
expect "conffiles lists /etc/fieldgate/fieldgate.toml" grep -qx '/etc/fieldgate/fieldgate.toml' "$work/control/conffiles"
for s in postinst prerm postrm; do expect "maintainer script $s (executable)" test -x "$work/control/$s"; done
expect "postinst creates the system user" grep -q 'adduser --system --group --home /var/lib/fieldgate' "$work/control/postinst"
expect "postinst adds it to dialout" grep -q 'adduser --quiet fieldgate dialout' "$work/control/postinst"
expect "postinst enables fieldgate.service" grep -q 'deb-systemd-helper enable .*fieldgate.service' "$work/control/postinst"
expect "postinst starts it when systemd runs" grep -q 'deb-systemd-invoke .*fieldgate.service' "$work/control/postinst"
expect "prerm stops it" grep -q 'deb-systemd-invoke stop .*fieldgate.service' "$work/control/prerm"
expect "postrm purges state" grep -q 'rm -rf "${DPKG_ROOT:-}/var/lib/fieldgate"' "$work/control/postrm"
expect "Depends has adduser" sh -c "dpkg-deb -f '$deb' Depends | grep -q adduser"
expect "Depends has libc6" sh -c "dpkg-deb -f '$deb' Depends | grep -q libc6"
expect "Depends has no architecture qualifiers (libc6:arm64)" sh -c "! dpkg-deb -f '$deb' Depends | grep -q ':'"
for s in postinst prerm postrm; do expect "$s parses (sh -n)" sh -n "$work/control/$s"; done

# ---- 3. unpacked files ----------------------------------------------------------------------------
echo "==> dpkg-deb -x"
dpkg-deb -x "$deb" "$work/x"
if [ -n "$unit_path" ]; then
    expect "the unit is deploy/fieldgate.service" cmp "$work/x/$unit_path" "$here/fieldgate.service"
fi
expect "the config is deploy/fieldgate.toml" cmp "$work/x/etc/fieldgate/fieldgate.toml" "$here/fieldgate.toml"
bin="$work/x/usr/bin/fieldgate"
# Run the binary natively, or under qemu user emulation for arm64/armhf when it is installed.
run=()
case "$arch" in
    "$(dpkg --print-architecture)") run=() ;;
    arm64) command -v qemu-aarch64 >/dev/null && run=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
    armhf) command -v qemu-arm >/dev/null && run=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
esac
if [ "$arch" = "$(dpkg --print-architecture)" ] || [ ${#run[@]} -gt 0 ]; then
    [ ${#run[@]} -gt 0 ] && echo "    (running the $arch binary under ${run[*]})"
    if v=$("${run[@]}" "$bin" --version 2>&1); then ok "unpacked binary runs: $v"; else bad "unpacked binary runs: $v"; fi
    if out=$("${run[@]}" "$bin" check -c "$work/x/etc/fieldgate/fieldgate.toml" 2>&1); then
        ok "check /etc/fieldgate/fieldgate.toml: ${out##*: }"
    else
        bad "check /etc/fieldgate/fieldgate.toml: $out"
    fi
    # The examples as installed (their example-certs/ beside them); secrets from the
    # environment, as tests/cli.rs gives them.
    for cfg in "$work"/x/usr/share/doc/fieldgate/examples/*.toml; do
        if out=$(env MQTT_PASSWORD=example HISTORIAN_TOKEN=example FLEET_API_TOKEN=example \
                AZURE_IOT_DEVICE_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY= \
                "${run[@]}" "$bin" check -c "$cfg" 2>&1); then
            ok "check examples/$(basename "$cfg")"
        else
            bad "check examples/$(basename "$cfg"): $out"
        fi
    done
else
    echo "    ($arch binary on a $(dpkg --print-architecture) host without qemu-user: not run)"
fi

# ---- 4. dpkg --root install and purge -------------------------------------------------------------
echo "==> dpkg --root (throwaway root, chrootless maintainer scripts, stubbed system commands)"
r="$work/root"
mkdir -p "$r/var/lib/dpkg/info" "$r/var/lib/dpkg/updates" "$r/var/log" "$work/stubs"
: >"$r/var/lib/dpkg/status"
calls="$work/calls"
: >"$calls"
for cmd in adduser chown deb-systemd-helper deb-systemd-invoke systemctl; do
    printf '#!/bin/sh\necho "%s $*" >>"%s"\nexit 0\n' "$cmd" "$calls" >"$work/stubs/$cmd"
done
# getent: no user fieldgate yet; group dialout exists.
cat >"$work/stubs/getent" <<EOF
#!/bin/sh
echo "getent \$*" >>"$calls"
[ "\$1" = group ] && [ "\$2" = dialout ] && { echo "dialout:x:20:"; exit 0; }
exit 2
EOF
chmod +x "$work"/stubs/*
dpkg_root=(dpkg --root="$r" --log="$r/var/log/dpkg.log" --force-not-root --force-depends
           --force-script-chrootless --force-architecture)
if PATH="$work/stubs:$PATH" "${dpkg_root[@]}" -i "$deb" >"$work/install.log" 2>&1; then
    ok "dpkg --root -i"
else
    bad "dpkg --root -i:"; sed 's/^/          /' "$work/install.log"
fi
sed 's/^/    /' "$work/install.log" | grep -v '^    (Reading database' | head -20
expect "status: install ok installed" sh -c "dpkg --root='$r' -s fieldgate | grep -qx 'Status: install ok installed'"
expect "dpkg -s shows the conffile" sh -c "dpkg --root='$r' -s fieldgate | grep -q '^ /etc/fieldgate/fieldgate.toml [0-9a-f]'"
expect "installed /usr/bin/fieldgate" test -x "$r/usr/bin/fieldgate"
expect "installed /etc/fieldgate/fieldgate.toml" test -f "$r/etc/fieldgate/fieldgate.toml"
[ -n "$unit_path" ] && expect "installed /$unit_path" test -f "$r/$unit_path"
expect "postinst created /var/lib/fieldgate (in the root)" test -d "$r/var/lib/fieldgate"
expect "postinst: adduser --system --group --home /var/lib/fieldgate" grep -q '^adduser --system --group --home /var/lib/fieldgate --no-create-home fieldgate$' "$calls"
expect "postinst: adduser fieldgate dialout" grep -q '^adduser --quiet fieldgate dialout$' "$calls"
expect "postinst: chown fieldgate:fieldgate /var/lib/fieldgate" grep -q "^chown fieldgate:fieldgate $r/var/lib/fieldgate\$" "$calls"
expect "postinst: deb-systemd-helper enable fieldgate.service" grep -q '^deb-systemd-helper enable fieldgate.service$' "$calls"
echo "    maintainer script calls (install):"; sed 's/^/      /' "$calls"
: >"$calls"
if PATH="$work/stubs:$PATH" "${dpkg_root[@]}" --purge fieldgate >"$work/purge.log" 2>&1; then
    ok "dpkg --root --purge"
else
    bad "dpkg --root --purge:"; sed 's/^/          /' "$work/purge.log"
fi
expect "purge removed /usr/bin/fieldgate" test ! -e "$r/usr/bin/fieldgate"
expect "purge removed the conffile" test ! -e "$r/etc/fieldgate/fieldgate.toml"
expect "purge removed /var/lib/fieldgate" test ! -e "$r/var/lib/fieldgate"
echo "    maintainer script calls (purge):"; sed 's/^/      /' "$calls"

echo
echo "summary: $passed passed, ${#failed[@]} failed ($(basename "$deb"))"
for f in "${failed[@]}"; do echo "  FAIL  $f"; done
[ ${#failed[@]} -eq 0 ]
