#!/usr/bin/env bash
# Soak harness (issue #10): the real fieldgate binary, the simulator at 200 readings/s, a real
# Mosquitto, and faults for a while: the broker restarted every ~30 s, the gateway SIGKILLed and
# restarted every ~60 s, the network cut (through a proxy) for 1-2 minutes at a time. At the
# end a subscriber's record is compared with what the queue committed: lost must be 0, the
# order per device kept (fifo), duplicates counted. The test is tests/soak.rs; this script runs
# its long version (the short one, 60 s, runs with every `cargo test`). Figures:
# docs/reliability.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/soak.sh [--duration SECS] [--seed N] [--release] [--keep] [--summary FILE]

Runs the soak test (tests/soak.rs) against the real binary and a real Mosquitto, then prints
its summary.

  --duration SECS  how long the faults go on (default 600; at least 20). The schedule scales
                   with it: broker restart every SECS/20 s (15-30), gateway SIGKILL every
                   SECS/10 s (25-60), one network cut per 5 minutes of SECS/8-SECS/4 s (10-120).
                   Stopping, draining and comparing take seconds to a few minutes more.
  --seed N         replay the fault schedule of an earlier run (printed at its start)
  --release        build with the release profile (fat LTO: a long build on a small machine).
                   Default: the test profile (debug), which is what `cargo test` runs; the
                   load, 200 readings/s, is far below what either build sustains.
  --keep           keep the gateway's logs, queue and archive and Mosquitto's files (printed
                   path); they are kept anyway when the soak fails
  --summary FILE   also write the summary block to FILE
  -h, --help       this text

Needs cargo and mosquitto (/usr/sbin/mosquitto on Debian: apt install mosquitto).
Environment: CARGO_TARGET_DIR and the rest of cargo's are honoured.
EOF
}

duration=600
seed=""
keep=""
summary_file=""
profile=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) duration="${2:?--duration needs a value}"; shift 2 ;;
        --duration=*) duration="${1#*=}"; shift ;;
        --seed) seed="${2:?--seed needs a value}"; shift 2 ;;
        --seed=*) seed="${1#*=}"; shift ;;
        --release) profile=(--release); shift ;;
        --keep) keep=1; shift ;;
        --summary) summary_file="${2:?--summary needs a file}"; shift 2 ;;
        --summary=*) summary_file="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "soak.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$duration" =~ ^[0-9]+$ ]] || (( duration < 20 )); then
    echo "soak.sh: --duration must be a whole number of seconds, at least 20 (got '$duration')" >&2
    exit 2
fi
if [[ -n "$seed" ]] && ! [[ "$seed" =~ ^[0-9]+$ ]]; then
    echo "soak.sh: --seed must be a whole number (got '$seed')" >&2
    exit 2
fi
if ! command -v mosquitto >/dev/null && ! [[ -x /usr/sbin/mosquitto ]]; then
    echo "soak.sh: mosquitto not found; install it (apt install mosquitto)" >&2
    exit 1
fi

cd "$(dirname "$0")/.."
export FIELDGATE_SOAK_SECS="$duration"
if [[ -n "$seed" ]]; then export FIELDGATE_SOAK_SEED="$seed"; fi
if [[ -n "$keep" ]]; then export FIELDGATE_SOAK_KEEP=1; fi

log="$(mktemp -t fieldgate-soak.XXXXXX.log)"
echo "soak.sh: ${duration} s of faults, $( [[ ${#profile[@]} -gt 0 ]] && echo release || echo debug ) build; full output in $log"
status=0
cargo test -p fieldgate "${profile[@]}" --test soak -- --nocapture --test-threads=1 2>&1 | tee "$log" || status=$?

summary="$(sed -n '/^==== fieldgate soak summary ====/,/^result /p' "$log")"
echo
if [[ -n "$summary" ]]; then
    echo "$summary"
    if [[ -n "$summary_file" ]]; then printf '%s\n' "$summary" > "$summary_file"; fi
else
    echo "soak.sh: no summary (the soak stopped before comparing); see $log" >&2
fi
if (( status != 0 )); then
    echo "soak.sh: FAILED (exit $status); full output in $log" >&2
fi
exit "$status"
