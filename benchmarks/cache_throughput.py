"""Decode + cache throughput of `illustra scan` on a folder: cold (everything decoded) and warm (reused).

    python benchmarks/cache_throughput.py work/bench/training [--size 64] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time

from illustra.data.cache import CacheSpec
from illustra.data.index import IndexSettings, index_dataset


def main() -> None:
    """Print images/s for a cold and a warm index run, and peak memory."""
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--policy", default="letterbox")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    settings = IndexSettings(CacheSpec(args.size, args.policy), workers=args.workers)
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        cold = index_dataset(args.data, work, settings, progress=False)
        cold_total = time.perf_counter() - started
        started = time.perf_counter()
        warm = index_dataset(args.data, work, settings, progress=False)
        warm_total = time.perf_counter() - started
    files = len(cold.manifest)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"files: {files}, cache {args.size}px {args.policy}, workers {args.workers or os.cpu_count()}")
    print(f"cold: decode+cache {cold.images_per_second:.0f} images/s; whole scan {cold_total:.1f} s "
          f"({files / cold_total:.0f} files/s incl. scan, hashing, manifest write)")
    print(f"warm (nothing changed): {warm_total:.2f} s for {warm.reused} reused rows")
    print(f"peak RSS: main {peak_mb:.0f} MB, largest worker {child_mb:.0f} MB")


if __name__ == "__main__":
    main()
