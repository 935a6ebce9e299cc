#!/usr/bin/env bash
# Runs every test tier that exists: format lint, build without warnings, unit + loopback tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="/opt/swift/usr/bin:$PATH"
echo "== swift format lint"
swift format lint --strict --recursive Sources Tests Package.swift
echo "== build"
swift build --build-tests 2>&1 | tee /tmp/lqx-build.log
if grep -E "^/.*(warning|error):" /tmp/lqx-build.log | grep -v "/.build/" | grep -v "/Generated/"; then
    echo "build produced warnings" >&2
    exit 1
fi
./scripts/check-agent-deps.sh .build/debug
echo "== tests"
swift test --skip-build --parallel --num-workers 2
