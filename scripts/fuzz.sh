#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, with AddressSanitizer) of what a peer's bytes reach first:
# the frame decoder, the message bodies and a session's multiplexer (fuzz/FrameFuzz).
#
#   scripts/fuzz.sh [SECONDS]      (default 60; scripts/test.sh runs it for 60 s)
#
# The corpus grows in .build-fuzz/corpus; a crash is saved as .build-fuzz/crash-* and fails the run
# (replay it with `swift run lqx-fuzz-frames .build-fuzz/crash-…`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
seconds=${1:-60}
corpus=.build-fuzz/corpus
mkdir -p "$corpus"
swift build --product lqx-fuzz-frames
"$(swift build --show-bin-path)/lqx-fuzz-frames" --seeds "$corpus"
swift build -c release --product lqx-fuzz-frames --scratch-path .build-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DLQX_LIBFUZZER -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld \
    -Xcc -fsanitize=fuzzer-no-link,address
.build-fuzz/release/lqx-fuzz-frames -max_total_time="$seconds" -rss_limit_mb=1024 -print_final_stats=1 \
    -artifact_prefix=.build-fuzz/ "$corpus" 2>&1 | grep -Ev "^#[0-9]+\s+(NEW|REDUCE|pulse)" || exit "${PIPESTATUS[0]}"
