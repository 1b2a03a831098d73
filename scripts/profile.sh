#!/usr/bin/env bash
# Where inboxd's CPU goes under load: runs `inboxd-bench run` with the given options (none: the
# chat21 preset, SQLite history, the 3-plugin chain) and, for 10 s of its measuring window,
# samples the inboxd process with `perf record` and counts its system calls with `perf stat`.
#   scripts/profile.sh [--inboxd-bin BIN] [inboxd-bench run options]
# Writes target/bench/profile-<time>/: run.txt and the run's JSON, perf.data, by-dso.txt,
# by-symbol.txt, by-thread.txt, kernel-by-call.txt and syscalls.txt (with each count per delivered message).
# Needs release builds (scripts/bench.sh builds them) and perf (Debian's linux-perf).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v perf >/dev/null || { echo "profile: perf not found (apt-get install linux-perf)" >&2; exit 1; }
bin=target/release/inboxd
if [[ ${1:-} == --inboxd-bin ]]; then bin=$2; shift 2; fi
bin=$(realpath "$bin")
out=target/bench/profile-$(date +%s)
mkdir -p "$out"
seconds=10
calls=(fsync fdatasync pwrite64 write writev sendto recvfrom read futex epoll_wait sched_yield)

(($#)) || set -- --preset chat21 --store sqlite --plugins 3
target/release/inboxd-bench run --inboxd-bin "$bin" --warmup-s 3 --measure-s 15 --out "$out" "$@" >"$out/run.txt" 2>&1 &
bench=$!
trap 'kill $bench 2>/dev/null || true' EXIT

pid=""
for _ in $(seq 300); do
    pid=$(pgrep -n -f "^$bin run --config" || true)
    [[ -n $pid ]] && break
    sleep 0.1
done
[[ -n $pid ]] || { cat "$out/run.txt" >&2; echo "profile: inboxd did not start" >&2; exit 1; }
# The node and the clients start, then 3 s of warm-up: sample from well inside the window.
sleep 8
events=$(printf 'syscalls:sys_enter_%s,' "${calls[@]}")
perf stat -x, -e "${events%,}" -p "$pid" -o "$out/syscalls.raw" -- sleep "$seconds" &
perf record -q -g -F 999 -p "$pid" -o "$out/perf.data" -- sleep "$seconds" 2>/dev/null
wait %2 2>/dev/null || true
wait "$bench"
trap - EXIT

rate=$(python3 -c 'import json,glob,sys; r=json.load(open(sorted(glob.glob(sys.argv[1]+"/*.json"))[-1])); print(r["messages_per_s"])' "$out")
perf report -i "$out/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' >"$out/by-dso.txt"
perf report -i "$out/perf.data" --no-children --sort dso,symbol --percent-limit 0.5 --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' >"$out/by-symbol.txt"
perf report -i "$out/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' >"$out/by-thread.txt"
# Kernel time by system call (inclusive: the call and what it caused, scheduling included).
perf report -i "$out/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
    grep -E '\[k\] (__x64_sys_|asm_sysvec|asm_common_interrupt|ret_from_fork)' >"$out/kernel-by-call.txt"
python3 - "$out/syscalls.raw" "$rate" "$seconds" >"$out/syscalls.txt" <<'EOF'
import sys
raw, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
messages = rate * seconds
print(f"{messages:.0f} messages in {seconds:.0f} s ({rate:.0f} msg/s)")
print(f"{'call':<12} {'count':>10} {'per message':>12}")
for line in open(raw):
    fields = line.strip().split(",")
    if len(fields) < 3 or not fields[2].startswith("syscalls:"):
        continue
    count = int(fields[0]) if fields[0].isdigit() else 0
    call = fields[2].removeprefix("syscalls:sys_enter_")
    print(f"{call:<12} {count:>10} {count / messages:>12.2f}")
EOF
cat "$out/run.txt" "$out/syscalls.txt" "$out/by-dso.txt" "$out/kernel-by-call.txt"
head -40 "$out/by-symbol.txt"
echo "profile: $out" >&2
