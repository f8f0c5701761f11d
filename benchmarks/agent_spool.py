"""The agent's disk spool: SQLite (WAL) against an append-only segment log, side by side.

    .venv/bin/python benchmarks/agent_spool.py [--results 50000] [--dir /var/tmp]

Measures what choosing the spool's storage decides, on the same realistic results (an
HTTPS result of ~300 bytes encoded, as `benchmarks/wire.py` builds them), in one process:

- **append**: microseconds of CPU and wall time per result, written in transactions of 1
  (one result per event-loop turn: a quiet agent) and of 20 (a busy agent's turn), with the
  durability each store offers: SQLite WAL `synchronous=NORMAL` (survives a process kill;
  a power cut may lose the last commits) and `FULL` (an fsync per commit), against a
  segment log of length+CRC framed records with `write` only and with `fdatasync`.
- **compact**: dropping acknowledged results, 500 at a time (a batch's ack).
- **recover**: opening the store after the writer is gone and reading every held result
  back (what a restart after `kill -9` costs at `--results` held).

The agent uses the SQLite store (agent/state.py): see the README of benchmarks for why.
Prints a table; the last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wire import https_result

_FRAME = struct.Struct("<IIQ")  # length, crc32, seq


class SqliteStore:
    """The shape of agent/state.py's store, reduced to what is measured."""

    def __init__(self, path: Path, sync: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={sync}")
        self.db.execute("CREATE TABLE IF NOT EXISTS results "
                        "(seq INTEGER PRIMARY KEY, data BLOB NOT NULL)")

    def append(self, rows: list[tuple[int, bytes]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO results VALUES (?, ?)", rows)
        self.db.execute("COMMIT")

    def compact(self, seq: int) -> None:
        self.db.execute("DELETE FROM results WHERE seq <= ?", (seq,))

    def recover(self) -> int:
        return sum(1 for _ in self.db.execute("SELECT seq, data FROM results ORDER BY seq"))

    def close(self) -> None:
        self.db.close()


class SegmentLog:
    """Length+CRC framed records in segments of `segment_bytes`; acks in a side file."""

    def __init__(self, folder: Path, *, fsync: bool, segment_bytes: int = 4 << 20) -> None:
        self.folder = folder
        folder.mkdir(exist_ok=True)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.segments: list[tuple[int, Path]] = []  # (first seq, path)
        self.file: Any = None
        self.size = 0

    def _roll(self, seq: int) -> None:
        if self.file is not None:
            self.file.close()
        path = self.folder / f"{seq:020d}.log"
        self.file = path.open("ab", buffering=0)
        self.segments.append((seq, path))
        self.size = 0

    def append(self, rows: list[tuple[int, bytes]]) -> None:
        if self.file is None or self.size >= self.segment_bytes:
            self._roll(rows[0][0])
        chunk = b"".join(_FRAME.pack(len(data), zlib.crc32(data), seq) + data
                         for seq, data in rows)
        self.file.write(chunk)
        self.size += len(chunk)
        if self.fsync:
            os.fdatasync(self.file.fileno())

    def compact(self, seq: int) -> None:
        ack = self.folder / "acked"
        ack.write_bytes(struct.pack("<Q", seq))
        # A segment is removed once the next one starts at or below the ack.
        while len(self.segments) > 1 and self.segments[1][0] <= seq + 1:
            self.segments.pop(0)[1].unlink()

    def recover(self) -> int:
        count = 0
        for path in sorted(self.folder.glob("*.log")):
            data = path.read_bytes()
            offset = 0
            while offset + _FRAME.size <= len(data):
                length, crc, _seq = _FRAME.unpack_from(data, offset)
                body = data[offset + _FRAME.size:offset + _FRAME.size + length]
                if len(body) < length or zlib.crc32(body) != crc:
                    break  # a torn tail: everything after it was never acknowledged
                count += 1
                offset += _FRAME.size + length
        return count

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def measure(make: Any, payloads: list[bytes], per_txn: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=ARGS.dir) as tmp:
        store = make(Path(tmp) / "spool")
        rows = list(enumerate(payloads, 1))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for start in range(0, len(rows), per_txn):
            store.append(rows[start:start + per_txn])
        cpu1, wall1 = time.process_time(), time.perf_counter()
        store.close()
        store = make(Path(tmp) / "spool")
        recover0 = time.perf_counter()
        recovered = store.recover()
        recover_s = time.perf_counter() - recover0
        compact0 = time.perf_counter()
        for seq in range(500, len(rows) + 1, 500):
            store.compact(seq)
        compact_s = time.perf_counter() - compact0
        store.close()
    count = len(rows)
    return {"append_cpu_us": (cpu1 - cpu0) / count * 1e6,
            "append_wall_us": (wall1 - wall0) / count * 1e6,
            "compact_us_per_ack": compact_s / max(1, count // 500) * 1e6,
            "recover_ms": recover_s * 1000, "recovered": recovered}


STORES = {
    "sqlite WAL sync=NORMAL": lambda p: SqliteStore(p.with_suffix(".sqlite"), "NORMAL"),
    "sqlite WAL sync=FULL": lambda p: SqliteStore(p.with_suffix(".sqlite"), "FULL"),
    "segment log, write": lambda p: SegmentLog(p, fsync=False),
    "segment log, fdatasync": lambda p: SegmentLog(p, fsync=True),
}


def main() -> None:
    payloads = [https_result(i % 500, interval_ms=10_000, seq=i + 1).SerializeToString()
                for i in range(ARGS.results)]
    size = sum(map(len, payloads)) / len(payloads)
    print(f"{ARGS.results} results of {size:.0f} bytes on average, in {ARGS.dir or '/tmp'}")
    header = (f"{'store':<26} {'txn':>4} {'cpu us/res':>11} {'wall us/res':>12} "
              f"{'compact us/ack':>15} {'recover ms':>11}")
    print(header)
    print("-" * len(header))
    figures: dict[str, Any] = {"results": ARGS.results, "bytes_per_result": round(size)}
    for name, make in STORES.items():
        for per_txn in (1, 20):
            count = ARGS.results if "sync" not in name or "NORMAL" in name else min(
                ARGS.results, ARGS.synced_results)
            row = measure(make, payloads[:count], per_txn)
            figures[f"{name} txn={per_txn}"] = {k: round(v, 2) for k, v in row.items()}
            print(f"{name:<26} {per_txn:>4} {row['append_cpu_us']:>11.1f} "
                  f"{row['append_wall_us']:>12.1f} {row['compact_us_per_ack']:>15.1f} "
                  f"{row['recover_ms']:>11.1f}" + (
                      f"  ({count} results)" if count != ARGS.results else ""))
    print(json.dumps(figures))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--results", type=int, default=50_000)
    parser.add_argument("--synced-results", type=int, default=3_000,
                        help="results for the stores that fsync every transaction")
    parser.add_argument("--dir", default=None, help="where the stores are written")
    return parser.parse_args()


if __name__ == "__main__":
    ARGS = _parse()
    main()
