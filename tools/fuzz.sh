#!/usr/bin/env bash
# Coverage-guided fuzzing of the readers of untrusted files (cargo-fuzz, libFuzzer).
#
# Usage: bash tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET  libFuzzer's -max_total_time for each target (default 60)
#   TARGET...           some of: npy safetensors posterior config scores png (default: all)
#
# Each target (fuzz/fuzz_targets/<target>.rs) starts from its seed corpus,
# tests/fixtures/fuzz/<target>/, which is copied into fuzz/corpus/<target>/; the new inputs
# libFuzzer finds interesting are written there too (fuzz/corpus is not committed). A crash
# leaves its input in fuzz/artifacts/<target>/ and the script goes on with the next target;
# it exits 1 if any target crashed. Once the reader is fixed, add the input to
# tests/fixtures/fuzz/<target>/ (tests/fuzz_readers.rs replays every file there).
#
# cargo-fuzz is installed if missing (`cargo install cargo-fuzz --locked`). It passes nightly-only
# flags (-Z, -Cpasses=sancov-module); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
# Builds use AddressSanitizer with debug assertions and overflow checks (cargo-fuzz's default);
# FUZZ_SANITIZER=none builds without it. Extra libFuzzer flags can be given in FUZZ_ARGS
# (e.g. FUZZ_ARGS="-jobs=2 -workers=2"). Runs at nice 10: the build takes a few minutes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

seconds=${1:-60}
shift || true
targets=(npy safetensors posterior config scores png)
if (($#)); then
    targets=("$@")
fi
sanitizer=${FUZZ_SANITIZER:-address}

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    nice -n 10 cargo install cargo-fuzz --locked
fi

nice -n 10 cargo fuzz build -s "$sanitizer"

failed=()
for t in "${targets[@]}"; do
    seeds="tests/fixtures/fuzz/$t"
    if [[ ! -d "$seeds" ]]; then
        echo "unknown target $t (no $seeds)" >&2
        exit 2
    fi
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    cp -n "$seeds"/* "fuzz/corpus/$t/" 2>/dev/null || true
    echo "== $t: ${seconds}s from $(ls "fuzz/corpus/$t" | wc -l) inputs"
    # Dictionaries, when present, help the text formats (fuzz/dict/<target>.dict).
    dict=()
    [[ -f "fuzz/dict/$t.dict" ]] && dict=("-dict=fuzz/dict/$t.dict")
    # shellcheck disable=SC2086
    if ! nice -n 10 cargo fuzz run -s "$sanitizer" "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 -timeout=20 \
        -print_final_stats=1 "${dict[@]}" ${FUZZ_ARGS:-}; then
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "no crash in: ${targets[*]}"
