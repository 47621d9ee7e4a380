"""Benchmark: M-FAC (Frantar, Kurtic, Alistarh, NeurIPS 2021), neuralnumerics vs. the paper's code, Adam and SGD.

    python benchmarks/mfac.py [--quick] [--reference PATH] [--device cpu|cuda] [--threads N]
        [--ds D1,D2,..] [--ms M1,M2,..] [--repeats N] [--epochs N] [--seed S] [--out-md PATH]

Four parts, in one invocation (so ours and the reference run under the same machine load):

1. Speed and memory of the dynamic algorithm, for every ``d`` in ``--ds`` and ``m`` in ``--ms``: a
   product ``F^{-1} x`` with a full window (ours :meth:`SlidingMFAC.mv`, the reference's
   ``HInvFastUpMulti.mul``), adding a gradient and multiplying by it (``update_mv`` /
   ``update_mul``, the optimiser's core) and a whole optimiser step (our ``MFAC``, the reference's
   ``optim.MFAC``, ``torch.optim.Adam`` and ``torch.optim.SGD``). Both windows hold the same ``m``
   float32 gradients; the reference (``--reference``, a local checkout of github.com/IST-DASLab/M-FAC)
   is copied, patched for the CPU and imported by ``benchmarks/_mfac_reference.py`` (the patches are
   printed). Correctness first: each product's relative residual ``||F y - x|| / ||x||``, evaluated in
   float64, must be within ``100 eps kappa(F)`` before its time is shown.
2. Accuracy against dense float64 solves of ``(damp I + G^T G / m) y = v``, in float32 and float64,
   on Gaussian gradients and on real training gradients of the digits MLP, with small damping.
3. Training a small MLP (64-32-10) on scikit-learn's digits with M-FAC, SGD and Adam (and the
   reference's M-FAC optimiser with our settings, when given), learning rates tuned on a validation
   split; loss and test accuracy per epoch, and a plot next to the report (``mfac_digits.png``).
4. Pruning that MLP to 50/75/90/95% sparsity with :func:`mfac_prune` and :func:`magnitude_prune`,
   test accuracy before and after a short masked fine-tune.

Needs scikit-learn (``pip install -e .[bench]``); matplotlib for the plot (``pip install -e .[plot]``).

``--quick`` (a couple of minutes): d = 20000, m in {16, 64}, small accuracy cases, 2 epochs, two
sparsities; the report goes to a temporary file unless ``--out-md`` is given.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import (REPO_ROOT, fmt_bytes, fmt_error, fmt_seconds, log, machine_header, markdown_table,  # noqa: E402
                     median_time, pin_threads, resolve_device, write_markdown)

TITLE = "M-FAC: neuralnumerics vs. the reference implementation (IST-DASLab/M-FAC), Adam and SGD"
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "mfac.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "neuralnumerics-benchmarks" / "mfac.quick.md"
PLOT_NAME = "mfac_digits.png"
INSTALL_HINT = "pip install -e .[bench]"
DAMP = 1e-5  # the paper's code's default dampening, used for the speed grid
HIDDEN = 32  # the digits MLP: 64 -> 32 -> 10
BATCH = 32
MFAC_M = 32  # window of the M-FAC optimiser on digits


def require_sklearn():
    if importlib.util.find_spec("sklearn") is None:
        raise SystemExit("benchmarks/mfac.py trains on scikit-learn's digits dataset, but scikit-learn is not "
                         f"installed; install the benchmark extra: {INSTALL_HINT}")


def ratio(ours: float | None, theirs: float | None) -> str | None:
    if ours is None or theirs is None or not theirs > 0:
        return None
    return f"{ours / theirs:.2f}"


def pct(x: float | None) -> str | None:
    return None if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


# --------------------------------------------------------------------------- #
# memory held by an object (deduplicated by storage)
# --------------------------------------------------------------------------- #
def held_bytes(*tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def optimizer_state_tensors(opt) -> list:
    return [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]


def ours_bytes(opt) -> int:
    w = opt.window
    return held_bytes(w._grads, w._gram, w._inv, *optimizer_state_tensors(opt))


def ref_bytes(opt) -> int:
    h = opt.hinv
    extra = [getattr(opt, "v", None), getattr(opt, "mask", None)]
    return held_bytes(*h.grads, h.dots, h.giHig, h.coef, h.denom, *extra)


# --------------------------------------------------------------------------- #
# 1. speed
# --------------------------------------------------------------------------- #
def residual(G: torch.Tensor, damp: float, y: torch.Tensor, x: torch.Tensor) -> float:
    """``||(damp I + G^T G / m) y - x|| / ||x||`` in float64, chunked over the columns of ``G``."""
    m, d = G.shape
    step = max(1, (1 << 21) // m)
    y64, x64 = y.double(), x.double()
    Gy = torch.zeros(m, dtype=torch.float64, device=G.device)
    for s in range(0, d, step):
        Gy += G[:, s:s + step].double() @ y64[s:s + step]
    sq = 0.0
    for s in range(0, d, step):
        r = damp * y64[s:s + step] + G[:, s:s + step].double().T @ Gy / m - x64[s:s + step]
        sq += float(r @ r)
    return math.sqrt(sq) / float(x64.norm())


def kappa(gram: torch.Tensor, m: int, damp: float) -> float:
    """Condition number of ``F = damp I + G^T G / m`` from the Gram matrix ``G G^T`` (``d > m``)."""
    top = float(torch.linalg.eigvalsh(gram.double().cpu()).max()) / m
    return (top + damp) / damp


@dataclass
class Check:
    ok: bool
    text: str


def check(res: float, tol: float) -> Check:
    ok = math.isfinite(res) and res <= tol
    return Check(ok, f"{res:.1e}" + ("" if ok else " ✗"))


@dataclass
class SpeedCase:
    d: int
    m: int
    kappa: float = math.nan
    tol: float = math.nan
    checks: dict = field(default_factory=dict)  # name -> Check
    times: dict = field(default_factory=dict)  # name -> seconds
    spread: dict = field(default_factory=dict)  # name -> (min, max) over ring positions
    memory: dict = field(default_factory=dict)  # name -> bytes


def make_params(d: int, device, gen: torch.Generator) -> list[torch.Tensor]:
    """Three flat parameters of d weights in all, with fixed random gradients."""
    sizes = [d // 2, d // 4, d - d // 2 - d // 4]
    params = []
    for s in sizes:
        p = torch.zeros(s, device=device, requires_grad=True)
        p.grad = (torch.randn(s, generator=gen) / math.sqrt(d)).to(device)
        params.append(p)
    return params


def ring_positions(m: int, repeats: int) -> list[int]:
    return sorted({(j * m) // repeats for j in range(repeats)})


PER_POSITION = 3  # timed calls per ring position of the reference; its median is that position's cost
WARMUP = 2


def timed_at_positions(fn, hinv, positions, sync) -> list[float]:
    """The median time of ``PER_POSITION`` calls of ``fn()`` with the reference window's ring index set to each
    position (after ``WARMUP`` calls)."""
    for _ in range(WARMUP):
        hinv.last = positions[0]
        fn()
    out = []
    for pos in positions:
        ts = []
        for _ in range(PER_POSITION):
            hinv.last = pos
            if sync:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            ts.append(time.perf_counter() - t0)
        out.append(statistics.median(ts))
    return out


def speed_case(d: int, m: int, ref, device, repeats: int, gen: torch.Generator, sync) -> SpeedCase:
    from neuralnumerics.curvature import MFAC

    case = SpeedCase(d, m)
    G = (torch.randn(m, d, generator=gen) / math.sqrt(d)).to(device)
    pool = [(torch.randn(d, generator=gen) / math.sqrt(d)).to(device) for _ in range(3)]
    x = (torch.randn(d, generator=gen) / math.sqrt(d)).to(device)

    if ref is not None:  # the reference builds its window (and G G^T) from G; G is aliased, not copied
        hinv = ref.module.HInvFastUpMulti(G, dev=device, gpus=[device], damp=DAMP)
        gram = hinv.dots.double()
    else:
        hinv = None
        gram = torch.zeros(m, m, dtype=torch.float64, device=device)
        step = max(1, (1 << 22) // m)
        for s in range(0, d, step):
            gram += (G[:, s:s + step] @ G[:, s:s + step].T).double()
    case.kappa = kappa(gram, m, DAMP)
    case.tol = 100 * torch.finfo(torch.float32).eps * case.kappa
    params = make_params(d, device, gen)
    ours = MFAC(params, lr=1e-3, m=m, damp=DAMP)
    win = ours.window
    # the same window as the reference's; its Gram matrix is the reference's (float32 product, upcast): a
    # second O(d m^2) product would dominate the run at d = 1e6, m = 1024
    win.load_state_dict({"grads": G, "gram": gram, "num_updates": m})

    # correctness first: F^{-1} x, then replacing slot 0 by pool[0] and multiplying by it
    case.checks["ours mv"] = check(residual(win.grads, DAMP, win.mv(x), x), case.tol)
    if hinv is not None:
        case.checks["ref mv"] = check(residual(hinv.grads[0], DAMP, hinv.mul(x), x), case.tol)
        hinv.last = 0
        u_ref = hinv.update_mul(pool[0])
        case.checks["ref update"] = check(residual(hinv.grads[0], DAMP, u_ref, pool[0]), case.tol)
        del u_ref
    u = win.update_mv(pool[0])
    case.checks["ours update"] = check(residual(win.grads, DAMP, u, pool[0]), case.tol)
    del u

    def med(fn):
        t, _, _ = median_time(fn, repeats=PER_POSITION * repeats, warmup=WARMUP, sync=sync)
        return t

    # products with a fixed window
    if case.checks["ours mv"].ok:
        case.times["ours mv"] = med(lambda: win.mv(x))
    if hinv is not None and case.checks["ref mv"].ok:
        case.times["ref mv"] = med(lambda: hinv.mul(x))
    # add a gradient + product with it
    it = iter(range(10 ** 9))
    if case.checks["ours update"].ok:
        # once every m replacements the window rebuilds S^{-1} (O(m^3)) instead of updating it (O(m^2)): timed
        # on its own and spread over the m steps it serves, added to the medians below
        rebuild = med(win._rebuild_inverse) / m
        case.times["ours rebuild"] = rebuild * m
        win.gram_dtype = torch.float64  # the SlidingMFAC operator's default
        case.times["ours update"] = med(lambda: win.update_mv(pool[next(it) % 3])) + rebuild
        win.gram_dtype = torch.float32  # gram_dtype=None (Gram entries in float32): the MFAC optimiser's default
        case.times["ours update f32 Gram"] = med(lambda: win.update_mv(pool[next(it) % 3])) + rebuild
    positions = ring_positions(m, repeats)
    if hinv is not None and case.checks["ref update"].ok:
        ts = timed_at_positions(lambda: hinv.update_mul(pool[next(it) % 3]), hinv, positions, sync)
        case.times["ref update"] = statistics.fmean(ts)
        case.spread["ref update"] = (min(ts), max(ts))
    # optimiser steps (gradients fixed in p.grad)
    if case.checks["ours update"].ok:
        case.times["ours step"] = med(ours.step) + rebuild
    case.memory["ours"] = ours_bytes(ours)
    # after all the updates (and, for the reference, the jumps of its ring index) the windows still multiply right
    case.checks["ours after"] = check(residual(win.grads, DAMP, win.mv(x), x), case.tol)
    if hinv is not None:
        ref_opt = ref.module.MFAC(params, lr=1e-3, momentum=0, ngrads=1, damp=DAMP, moddev=device, optdev=device,
                                  gpus=[device])
        ref_opt.hinv = hinv  # the window built above (constructing one of m rows here would repeat the O(d m^2))
        if case.checks["ref update"].ok:
            ts = timed_at_positions(ref_opt.step, hinv, positions, sync)
            case.times["ref step"] = statistics.fmean(ts)
            case.spread["ref step"] = (min(ts), max(ts))
        case.memory["ref"] = ref_bytes(ref_opt)
        case.checks["ref after"] = check(residual(hinv.grads[0], DAMP, hinv.mul(x), x), case.tol)
    return case


def baseline_steps(d: int, device, repeats: int, gen: torch.Generator, sync) -> dict:
    out = {}
    for name, make in (("Adam", lambda p: torch.optim.Adam(p)),
                       ("SGD", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))):
        params = make_params(d, device, gen)
        opt = make(params)
        t, _, _ = median_time(opt.step, repeats=PER_POSITION * repeats, warmup=WARMUP, sync=sync)
        out[name] = (t, held_bytes(*optimizer_state_tensors(opt)))
        del opt, params
    return out


def speed_section(args, ref, device, sync) -> tuple[str, list[SpeedCase], dict]:
    gen = torch.Generator().manual_seed(args.seed)
    cases, baselines = [], {}
    t0 = time.perf_counter()
    for d in args.ds:
        baselines[d] = baseline_steps(d, device, args.repeats, gen, sync)
        for m in args.ms:
            log(f"  [{time.perf_counter() - t0:6.1f} s] speed d={d} m={m} ...")
            cases.append(speed_case(d, m, ref, device, args.repeats, gen, sync))
            gc.collect()  # the windows of the last case (up to 2 m d floats) go before the next is built
    have_ref = ref is not None
    out = []
    for d in args.ds:
        rows = []
        for c in (c for c in cases if c.d == d):
            def cell(name):
                if name in c.times:
                    return fmt_seconds(c.times[name])
                key = name.replace(" step", " update")
                chk = c.checks.get(key)
                return f"✗ residual {chk.text}" if chk is not None and not chk.ok else None

            row = [c.m, cell("ours mv")]
            if have_ref:
                row += [cell("ref mv"), ratio(c.times.get("ours mv"), c.times.get("ref mv"))]
            row += [cell("ours update"), cell("ours update f32 Gram")]
            if have_ref:
                row += [cell("ref update"), ratio(c.times.get("ours update"), c.times.get("ref update")),
                        ratio(c.times.get("ours update f32 Gram"), c.times.get("ref update"))]
            rows.append(row)
        head = ["m", "F⁻¹x ours"] + (["F⁻¹x ref", "ours/ref"] if have_ref else [])
        head += ["update+F⁻¹g ours", "ours, f32 Gram"]
        head += ["update+F⁻¹g ref", "ours/ref", "f32 Gram/ref"] if have_ref else []
        out.append(f"### d = {d:,}: products\n\n" + markdown_table(head, rows))

        rows = []
        adam_t, adam_b = baselines[d]["Adam"]
        sgd_t, sgd_b = baselines[d]["SGD"]
        for c in (c for c in cases if c.d == d):
            ours_t = c.times.get("ours step")
            row = [c.m, fmt_seconds(ours_t) if ours_t is not None else "✗"]
            if have_ref:
                ref_t = c.times.get("ref step")
                row += [fmt_seconds(ref_t) if ref_t is not None else "✗", ratio(ours_t, ref_t)]
            row += [ratio(ours_t, adam_t), ratio(ours_t, sgd_t)]
            rows.append(row)
        head = ["m", "MFAC.step ours"] + (["ref optim.MFAC.step", "ours/ref"] if have_ref else [])
        head += ["ours/Adam", "ours/SGD"]
        out.append(f"### d = {d:,}: optimiser steps (Adam {fmt_seconds(adam_t)}, SGD with momentum "
                   f"{fmt_seconds(sgd_t)} per step)\n\n" + markdown_table(head, rows))

    # memory and checks
    rows = []
    for c in cases:
        adam_b = baselines[c.d]["Adam"][1]
        sgd_b = baselines[c.d]["SGD"][1]
        row = [f"{c.d:,}", c.m, fmt_bytes(c.memory.get("ours"))]
        if have_ref:
            row += [fmt_bytes(c.memory.get("ref")), ratio(c.memory.get("ours"), c.memory.get("ref"))]
        row += [fmt_bytes(adam_b), fmt_bytes(sgd_b)]
        rows.append(row)
    head = ["d", "m", "ours state"] + (["ref state", "ours/ref"] if have_ref else []) + ["Adam state", "SGD state"]
    out.append("### Memory held by the optimiser (window, Gram matrix and S⁻¹, momentum)\n\n"
               + markdown_table(head, rows))
    rows = []
    for c in cases:
        row = [f"{c.d:,}", c.m, f"{c.kappa:.2g}", f"{c.tol:.1e}", c.checks["ours mv"].text, c.checks["ours update"].text,
               c.checks["ours after"].text]
        if have_ref:
            row += [c.checks["ref mv"].text, c.checks["ref update"].text, c.checks["ref after"].text]
        rows.append(row)
    head = ["d", "m", "κ(F)", "tolerance", "ours F⁻¹x", "ours update", "ours F⁻¹x after timing"]
    head += ["ref F⁻¹x", "ref update", "ref F⁻¹x after timing"] if have_ref else []
    out.append("### Correctness checks: relative residual ‖F y − v‖/‖v‖ in float64\n\n"
               "Before timing (F⁻¹x with the initial window; update+F⁻¹g replacing its oldest gradient), and F⁻¹x "
               "again after all the timed updates and steps (for the reference, after the jumps of its ring index). "
               "Tolerance 100 ε₃₂ κ(F); a product that fails is marked with a cross and not timed.\n\n" + markdown_table(head, rows))
    return "\n\n".join(out), cases, baselines


# --------------------------------------------------------------------------- #
# digits: data, model, training
# --------------------------------------------------------------------------- #
@dataclass
class Digits:
    xtr: torch.Tensor
    ytr: torch.Tensor
    xte: torch.Tensor
    yte: torch.Tensor


def load_digits_split(seed: int) -> tuple[Digits, Digits]:
    """(train/test, fit/validation): 75/25 stratified split, then 80/20 of the training part; features
    standardised with the training statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
    Xfit, Xval, yfit, yval = train_test_split(Xtr, ytr, test_size=0.2, stratify=ytr, random_state=seed + 1)

    def prep(a, b, fit):
        mu, sd = fit.mean(0), fit.std(0)
        sd[sd == 0] = 1
        t = lambda z: torch.tensor((z - mu) / sd, dtype=torch.float32)  # noqa: E731
        return t(a), t(b)

    a, b = prep(Xtr, Xte, Xtr)
    full = Digits(a, torch.tensor(ytr), b, torch.tensor(yte))
    a, b = prep(Xfit, Xval, Xfit)
    tune = Digits(a, torch.tensor(yfit), b, torch.tensor(yval))
    return full, tune


def make_mlp(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))


@torch.no_grad()
def evaluate(model, x, y) -> tuple[float, float]:
    out = model(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def loss_fn(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


@dataclass
class History:
    name: str
    lr: float
    train_loss: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    seconds: float = 0.0
    diverged: str | None = None


def train(model, opt, data: Digits, epochs: int, seed: int, name: str = "", lr: float = math.nan,
          masks=None) -> History:
    """Minibatch training (batch 32, reshuffled each epoch from ``seed``); evaluation after every epoch
    (epoch 0: before training) on the whole training set and on ``data.xte``."""
    from neuralnumerics.curvature import apply_masks

    hist = History(name, lr)
    gen = torch.Generator().manual_seed(seed)

    def record():
        tl, _ = evaluate(model, data.xtr, data.ytr)
        vl, va = evaluate(model, data.xte, data.yte)
        hist.train_loss.append(tl)
        hist.test_loss.append(vl)
        hist.test_acc.append(va)
        return math.isfinite(tl)

    record()
    n = len(data.ytr)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            idx = perm[s:s + BATCH]
            opt.zero_grad()
            loss = loss_fn(model, (data.xtr[idx], data.ytr[idx]))
            if not torch.isfinite(loss):
                hist.diverged = "non-finite loss"
                break
            loss.backward()
            try:
                opt.step()
            except ValueError as exc:  # our MFAC refuses non-finite gradients
                hist.diverged = str(exc).split(";")[0]
                break
            if masks is not None:
                apply_masks(model, masks)
        hist.seconds += time.perf_counter() - t0
        if hist.diverged or not record():
            hist.diverged = hist.diverged or "non-finite loss"
            break
    return hist


def optimizers(ref) -> dict:
    """name -> (factory(params, lr, **extra), lr grid, extra grid)."""
    from neuralnumerics.curvature import MFAC

    out = {
        "SGD": (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9), [0.003, 0.01, 0.03, 0.1, 0.3], [{}]),
        "Adam": (lambda p, lr: torch.optim.Adam(p, lr=lr), [3e-4, 1e-3, 3e-3, 1e-2, 3e-2], [{}]),
        "M-FAC (ours)": (lambda p, lr, damp: MFAC(p, lr=lr, m=MFAC_M, damp=damp),
                         [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3], [{"damp": 1e-4}, {"damp": 1e-3}, {"damp": 1e-2}]),
    }
    if ref is not None:
        def ref_mfac(p, lr, damp):
            return ref.module.MFAC(p, lr=lr, ngrads=MFAC_M, damp=damp, moddev=torch.device("cpu"),
                                   optdev=torch.device("cpu"), gpus=[torch.device("cpu")])
        out["M-FAC (reference)"] = (ref_mfac, None, None)  # run with our tuned settings, not tuned itself
    return out


def digits_section(args, ref, full: Digits, tune: Digits, out_dir: Path):
    quick = args.quick
    epochs = args.epochs
    opts = optimizers(ref)
    tuning_rows, chosen = [], {}
    t0 = time.perf_counter()
    for name, (make, lrs, extras) in opts.items():
        if lrs is None:
            continue
        if quick:
            lrs, extras = lrs[1:4:2], extras[1:2] if len(extras) > 1 else extras
        best = None
        for extra in extras:
            for lr in lrs:
                model = make_mlp(args.seed)
                h = train(model, make(model.parameters(), lr, **extra), tune, epochs, args.seed + 7)
                acc, loss = (h.test_acc[-1], h.test_loss[-1]) if not h.diverged else (-1.0, math.inf)
                key = (acc, -loss)
                if best is None or key > best[0]:
                    best = (key, lr, extra)
                setting = ", ".join([f"lr {lr:g}"] + [f"{k} {v:g}" for k, v in extra.items()])
                tuning_rows.append([name, setting, pct(acc) if acc >= 0 else f"diverged ({h.diverged})",
                                    f"{loss:.3g}" if math.isfinite(loss) else None])
        chosen[name] = (best[1], best[2])
        log(f"  [{time.perf_counter() - t0:6.1f} s] tuned {name}: lr {best[1]:g} {best[2]}")
    if "M-FAC (reference)" in opts:
        chosen["M-FAC (reference)"] = chosen["M-FAC (ours)"]

    runs = {}
    for name, (make, _, _) in opts.items():
        lr, extra = chosen[name]
        model = make_mlp(args.seed)
        runs[name] = (train(model, make(model.parameters(), lr, **extra), full, epochs, args.seed + 11, name, lr),
                      model, extra)
        log(f"  [{time.perf_counter() - t0:6.1f} s] trained {name}: test accuracy {runs[name][0].test_acc[-1]:.3f}")

    names = list(runs)
    rows = []
    for e in range(epochs + 1):
        row = [e]
        for n in names:
            h = runs[n][0]
            row += [f"{h.train_loss[e]:.4f}", pct(h.test_acc[e])] if e < len(h.test_acc) else [None, None]
        rows.append(row)
    head = ["epoch"] + [c for n in names for c in (f"{n} train loss", f"{n} test acc")]
    per_epoch = markdown_table(head, rows)
    summary_rows = []
    for n in names:
        h, _, extra = runs[n]
        setting = ", ".join([f"lr {h.lr:g}"] + [f"{k} {v:g}" for k, v in extra.items()])
        summary_rows.append([n, setting, f"{h.train_loss[-1]:.4f}", pct(h.test_acc[-1]), pct(max(h.test_acc)),
                             fmt_seconds(h.seconds / max(1, len(h.test_acc) - 1)), h.diverged])
    summary = markdown_table(["optimiser", "setting", "final train loss", "final test acc", "best test acc",
                              "seconds per epoch", "diverged"], summary_rows)
    tuning = markdown_table(["optimiser", "setting", "validation acc", "validation loss"], tuning_rows)
    plot = write_plot(runs, out_dir / PLOT_NAME)
    return {"runs": runs, "per_epoch": per_epoch, "summary": summary, "tuning": tuning, "plot": plot,
            "chosen": chosen}


def write_plot(runs: dict, path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install -e .[plot])")
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, (h, _, _) in runs.items():
        epochs = range(len(h.train_loss))
        a.semilogy(epochs, h.train_loss, marker=".", label=name)
        b.semilogy(epochs, [100 * (1 - v) for v in h.test_acc], marker=".", label=name)
    a.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title=f"digits MLP 64-{HIDDEN}-10: training loss")
    b.set(xlabel="epoch", ylabel="test error (%) = 100 - test accuracy", title="test error")
    for ax in (a, b):
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- #
# 2. accuracy against dense float64 solves
# --------------------------------------------------------------------------- #
def digits_gradients(full: Digits, count: int, seed: int) -> torch.Tensor:
    """``count`` consecutive minibatch gradients (rows, float64) of an SGD run on digits (lr 0.03,
    momentum 0.9, batch 32), the last ``count`` of a run of ``count`` steps from initialisation."""
    model = make_mlp(seed).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    gen = torch.Generator().manual_seed(seed + 3)
    x, y = full.xtr.double(), full.ytr
    rows = []
    while len(rows) < count:
        perm = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y) - BATCH + 1, BATCH):
            idx = perm[s:s + BATCH]
            opt.zero_grad()
            loss_fn(model, (x[idx], y[idx])).backward()
            rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
            opt.step()
            if len(rows) == count:
                break
    return torch.stack(rows)


def accuracy_section(args, ref, full: Digits, device):
    from neuralnumerics.curvature import SlidingMFAC

    ms = [16, 64] if args.quick else [16, 64, 256, 1024]
    rels = [1e-2, 1e-5]
    gen = torch.Generator().manual_seed(args.seed + 5)
    families = []
    for d_gauss in [500] if args.quick else [2000, 4000]:
        families.append((f"Gaussian, d = {d_gauss}",
                         torch.randn(max(ms) + 1, d_gauss, generator=gen, dtype=torch.float64) / math.sqrt(d_gauss)))
    dg = digits_gradients(full, max(ms) + 1, args.seed)
    families.append((f"digits MLP, d = {dg.shape[1]}", dg))
    impls = [("ours f64", torch.float64, "ours", torch.float64), ("ours f32", torch.float32, "ours", torch.float64),
             ("ours f32, f32 Gram", torch.float32, "ours", None)]
    if ref is not None:
        impls += [("ref f64", torch.float64, "ref", None), ("ref f32", torch.float32, "ref", None)]
    rows_mv, rows_up = [], []
    for fam, allg in families:
        for m in ms:
            # the window: the m gradients before the last; the new gradient: the last. Inputs rounded to float32
            # first, so that the float32 and float64 runs solve the same problem
            W = allg[-m - 1:-1].float().double()
            g_new = allg[-1].float().double()
            d = W.shape[1]
            x = torch.randn(d, generator=gen, dtype=torch.float64).float().double()
            scale = float(W.square().mean())
            W2 = torch.cat([g_new[None], W[1:]])
            for rel in rels:
                damp = rel * scale
                eye = torch.eye(d, dtype=torch.float64)
                y_star = torch.linalg.solve(damp * eye + W.T @ W / m, x)
                u_star = torch.linalg.solve(damp * eye + W2.T @ W2 / m, g_new)
                cond = float(torch.linalg.eigvalsh(W @ W.T).max()) / m / damp + 1
                row_mv = [fam, m, f"{rel:g} × {scale:.2g}", f"{cond:.1e}"]
                row_up = list(row_mv)
                for _, dtype, who, gram_dtype in impls:
                    Wt, xt, gt = W.to(device, dtype), x.to(device, dtype), g_new.to(device, dtype)
                    if who == "ours":
                        win = SlidingMFAC(d, m, damp, dtype=dtype, device=device, gram_dtype=gram_dtype)
                        for row in Wt:
                            win.update(row)
                        y = win.mv(xt)
                        u = win.update_mv(gt)
                    else:
                        h = ref.module.HInvFastUpMulti(Wt.clone(), dev=device, gpus=[device], damp=damp)
                        y = h.mul(xt)
                        u = h.update_mul(gt)
                    err = lambda a, b: float((a.double().cpu() - b).norm() / b.norm())  # noqa: E731
                    row_mv.append(fmt_error(err(y, y_star)))
                    row_up.append(fmt_error(err(u, u_star)))
                rows_mv.append(row_mv)
                rows_up.append(row_up)
            log(f"  accuracy {fam} m={m} done")
    head = ["gradients", "m", "damp (rel × mean g²)", "κ(F)"] + [n for n, *_ in impls]
    return markdown_table(head, rows_mv), markdown_table(head, rows_up), rows_mv, rows_up, impls


# --------------------------------------------------------------------------- #
# 4. pruning
# --------------------------------------------------------------------------- #
def pruning_section(args, dense, full: Digits, ft_lr: float):
    from neuralnumerics.curvature import magnitude_prune, mfac_prune

    sparsities = [0.5, 0.9] if args.quick else [0.5, 0.75, 0.9, 0.95]
    steps = 4 if args.quick else 16
    ft_epochs = 1 if args.quick else 2
    n_batches = 64
    bs = 16
    batches = [(full.xtr[i:i + bs], full.ytr[i:i + bs]) for i in range(0, n_batches * bs, bs)]
    _, dense_acc = evaluate(dense, full.xte, full.yte)
    selected = sum(p.numel() for p in dense.parameters() if p.ndim >= 2)
    rows, results = [], []
    for s in sparsities:
        res = {}
        for name in ("magnitude", "M-FAC"):
            model = copy.deepcopy(dense)
            model.eval()
            t0 = time.perf_counter()
            if name == "magnitude":
                masks = magnitude_prune(model, s)
            else:
                masks = mfac_prune(model, loss_fn, batches, s, m=n_batches, damp=DAMP, steps=steps)
            secs = time.perf_counter() - t0
            _, acc = evaluate(model, full.xte, full.yte)
            opt = torch.optim.SGD(model.parameters(), lr=ft_lr, momentum=0.9)
            h = train(model, opt, full, ft_epochs, args.seed + 13, masks=masks)
            kept = sum(int(mk.sum()) for mk in masks.values())
            res[name] = (acc, h.test_acc[-1], secs, kept)
        results.append((s, res))
        kept = res["M-FAC"][3]
        rows.append([f"{100 * s:g}%", f"{kept} of {selected}", pct(res["magnitude"][0]), pct(res["M-FAC"][0]),
                     pct(res["magnitude"][1]), pct(res["M-FAC"][1]), fmt_seconds(res["M-FAC"][2])])
        log(f"  pruned to {s:g}: magnitude {res['magnitude'][0]:.3f}, M-FAC {res['M-FAC'][0]:.3f}")
    table = markdown_table(["sparsity", "weights kept", "magnitude", "M-FAC", f"magnitude + {ft_epochs} ep. FT",
                            f"M-FAC + {ft_epochs} ep. FT", "M-FAC pruning time"], rows)
    setup = (f"Dense model: the Adam-trained MLP of part 3 (test accuracy {pct(dense_acc)}); {selected} weights "
             f"selected (the two weight matrices, biases left alone), sparsity global. `mfac_prune(model, loss_fn, "
             f"batches, s, m={n_batches}, damp={DAMP:g}, steps={steps})`: {n_batches} gradients per step, each of a "
             f"batch of {bs} training samples (the first {n_batches * bs}), full (unblocked) Fisher, {steps} "
             f"recomputation steps (the paper's code's defaults: damp 1e-5, 16 steps; not tuned). `magnitude_prune(model, "
             f"s)`: global smallest |w|. Each sparsity is pruned from the dense model. Fine-tune (FT): {ft_epochs} "
             f"epoch(s) of SGD (lr {ft_lr:g}, momentum 0.9, batch {BATCH}) on the training set with `apply_masks` "
             "after each step.")
    return table, setup, results, dense_acc


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #
def summary_lines(cases, have_ref, rows_mv, rows_up, impls, digits, prune_results, dense_acc) -> list[str]:
    out = []
    if have_ref and cases:
        def rng(keys, pred):
            vals = [c.times[keys[0]] / c.times[keys[1]] for c in cases
                    if pred(c.m) and keys[0] in c.times and keys[1] in c.times]
            return f"{min(vals):.2f}–{max(vals):.2f}" if vals else "—"

        step, upd = ("ours step", "ref step"), ("ours update", "ref update")
        upd32 = ("ours update f32 Gram", "ref update")
        small, large = (lambda m: m <= 64), (lambda m: m >= 256)
        out.append("- **Speed** (time ours / time reference, table below; below 1: ours faster). The issue's goal: at "
                   "least as fast as the reference for m ≤ 64, clearly faster for large m. Optimiser step: "
                   f"{rng(step, small)} for m ≤ 64, {rng(step, large)} for m ≥ 256 (float32 Gram entries, the "
                   "optimiser's default); update + F⁻¹g with float64 Gram entries (the operator's default): "
                   f"{rng(upd, small)} for m ≤ 64, {rng(upd, large)} for m ≥ 256; with float32 ones: "
                   f"{rng(upd32, small)} for m ≤ 64, {rng(upd32, large)} for m ≥ 256; F⁻¹x alone: "
                   f"{rng(('ours mv', 'ref mv'), lambda m: True)} (all d and m).")
    elif cases:
        out.append("- **Speed**: no `--reference` given, so there are no ratios against the reference.")
    if rows_mv:
        names = [n for n, *_ in impls]

        def worst(rows, name, fam_prefix=None):
            col = 4 + names.index(name)
            vals = [float(r[col]) for r in rows if r[col] is not None and (fam_prefix is None or r[0].startswith(fam_prefix))]
            return math.nan if not vals or not all(map(math.isfinite, vals)) else max(vals)

        parts = []
        for name in names:
            parts.append(f"{name} F⁻¹x {worst(rows_mv, name):.1e}, update {worst(rows_up, name):.1e}")
        out.append("- **Accuracy** (largest relative error against the dense float64 solve over all cases of part 2): "
                   + "; ".join(parts) + ".")
    if digits:
        parts = []
        for name, (h, _, _) in digits["runs"].items():
            parts.append(f"{name} {pct(h.test_acc[-1])} (loss {h.train_loss[-1]:.3g})")
        out.append(f"- **Digits**, final test accuracy (training loss) after {len(next(iter(digits['runs'].values()))[0].test_acc) - 1} "
                   "epochs: " + ", ".join(parts) + ".")
    if prune_results:
        parts = []
        for s, res in prune_results:
            parts.append(f"{100 * s:g}%: M-FAC {pct(res['M-FAC'][0])} vs magnitude {pct(res['magnitude'][0])} "
                         f"({pct(res['M-FAC'][1])} vs {pct(res['magnitude'][1])} fine-tuned)")
        out.append(f"- **Pruning** (test accuracy, dense {pct(dense_acc)}): " + "; ".join(parts) + ".")
    return out


def load_average() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def parse_ints(s: str) -> list[int]:
    return [int(float(v)) for v in s.split(",") if v.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a reduced run of a couple of minutes; report to a temp file")
    ap.add_argument("--reference", metavar="PATH", default=None,
                    help="local checkout of github.com/IST-DASLab/M-FAC (copied and patched, never modified)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="device of parts 1 and 2 (default cpu); digits training and pruning run on the CPU")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--ds", default=None, help="gradient dimensions d (default 1e5,3e5,1e6; --quick 20000)")
    ap.add_argument("--ms", default=None, help="window sizes m (default 16,32,...,1024; --quick 16,64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5; --quick 2)")
    ap.add_argument("--epochs", type=int, default=None, help="digits training epochs (default 30; --quick 2)")
    ap.add_argument("--seed", type=int, default=0, help="one seed for the whole run (default 0)")
    ap.add_argument("--out-md", metavar="PATH", default=None,
                    help=f"where to write the report (default {DEFAULT_OUT}; --quick: {QUICK_OUT})")
    args = ap.parse_args(argv)
    require_sklearn()
    args.ds = parse_ints(args.ds) if args.ds else ([20_000] if args.quick else [100_000, 300_000, 1_000_000])
    args.ms = parse_ints(args.ms) if args.ms else ([16, 64] if args.quick else [16, 32, 64, 128, 256, 512, 1024])
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.epochs = args.epochs or (2 if args.quick else 30)
    out_md = Path(args.out_md) if args.out_md else (QUICK_OUT if args.quick else DEFAULT_OUT)
    threads = pin_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    ref = None
    lu_check = {}
    if args.reference:
        import _mfac_reference

        ref = _mfac_reference.load_reference(args.reference, device)
        lu_check = _mfac_reference.check_lu_shim(ref)
        log(f"reference {ref.path} ({ref.revision}); patches: {len(ref.patches)}")
        if max(args.ms) > 1024:
            raise SystemExit("the reference's dynamic algorithm supports m <= 1024")
    else:
        log("no --reference: the reference columns are left out (git clone https://github.com/IST-DASLab/M-FAC and "
            "pass --reference PATH)")

    t0 = time.perf_counter()
    load_start = load_average()
    full, tune = load_digits_split(args.seed)
    log("part 1: speed and memory")
    speed_text, cases, baselines = speed_section(args, ref, device, sync)
    adam_step = {d: b["Adam"][0] for d, b in baselines.items()}
    log(f"part 2: accuracy ({time.perf_counter() - t0:.0f} s)")
    acc_mv, acc_up, rows_mv, rows_up, impls = accuracy_section(args, ref, full, device)
    log(f"part 3: digits training ({time.perf_counter() - t0:.0f} s)")
    digits = digits_section(args, ref, full, tune, out_md.parent)
    log(f"part 4: pruning ({time.perf_counter() - t0:.0f} s)")
    dense = digits["runs"]["Adam"][1]
    ft_lr = digits["chosen"]["SGD"][0]
    prune_table, prune_setup, prune_results, dense_acc = pruning_section(args, dense, full, ft_lr)
    total = time.perf_counter() - t0

    extra = [f"Device: parts 1-2 on {device}; digits training and pruning on the CPU; float32 unless stated",
             f"Reference: {ref.path.name} at {ref.revision or 'unknown revision'} (github.com/IST-DASLab/M-FAC), "
             "imported in this process from a patched scratch copy" if ref is not None else
             "Reference: not given (`--reference PATH`), reference columns left out",
             f"Run time: {total:.0f} s; load average (1 / 5 / 15 min) at the start {load_start}, at the end "
             f"{load_average()} (this run keeps one core busy, so about 1 is its own)"]
    header = machine_header(TITLE, threads=threads, extra=extra)
    out = [header]
    if args.quick:
        out.append("> **This is a `--quick` run** (small d, two window sizes, 2 epochs); its ratios say little.\n")
    out.append("## Summary\n\n" + "\n".join(summary_lines(cases, ref is not None, rows_mv, rows_up, impls, digits,
                                                            prune_results, dense_acc)) + "\n")
    if ref is not None and cases:
        rows = [[f"{c.d:,}", c.m, ratio(c.times.get("ours mv"), c.times.get("ref mv")),
                 ratio(c.times.get("ours update"), c.times.get("ref update")),
                 ratio(c.times.get("ours update f32 Gram"), c.times.get("ref update")),
                 ratio(c.times.get("ours step"), c.times.get("ref step")),
                 ratio(c.times.get("ours step"), adam_step[c.d])] for c in cases]
        out.append("Time ours / time reference (float32, CPU; details in part 1):\n\n" + markdown_table(
            ["d", "m", "F⁻¹x", "update+F⁻¹g", "update+F⁻¹g, ours with f32 Gram", "optimiser step",
             "ours step / Adam step"], rows))
    if ref is not None:
        lines = ["## The reference and what it needed to run here", "",
                 "The reference's `optim.py` is copied into a scratch directory, patched there and imported into this "
                 "process (the checkout is not modified). Patches applied:", ""]
        lines += [f"- {p}" for p in ref.patches] or ["- none"]
        lines += [""] + [f"- {n}" for n in ref.notes]
        if lu_check:
            lines.append("- LU shim check, ‖LU − A‖/‖A‖ on 200 × 200 float64 matrices: "
                         + ", ".join(f"{k} {v:.1e}" for k, v in lu_check.items()))
        calls = ref.shim_calls
        if calls:
            lines.append(f"- Shim calls during this run: LU via Cholesky {calls['lu_cholesky']}, LU via the blocked "
                         f"fallback {calls['lu_blocked']}, parallel_apply loop {calls['parallel_apply']}")
        out.append("\n".join(lines) + "\n")
    out.append("## 1. Speed and memory of the dynamic algorithm\n\n" + "\n".join([
        f"Windows of m float32 gradients with i.i.d. N(0, 1/d) entries (so ‖g‖ ≈ 1), damp = {DAMP:g} (the paper's "
        "code's default). Ours: `MFAC(params, m=m, damp=damp)` with defaults (Gram entries accumulated in the "
        "parameters' dtype, float32; the m × m algebra in float64) and its `window` (`SlidingMFAC`); its window is loaded with the same "
        "gradients and the reference's Gram matrix (`load_state_dict`), which saves a second O(d m²) product. "
        "Reference: `HInvFastUpMulti(G, damp=damp)` from the same G (float32 throughout) and `optim.MFAC(..., "
        "damp=damp, momentum=0)` whose `hinv` is replaced by that window (building it with `ngrads=m` would redo the "
        "O(d m²) Gram product on zeros).",
        "",
        "- F⁻¹x: a product with a fixed vector and a full window (ours `mv`, which reuses the window's S⁻¹; "
        f"reference `mul`). Median of {PER_POSITION * args.repeats} calls after {WARMUP} warm-up calls (both).",
        "- update+F⁻¹g: replace the oldest gradient by g and return F⁻¹g (ours `update_mv`, reference "
        f"`update_mul`), the optimiser's work per step. Ours: median of {PER_POSITION * args.repeats} calls after {WARMUP} "
        "warm-ups. The reference's pure-PyTorch setup recomputes "
        "rows `last..m-1` of its coefficient matrix, so its cost depends on the ring position `last`; it is timed "
        f"{PER_POSITION} times at each of {args.repeats} positions spread evenly over the ring (setting `last`), after "
        f"{WARMUP} warm-ups; the mean over the positions of the median at each is reported: the cost per step "
        "averaged over a pass of the ring (the min-max over positions is given after the tables). "
        "\"update+F⁻¹g ours\": the window with `gram_dtype=torch.float64`, the `SlidingMFAC` operator's default; "
        "\"ours, f32 Gram\": the same window with `gram_dtype=None` (Gram entries accumulated in float32, as the "
        "reference does), the `MFAC` optimiser's default. Our window updates S⁻¹ by Woodbury (O(m²)) and rebuilds "
        "it (O(m³)) once every m replacements: that rebuild is timed on its own (median) and 1/m of it is added to "
        "each of our update and step times.",
        "- Optimiser step: `step()` with fixed gradients already in `p.grad` of three flat parameters of d weights "
        "in all (no forward/backward): flattening, the window update and product, the parameter update; timed as "
        "above (the reference's at the ring positions; Adam and SGD as ours). M-FAC "
        "without momentum (the reference's `main_optim.py` default), `torch.optim.SGD(lr=0.1, momentum=0.9)` and "
        "`torch.optim.Adam()` with defaults, as in `main_optim.py`.",
        "- Ratios are time ours / time reference: below 1, ours is faster.", "",
        speed_text]) + "\n")
    spread = [f"d={c.d:,} m={c.m}: " + ", ".join(f"{k} {fmt_seconds(a)}–{fmt_seconds(b)}" for k, (a, b) in c.spread.items())
              for c in cases if c.spread]
    if spread:
        out.append("Reference times over the ring positions (min–max): " + "; ".join(spread) + ".\n")
    out.append("## 2. Accuracy against dense float64 solves\n\n" + "\n".join([
        "Relative error ‖y − y*‖/‖y*‖ against y* = `torch.linalg.solve(damp I + Gᵀ G / m, v)` in float64 on the "
        "same (float32-rounded) inputs. Gradients: i.i.d. Gaussian, and real minibatch gradients of the digits MLP "
        f"(64-{HIDDEN}-10) along an SGD run (lr 0.03, momentum 0.9, batch {BATCH}): the window holds the m "
        "gradients before the last step's, the new gradient g is the last step's. damp is relative to the mean "
        "squared gradient entry. κ(F) = 1 + λmax(GᵀG/m)/damp. \"f32 Gram\": ours with `gram_dtype=None`.", "",
        "### F⁻¹v for a random v (full window: ours `mv`, reference `mul`)", "", acc_mv,
        "### Replace the oldest gradient by g and return F⁻¹g (ours `update_mv`, reference `update_mul`)", "",
        acc_up]) + "\n")
    tuned = digits["chosen"]
    out.append("## 3. Training a small MLP on scikit-learn's digits\n\n" + "\n".join([
        f"Digits (1797 8 × 8 images, 10 classes), 75/25 stratified train/test split, features standardised with "
        f"the training statistics. MLP 64-{HIDDEN}-10 with ReLU ({64 * HIDDEN + HIDDEN + HIDDEN * 10 + 10} weights), "
        f"the same initial weights and batch order (batch {BATCH}) for every optimiser, {args.epochs} epochs, float32. "
        f"M-FAC: our `MFAC` with m = {MFAC_M}, no momentum."
        + (f" The reference's `optim.MFAC` runs with our tuned setting (lr {tuned['M-FAC (reference)'][0]:g}, damp "
           f"{tuned['M-FAC (reference)'][1]['damp']:g}, ngrads {MFAC_M}), as a check that the two optimisers agree; "
           "its window starts as zeros divided by m, ours as the Fisher of the gradients seen so far."
           if "M-FAC (reference)" in tuned else ""),
        "",
        "How the learning rates were chosen: each optimiser trained on 80% of the training split for the same number "
        "of epochs with every setting of its grid below, and the setting with the best final validation accuracy "
        "(the other 20%; ties broken by validation loss) was retrained on the whole training split. The test set "
        "plays no part in the choice.", "",
        digits["summary"],
        f"![training loss and test accuracy per epoch]({PLOT_NAME})" if digits["plot"] else
        "(no plot: matplotlib is not installed)", "",
        "### Per epoch (epoch 0: the initial weights; train loss on the whole training split)", "",
        digits["per_epoch"],
        "### Tuning grid (validation split)", "", digits["tuning"]]) + "\n")
    out.append("## 4. Pruning the digits MLP\n\n" + prune_setup + "\n\nTest accuracy:\n\n" + prune_table)
    text = "\n".join(out)
    print(text)
    path = write_markdown(out_md, text)
    log(f"written to {path}" + (f" and {digits['plot']}" if digits["plot"] else "") + f" ({total:.0f} s)")
    bad = [c for c in cases if not all(ch.ok for k, ch in c.checks.items() if k.startswith("ours"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
