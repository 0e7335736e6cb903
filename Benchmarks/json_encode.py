#!/usr/bin/env python3
"""JSON encoding (issue 13): Foundation's JSONEncoder with the contract's options, the compact encoder through
Codable, and FleetJSON.encode (for these documents, their hand-written writers), on the documents the aggregator
writes most, alternately in rounds in one process: CPU time per document, and a check that all wrote the same bytes.

Usage: python3 Benchmarks/json_encode.py [--count 20000] [--rounds 5] [--write docs/benchmarks.md] [--skip-build]
"""
import argparse
import subprocess
import sys
import time

from benchlib import machine, release_binaries, write_section


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write")
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    (bench,) = release_binaries(args.skip_build, "edgefleet-bench")
    table = subprocess.run([bench, "json-encode", "--count", str(args.count), "--rounds", str(args.rounds)],
                           capture_output=True, text=True, check=True).stdout.strip()
    print(table)
    section = f"""<!-- json-encode:begin -->
## JSON encoding (issue 13)

`python3 Benchmarks/json_encode.py` on {machine()}, {time.strftime('%Y-%m-%d')}: {args.count:,} documents of each kind per
round, {args.rounds} rounds, the three encoders alternately in one process; the median round's CPU time per document.
Foundation's `JSONEncoder` is configured as the contract writes (sorted keys, slashes unescaped, RFC 3339 milliseconds);
"compact, through Codable" is `CompactJSON` driven by the type's `Encodable` conformance (what every other payload
goes through); `FleetJSON.encode` is what the services call, which for these types runs their hand-written
`JSONWritable` writer. The benchmark stops if any two disagree on a byte.

{table}
<!-- json-encode:end -->"""
    if args.write:
        write_section(args.write, "json-encode", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
