#!/usr/bin/env bash
# Runs the fuzz targets one after another and reports, per target, how long it ran, the
# executions, exec/s, the coverage reached and whether it crashed.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET[=SECONDS]...]
#
# SECONDS_PER_TARGET defaults to 300; the targets default to all of them (fuzz/Cargo.toml);
# TARGET=SECONDS gives one target its own time (`run.sh 600 config=1200 codec`).
# Each corpus/<target>/ is seeded from seeds/<target>/ first (existing corpus entries are
# kept, so runs build on each other). Builds every target first with `cargo fuzz build`
# (RUSTC_BOOTSTRAP=1 lets stable rustc take cargo-fuzz's -Z flags; AddressSanitizer, release
# with debug assertions), then runs the binaries one at a time, so no build time is counted.
#
# Environment: FUZZ_ARGS adds libFuzzer flags (e.g. "-rss_limit_mb=4096"); FUZZ_SANITIZER
# picks the sanitizer (default address; "none" builds faster and runs about twice as fast).
#
# Logs go to logs/<stamp>/<target>.log and the summary to logs/<stamp>/summary.md (logs/ is
# git-ignored). A crash leaves its input in artifacts/<target>/; reproduce it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/crash-...` and shrink it with
# `cargo fuzz tmin`. The exit status is 1 if any target crashed (or failed to run), else 0.

set -u -o pipefail

cd "$(dirname "$0")"

ALL_TARGETS=(lorawan_datagram lorawan_frame codec serial_frames modbus_response config)

secs=300
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=("${ALL_TARGETS[@]}")
fi
declare -A time_of
names=()
for arg in "${targets[@]}"; do
    t=${arg%%=*}
    if [[ ! -f fuzz_targets/$t.rs ]]; then
        echo "run.sh: no target $t (have: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
    if [[ $arg == *=* ]]; then
        time_of[$t]=${arg#*=}
        if [[ ! ${time_of[$t]} =~ ^[0-9]+$ ]]; then
            echo "run.sh: $arg: seconds must be a number" >&2
            exit 2
        fi
    else
        time_of[$t]=$secs
    fi
    names+=("$t")
done
targets=("${names[@]}")

export RUSTC_BOOTSTRAP=1
# The bundled SQLite (linked into `config` through the gateway) has two function-local
# static arrays named `aiOff`, which ASan's ODR check takes for one global defined twice.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}
sanitizer=${FUZZ_SANITIZER:-address}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
logdir=logs/$stamp
mkdir -p "$logdir"
summary=$logdir/summary.md

triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=target/$triple/release
echo "building ${targets[*]} (sanitizer: $sanitizer)..."
for t in "${targets[@]}"; do
    if ! cargo fuzz build --sanitizer "$sanitizer" "$t" >"$logdir/build-$t.log" 2>&1; then
        echo "run.sh: building $t failed; see $logdir/build-$t.log" >&2
        tail -20 "$logdir/build-$t.log" >&2
        exit 1
    fi
done

{
    echo "fuzz/run.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, sanitizer $sanitizer"
    echo "$(rustc --version), $(cargo fuzz --version)"
    echo
    echo "| target | duration | executions | exec/s | coverage at end (cov / features / corpus) | peak RSS | result |"
    echo "|---|---|---|---|---|---|---|"
} >"$summary"

failed=0
total=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    if [[ -d seeds/$t ]]; then
        cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    fi
    before=$(ls "artifacts/$t" | sort)
    log=$logdir/$t.log
    secs=${time_of[$t]}
    echo "== $t: ${secs} s, corpus $(ls "corpus/$t" | wc -l) inputs, log $log"
    start=$(date +%s)
    # The binary built above, run directly (what `cargo fuzz run` runs, with the same
    # artifact prefix): `cargo fuzz run` would rebuild first if a source changed meanwhile,
    # and the build would eat into the target's time.
    # -timeout: one input running longer than this is a hang, reported like a crash.
    # shellcheck disable=SC2086
    "$bin_dir/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" \
        -print_final_stats=1 -timeout=30 ${FUZZ_ARGS:-} "corpus/$t" >"$log" 2>&1
    rc=$?
    end=$(date +%s)
    after=$(ls "artifacts/$t" | sort)
    new=$(comm -13 <(echo "$before") <(echo "$after") | grep -v '^$' || true)

    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    # The last status line: "#N DONE cov: C ft: F corp: U/S ..." (or the last pulse/NEW line
    # when the run ended on a crash).
    status=$(grep -E '^#[0-9]+[[:space:]]+(DONE|NEW|REDUCE|pulse|INITED)' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
    corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$status")
    if [[ -z $execs ]]; then
        execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$status")
    fi

    if [[ -n $new ]]; then
        result="CRASH: $(echo "$new" | sed "s|^|artifacts/$t/|" | paste -sd ' ')"
        failed=1
    elif [[ $rc -ne 0 ]]; then
        result="FAILED (exit $rc, no artifact; see $log)"
        failed=1
    else
        result="no crash"
    fi
    dur=$((end - start))
    total=$((total + dur))
    printf '%s: %s s, %s executions, %s exec/s, cov %s ft %s corpus %s, peak RSS %s MB: %s\n' \
        "$t" "$dur" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$result"
    printf '| `%s` | %s s | %s | %s | %s / %s / %s inputs | %s MB | %s |\n' \
        "$t" "$dur" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$result" \
        >>"$summary"
done

echo >>"$summary"
echo "Total: $total s ($((total / 60)) min) of fuzzing, one target at a time." >>"$summary"
echo
cat "$summary"
exit "$failed"
