#!/usr/bin/env python3
"""PyTorch peer of the MMSB GPU kernels, timed with CUDA events.

Dense masked update: a bit-packed mask (one bit per byte, LSB first) is
unpacked on the device and applied with torch.where; sparse runs are applied
with index_put_. Bandwidth counts bytes read plus written, with the same
byte formulas as the Rust benchmarks, next to x.copy_(y) measured in the same
run. Prints `PEER name gbps ratio` lines.
"""
import argparse
import sys


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

    # Sparse runs like the Rust benchmark: 16..2064 bytes, gaps 1..200.
    gen = torch.Generator().manual_seed(2)
    lens = torch.randint(16, 2064, (n // 1000 + 16,), generator=gen)
    gaps = torch.randint(1, 201, (lens.numel(),), generator=gen)
    starts = torch.cumsum(lens + gaps, 0) - (lens + gaps) + 3
    keep = (starts + lens) <= n
    starts, lens = starts[keep], lens[keep]
    idx = torch.repeat_interleave(starts, lens) + (
        torch.arange(int(lens.sum())) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    )
    idx = idx.to(dev)
    vals = data[: idx.numel()].clone()
    covered = idx.numel()
    rows.append(("torch_sparse_index_put", 2 * covered + 8 * covered, timed(lambda: page.index_put_((idx,), vals))))

    name = torch.cuda.get_device_name(0)
    print(f"device: {name}")
    for r, b, s in rows:
        gbps = b / s / 1e9
        print(f"PEER {r} {gbps:.1f} {gbps / copy_gbps:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
