#!/bin/sh
# Builds EdgeFleet's executables the way they ship: release, the Swift runtime and
# FoundationEssentials linked statically, linked by lld with compact relative
# relocations (RELR) and without exporting every symbol. Each choice is measured in
# docs/design-notes.md ("The agent's memory footprint"); together they take the
# agent from 26.9 MB to under 16 MB of peak RSS while keeping it position-independent.
#
# Usage: scripts/build-release.sh [product ...]   (default: every executable)
set -eu
cd "$(dirname "$0")/.."
flags="-c release --static-swift-stdlib -Xswiftc -use-ld=lld -Xlinker --no-export-dynamic -Xlinker -z -Xlinker pack-relative-relocs"
if [ "$#" -eq 0 ]; then
    # shellcheck disable=SC2086
    exec swift build $flags
fi
for product in "$@"; do
    # shellcheck disable=SC2086
    swift build $flags --product "$product"
done
