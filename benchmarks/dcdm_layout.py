"""Benchmark: the DCDM network on the CPU in PyTorch's default layout against channels-last.

    python benchmarks/dcdm_layout.py [--sizes-2d 32,64,128,256,512] [--sizes-3d 8,16,32,64] [--threads 1]
        [--repeats 9] [--out-md PATH] [--quick]

``DCDMNet.channels_last()`` stores the weights channels-last on the CPU, and ``DCDM`` and ``DCDMTrainer``
call it. This benchmark measures what that buys, in one process, with the same weights and inputs in
both layouts:

- inference: one forward pass of a single residual ``(1, 1, *grid)`` under ``torch.inference_mode``, the
  call DCDM makes once per iteration;
- a training step: forward and backward of a batch of 10 (the paper's batch size) through
  :func:`~neuralnumerics.linalg.dcdm.dcdm_loss` on the grid's Poisson operator.

Each figure is the median of ``--repeats`` timed calls after one untimed call; the two layouts' calls
alternate, because this machine's speed drifts by up to 2x within minutes. Both layouts must give the
same outputs (largest difference over largest value, at most 1e-5), else the row says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import torch  # noqa: E402

from _common import (REPO_ROOT, fmt_seconds, log, machine_header, markdown_table, pin_threads,  # noqa: E402
                     write_markdown)

TITLE = "DCDM network on the CPU: default layout against channels-last"
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "dcdm_layout.md"
QUICK_OUT = REPO_ROOT / "runs" / "bench" / "dcdm_layout_quick.md"


def measure(dim: int, n: int, repeats: int) -> list:
    """One table row: inference and training-step seconds in both layouts, their ratios, the check."""
    from neuralnumerics.linalg import PoissonGrid
    from neuralnumerics.linalg.dcdm import DCDMNet, dcdm_loss

    torch.manual_seed(0)
    plain = DCDMNet(dim)
    fast = DCDMNet(dim)
    fast.load_state_dict(plain.state_dict())
    fast.channels_last()
    op = PoissonGrid((n,) * dim, dtype=torch.float32)
    x1 = torch.randn(1, 1, *(n,) * dim)
    b = torch.randn(10, n ** dim)
    b = b / b.norm(dim=1, keepdim=True)

    def infer(net):
        with torch.inference_mode():
            return net(x1)

    def step(net):
        net.zero_grad(set_to_none=True)
        q = net(b.reshape(10, 1, *(n,) * dim)).reshape(10, -1)
        loss = dcdm_loss(op, b, q)
        loss.backward()
        return loss.detach()

    times: dict[tuple[str, str], list[float]] = {}
    outs = {}
    nets = (("default", plain), ("channels-last", fast))
    for kind, fn in (("infer", infer), ("step", step)):
        for name, net in nets:  # one untimed call each
            outs[name, kind] = fn(net)
        for _ in range(repeats):  # interleaved, so that a drift in the machine's speed hits both alike
            for name, net in nets:
                start = time.perf_counter()
                outs[name, kind] = fn(net)
                times.setdefault((name, kind), []).append(time.perf_counter() - start)
    times = {key: statistics.median(v) for key, v in times.items()}
    ref = outs["default", "infer"]
    diff = float((outs["channels-last", "infer"] - ref).abs().max() / ref.abs().max())
    diff = max(diff, abs(float(outs["channels-last", "step"] / outs["default", "step"]) - 1))
    ok = diff <= 1e-5
    return ["x".join([str(n)] * dim),
            fmt_seconds(times["default", "infer"]), fmt_seconds(times["channels-last", "infer"]),
            f"{times['default', 'infer'] / times['channels-last', 'infer']:.2f}x",
            fmt_seconds(times["default", "step"]), fmt_seconds(times["channels-last", "step"]),
            f"{times['default', 'step'] / times['channels-last', 'step']:.2f}x",
            f"{diff:.1e}" if ok else f"✗ {diff:.1e}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-2d", default="32,64,128,256,512", help="cells per side of the 2D grids")
    parser.add_argument("--sizes-3d", default="8,16,32,64", help="cells per side of the 3D grids")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per figure (the median is printed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="16x16 and 8^3, 2 repeats (seconds)")
    parser.add_argument("--out-md", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    threads = pin_threads(args.threads)
    if args.quick:
        args.sizes_2d, args.sizes_3d, args.repeats = "16", "8", 2
    rows = []
    for dim, sizes in ((2, args.sizes_2d), (3, args.sizes_3d)):
        for n in (int(s) for s in sizes.split(",") if s.strip()):
            log(f"{dim}D {n}")
            rows.append(measure(dim, n, args.repeats))
    extra = [f"Median of {args.repeats} timed calls after one untimed call, the two layouts alternating; same weights "
             "and inputs in both",
             "Inference: one residual (batch 1) under torch.inference_mode; training step: forward + backward of "
             "dcdm_loss on a batch of 10"]
    if args.quick:
        extra.append("This is a `--quick` run: tiny grids, for checking that the benchmark works")
    header = machine_header(TITLE, threads=threads, extra=extra)
    table = markdown_table(["grid", "inference, default", "inference, channels-last", "speed-up",
                            "training step, default", "training step, channels-last", "speed-up",
                            "output difference"], rows)
    text = header + "\n" + table
    print(text)
    out = args.out_md or (QUICK_OUT if args.quick else DEFAULT_OUT)
    write_markdown(out, text)
    log(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
