#!/bin/sh
# RUSTC_WORKSPACE_WRAPPER for scripts/fuzz.sh: adds libFuzzer's coverage instrumentation (SanitizerCoverage,
# stable rustc flags) to the inboxd crate only, so the dependencies (wasmtime, sqlx, ...) build
# as usual and the build stays cheap. Cargo calls it as `instrument.sh rustc <args>`.
rustc="$1"
shift
case " $* " in
*" --crate-name inboxd "*)
    exec "$rustc" "$@" \
        -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares
    ;;
esac
exec "$rustc" "$@"
