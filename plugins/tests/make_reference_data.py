"""Write the token-restore fixtures that the C++ ctest (token_restore_test) checks against.

Expected outputs come from the numpy reference `stagevar.runtime.lowrank.restore_tokens`.
Regenerate after changing the cases or the reference:

    python plugins/tests/make_reference_data.py            # writes plugins/tests/data/
    python plugins/tests/make_reference_data.py --out DIR

tests/plugins/test_plugin_reference_data.py regenerates into a tmp dir and compares, so the
committed fixtures cannot go stale silently.

File format (all little-endian), one `<name>.bin` per case, listed in `cases.txt`:
    8 bytes   magic b"SVTR0001"
    8 x int32 B, h, w, H, W, C, r, 0 (padding)
    float32   prev     (B, h*w, C)
    float32   rows     (B, r, C)
    int64     indices  (B, r)
    float32   expected (B, H*W, C)
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np

from stagevar.runtime.lowrank import representative_indices, restore_tokens

MAGIC = b"SVTR0001"
DEFAULT_OUT = Path(__file__).resolve().parent / "data"

# name, B, (h, w), (H, W), C, r ("M" = every position overwritten), seed
CASES = [
    ("up_1x1_to_2x2", 1, (1, 1), (2, 2), 3, 1, 1),
    ("nonsquare_3x5_to_7x9", 2, (3, 5), (7, 9), 5, 10, 2),
    ("nonsquare_30x60_to_37x74", 1, (30, 60), (37, 74), 4, 300, 3),
    ("square_32x32_to_40x40", 2, (32, 32), (40, 40), 8, 256, 4),
    ("infinity_12x12_to_16x16", 1, (12, 12), (16, 16), 16, 64, 5),
    ("full_r_eq_M_4x6_to_8x12", 2, (4, 6), (8, 12), 3, "M", 6),
    ("pure_upsample_r0_5x5_to_10x10", 1, (5, 5), (10, 10), 2, 0, 7),
    ("same_size_8x8", 1, (8, 8), (8, 8), 4, 16, 8),
    ("downsample_9x7_to_4x3", 2, (9, 7), (4, 3), 3, 5, 9),
]


def make_case(b: int, hw: tuple[int, int], cur: tuple[int, int], c: int, r, seed: int):
    """(prev, rows, indices, expected) of one case, deterministic in seed."""
    rng = np.random.default_rng(seed)
    m_prev = hw[0] * hw[1]
    m = cur[0] * cur[1]
    r = m if r == "M" else int(r)
    prev = rng.standard_normal((b, m_prev, c)).astype(np.float32)
    rows = rng.standard_normal((b, r, c)).astype(np.float32)
    if r == 0:
        indices = np.zeros((b, 0), dtype=np.int64)
    else:
        # Indices as the graph draws them: Gumbel top-r on the norms of some tokens.
        x = rng.standard_normal((b, m, c)).astype(np.float32)
        gumbel = rng.gumbel(size=(b, m)).astype(np.float32)
        indices = representative_indices(x, gumbel, r)
    expected = restore_tokens(prev, hw, cur, rows, indices).astype(np.float32)
    return prev, rows, indices, expected


def case_bytes(b, hw, cur, c, r, seed) -> bytes:
    prev, rows, indices, expected = make_case(b, hw, cur, c, r, seed)
    header = MAGIC + struct.pack("<8i", b, hw[0], hw[1], cur[0], cur[1], c, rows.shape[1], 0)
    return b"".join(
        [
            header,
            prev.astype("<f4").tobytes(),
            rows.astype("<f4").tobytes(),
            indices.astype("<i8").tobytes(),
            expected.astype("<f4").tobytes(),
        ]
    )


def read_case(path: Path) -> dict:
    """Parse one fixture file back into arrays (used by the pytest staleness check)."""
    data = Path(path).read_bytes()
    if data[:8] != MAGIC:
        raise ValueError(f"{path}: bad magic")
    b, h, w, hh, ww, c, r, _ = struct.unpack_from("<8i", data, 8)
    off = 8 + 32
    out = {"dims": (b, h, w, hh, ww, c, r)}
    for name, dtype, shape in (
        ("prev", "<f4", (b, h * w, c)),
        ("rows", "<f4", (b, r, c)),
        ("indices", "<i8", (b, r)),
        ("expected", "<f4", (b, hh * ww, c)),
    ):
        n = int(np.prod(shape))
        arr = np.frombuffer(data, dtype=dtype, count=n, offset=off).reshape(shape)
        off += arr.nbytes
        out[name] = arr
    if off != len(data):
        raise ValueError(f"{path}: {len(data) - off} trailing bytes")
    return out


def write_cases(out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, b, hw, cur, c, r, seed in CASES:
        path = out_dir / f"{name}.bin"
        path.write_bytes(case_bytes(b, hw, cur, c, r, seed))
        paths.append(path)
    (out_dir / "cases.txt").write_text("".join(f"{p.name}\n" for p in paths))
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    paths = write_cases(args.out)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} cases ({total} bytes) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
