#!/bin/sh
# Runs every certgate fuzz target (or those named) for N seconds each.
#
#   fuzz/run.sh            # 60 s per target
#   FUZZ_SECONDS=600 fuzz/run.sh role_match normalize_path
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Each target starts from its seeds (fuzz/seeds/<target>, read-only) and grows
# its own corpus in fuzz/corpus/<target>; a crash is saved under
# fuzz/artifacts/<target>/ and stops the run with a non-zero exit. Keep a
# fixed crash input in fuzz/regressions/<target>/ so that
# `cargo test --manifest-path fuzz/Cargo.toml --lib` replays it on stable.
set -eu

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
targets="${*:-$(cargo +"$toolchain" fuzz list)}"

for target in $targets; do
    echo "== $target: ${seconds}s"
    mkdir -p "corpus/$target"
    cargo +"$toolchain" fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
