#!/usr/bin/env python3
"""PyTorch (and CuPy) peers of the MMSB GPU kernels, timed with CUDA events.

Dense masked update: a bit-packed mask (one bit per byte, LSB first) is
unpacked on the device and applied with torch.where; sparse runs (the same
layouts as the Rust rows gpu_apply_sparse_<shape>) are applied with
index_put_. Bandwidth counts bytes read plus written, with the same byte
formulas as the Rust benchmarks, next to x.copy_(y) measured in the same run.
When CuPy is importable, the dense masked update runs there too, the two
ways a CuPy user would write it: cupy.unpackbits then cupy.copyto with
where=, and one ElementwiseKernel reading the packed bit of each byte;
same byte formula, ratio to the same torch copy.
Prints `PEER name gbps ratio` lines.
"""
import argparse
import sys


# (name, seed, min_len, len_span, max_gap): mirrors SPARSE_SHAPES in
# benches/src/gpu_harness.rs.
SPARSE_SHAPES = [
    ("mixed", 0x5EED0001, 16, 2048, 200),
    ("64b", 0x5EED0002, 64, 1, 32),
    ("256b", 0x5EED0003, 256, 1, 128),
    ("4k", 0x5EED0004, 4096, 1, 2048),
]

M64 = (1 << 64) - 1


def sparse_runs(n, seed, min_len, len_span, max_gap):
    """Run starts and lengths, drawn exactly like the Rust benchmark."""
    x = seed
    starts, lens = [], []
    at = 3
    while at < n:
        x ^= (x << 13) & M64
        x ^= x >> 7
        x ^= (x << 17) & M64
        ln = min(min_len + x % len_span, n - at)
        x ^= (x << 13) & M64
        x ^= x >> 7
        x ^= (x << 17) & M64
        starts.append(at)
        lens.append(ln)
        at += ln + 1 + x % max_gap
    return starts, lens


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        print(f"SKIPPED: torch not importable ({e})")
        return 0
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device for torch")
        return 0
    dev = torch.device("cuda")
    n = args.mib << 20
    g = torch.Generator(device=dev).manual_seed(1)
    page = torch.randint(0, 256, (n,), dtype=torch.uint8, device=dev, generator=g)
    data = torch.randint(0, 256, (n,), dtype=torch.uint8, device=dev, generator=g)
    packed = torch.randint(0, 256, (n // 8,), dtype=torch.uint8, device=dev, generator=g)
    shifts = torch.arange(8, dtype=torch.uint8, device=dev)

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / args.iters

    out = torch.empty_like(page)
    copy_s = timed(lambda: out.copy_(page))
    copy_gbps = 2 * n / copy_s / 1e9
    rows = [("torch_copy", 2 * n, copy_s)]

    def dense():
        mask = ((packed.unsqueeze(1) >> shifts) & 1).bool().reshape(-1)
        torch.where(mask, data, page, out=page)

    rows.append(("torch_dense_where_bitmask", 3 * n + n // 8, timed(dense)))
    boolmask = ((packed.unsqueeze(1) >> shifts) & 1).bool().reshape(-1)
    rows.append(("torch_dense_where_boolmask", 3 * n + n, timed(lambda: torch.where(boolmask, data, page, out=page))))

    # Sparse runs: the very layouts of the Rust benchmark (same xorshift64
    # generator and seeds as SPARSE_SHAPES in benches/src/gpu_harness.rs).
    # Bytes counted: 2 per covered byte (values read, page bytes written),
    # the formula of the Rust sparse rows; neither side counts its
    # metadata (index_put_ also reads an 8-byte index per byte, the Rust
    # kernel a 24-byte descriptor per run piece).
    for shape in SPARSE_SHAPES:
        starts, lens = sparse_runs(n, *shape[1:])
        starts_d = torch.tensor(starts, dtype=torch.int64, device=dev)
        lens_d = torch.tensor(lens, dtype=torch.int64, device=dev)
        covered = int(lens_d.sum())
        first = torch.cumsum(lens_d, 0) - lens_d
        idx = torch.repeat_interleave(starts_d - first, lens_d, output_size=covered) + torch.arange(
            covered, dtype=torch.int64, device=dev
        )
        vals = data[:covered].clone()
        rows.append((f"torch_sparse_{shape[0]}", 2 * covered, timed(lambda: page.index_put_((idx,), vals))))
        del idx, vals, starts_d, lens_d, first
        torch.cuda.empty_cache()

    rows.extend(cupy_rows(n, args.iters))

    name = torch.cuda.get_device_name(0)
    print(f"device: {name}")
    for r, b, s in rows:
        gbps = b / s / 1e9
        print(f"PEER {r} {gbps:.1f} {gbps / copy_gbps:.3f}")
    return 0


def cupy_rows(n, iters):
    """The dense masked update in CuPy: (name, bytes, seconds) rows."""
    try:
        import cupy as cp
    except Exception as e:  # noqa: BLE001
        print(f"SKIPPED: cupy not importable ({e})")
        return []
    rng = cp.random.default_rng(1)
    page = rng.integers(0, 256, n, dtype=cp.uint8)
    data = rng.integers(0, 256, n, dtype=cp.uint8)
    packed = rng.integers(0, 256, n // 8, dtype=cp.uint8)

    def timed(fn):
        fn()
        cp.cuda.Device().synchronize()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / 1e3 / iters

    def copyto():
        mask = cp.unpackbits(packed, bitorder="little").view(cp.bool_)
        cp.copyto(page, data, where=mask)

    kernel = cp.ElementwiseKernel(
        "raw uint8 packed, uint8 d",
        "uint8 p",
        "if ((packed[i >> 3] >> (i & 7)) & 1) p = d;",
        "mmsb_peer_masked_update",
    )
    return [
        ("cupy_dense_copyto_bitmask", 3 * n + n // 8, timed(copyto)),
        ("cupy_dense_elementwise_bitmask", 3 * n + n // 8, timed(lambda: kernel(packed, data, page))),
    ]


if __name__ == "__main__":
    sys.exit(main())
