"""Run the DCDM reference implementation beside ours, on the same training data and test systems.

The reference is the authors' code for Kaneda et al., ICML 2023 ("A Deep Conjugate Direction Method for
Iteratively Solving Linear Systems"), github.com/ayano721/2023_DCDM (TensorFlow/Keras, 3D only; written
against commit 8cee1c5). None of its code lives in this repository: the caller supplies the path of a
local checkout, whose ``src/`` and ``lib/`` are copied into a scratch directory and patched there
(:func:`prepare_reference`), and a small driver generated below runs, in one subprocess,

1. the reference's own training script ``src/train.py`` (its Keras "64" network, its loss, its chunked
   loading / ``model.fit`` loop and its timer), on a training matrix and training vectors *we* supply,
   written in the reference's formats (:func:`write_matrix`, one ``{i}.npy`` per vector);
2. the reference's own test script ``src/test_all_cg.py`` (DCDM only: ``ConjugateGradientSparse.dcdm`` of
   ``lib/conjugate_gradient.py`` with its Keras model wrapper and its timer) once per test system, with
   the trained weights loaded into a graph rebuilt for the system's resolution (the ``batch_input_shape``
   of the saved ``model.json`` rewritten, as the authors made their ``model_N{N}_from{K}`` models).

Public entry points: :func:`run_reference` (everything), :func:`dcdmnet_from_keras` (the reference's weights in
our network), :func:`prepare_reference`, :func:`write_matrix`, :func:`write_vector`, :func:`reference_form`,
:func:`missing_dependencies`, and :class:`ReferenceUnavailable` (raised when the interpreter cannot import
TensorFlow etc., so that a benchmark can say so and go on).

The reference needs TensorFlow <= 2.15 (Keras 2): Keras 3 cannot save its weights as ``model.h5`` nor set
``optimizer.lr``. A separate site directory holding ``tensorflow-cpu==2.15.1`` (which brings numpy 1.26)
is passed as ``site`` and put on the subprocess's ``PYTHONPATH``; nothing is installed by this module.

Manual use (trains on our Ritz vectors, tests on smoke systems, prints JSON)::

    python benchmarks/_dcdm_reference.py CHECKOUT --site /tmp/dcdm_site --grid 16 --samples 200 \\
        --epochs 2 --test-sizes 16,32
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from _insr_reference import _substitute as _substitute_once  # noqa: E402
from _insr_reference import missing_modules, run_driver  # noqa: E402

__all__ = ["run_reference", "dcdmnet_from_keras", "prepare_reference", "write_matrix", "write_vector", "reference_form",
           "missing_dependencies", "reference_env", "check_dcdm_checkout", "ReferenceUnavailable",
           "REFERENCE_DEPENDENCIES", "REFERENCE_URL", "CHECKOUT_FILES"]

REFERENCE_URL = "github.com/ayano721/2023_DCDM"
#: Modules the reference's scripts import (numba only in datasetcreate.py, which is not run).
REFERENCE_DEPENDENCIES = ("tensorflow", "h5py", "scipy", "numpy")
#: Files a checkout must have.
CHECKOUT_FILES = ("src/train.py", "src/test_all_cg.py", "src/datasetcreate.py", "lib/conjugate_gradient.py",
                  "lib/helper_functions.py")
#: The example folder name test_all_cg.py accepts (its ``-ex`` choices); every system gets its own dataset dir.
_EXAMPLE = "smoke_passing_bunny"
_SCRIPT_NAME = "_neuralnumerics_dcdm_driver.py"
_MANAGED = ("src", "lib", "data", "training", "systems", "train.log", "driver.log", "records.jsonl",
            "driver_spec.json", "weights_initial.npz", "weights_trained.npz", "probe.npz", _SCRIPT_NAME)


class ReferenceUnavailable(RuntimeError):
    """The interpreter cannot import what the reference needs (a benchmark reports this and goes on)."""


# --------------------------------------------------------------------------- #
# checkout and patches
# --------------------------------------------------------------------------- #
def check_dcdm_checkout(checkout: str | os.PathLike) -> Path:
    """The resolved checkout path; FileNotFoundError unless it holds every file of :data:`CHECKOUT_FILES`."""
    path = Path(checkout).expanduser().resolve()
    missing = [p for p in CHECKOUT_FILES if not (path / p).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} does not look like a checkout of {REFERENCE_URL} (missing "
                                f"{', '.join(missing)}); clone it with `git clone https://{REFERENCE_URL}`")
    return path


def _substitute(path: Path, old: str, new: str, count: int = 1) -> None:
    """Replace ``old`` by ``new`` in ``path``; RuntimeError unless it occurs exactly ``count`` times."""
    _substitute_once(path, old, new, count, reference=f"DCDM ({REFERENCE_URL} at 8cee1c5)")


def prepare_reference(checkout: str | os.PathLike, scratch: str | os.PathLike) -> list[str]:
    """Copy the checkout's ``src/`` and ``lib/`` into ``scratch`` and patch the copies; return one line per patch.

    The checkout is never modified. Each patch is an exact text substitution that raises ``RuntimeError``
    (naming the file and the text) unless the text occurs exactly as often as expected:

    ``src/train.py``
        1. ``-N`` no longer restricted to ``choices=[64, 128]``.
        2. The training matrix's file name is defined for every ``N`` (``A_origN{N}.bin``; ``A_oriN128.bin``
           stays the name for 128): the ``if N == 64 / elif N == 128`` branches left it undefined otherwise.
        3. The "64" network is built for every ``N`` other than 128 (``if N==64`` became ``if N!=128``).
        4. New options ``--rhs_dir`` (folder of the training vectors ``{i}.npy``; replaces the hard-coded
           dataset folder, undefined for ``N`` other than 64 and 128), ``--num_rhs`` (their number; replaces
           ``total_data_points = 20000``) and ``--lr`` (replaces the hard-coded ``lr = 1.0e-4``; default 1e-4).
        5. ``err/b_size_`` became ``err/tf.cast(b_size_, tf.float32)``: on TF >= 2.4 ``len()`` of a symbolic
           batch is an int32 tensor, which cannot divide the float32 loss.
        6. ``np.mat`` became ``np.array`` (``np.mat`` is gone in NumPy 2; same values either way).
        7. The effective Adam learning rate is printed after ``model.optimizer.lr = lr`` (a diagnostic).

    ``src/test_all_cg.py``
        8. ``-N`` and ``-k`` no longer restricted to ``[64, 128, 256]`` / ``[64, 128]``.
        9. New option ``--max_dcdm_iter`` (replaces the hard-coded ``max_dcdm_iter = 100``; default 100).

    ``src/datasetcreate.py`` (not run here; patched like ``train.py`` so the copy works at any ``N``)
        10. ``-N`` choices removed and the matrix file name defined for every ``N``.

    Nothing else changes: the network, the loss, the loading/``fit`` loop, its validation split and timer,
    the saving of ``model.json``/``model.h5``, the DCDM iteration and its timer all run as written.
    """
    src_root = check_dcdm_checkout(checkout)
    scratch = Path(scratch).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    for sub in ("src", "lib"):
        dest = scratch / sub
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src_root / sub, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    src = scratch / "src"
    train, test, create = src / "train.py", src / "test_all_cg.py", src / "datasetcreate.py"
    patches: list[str] = []

    _substitute(train, 'type=int, choices=[64, 128],', 'type=int,')
    patches.append("src/train.py: `-N` accepts any resolution (was choices=[64, 128]).")

    _substitute(train, 'if N == 64:\n    A_file_name = args.data_dir', 'if N != 128:\n    A_file_name = args.data_dir')
    _substitute(train, 'elif N == 128:\n    A_file_name = args.data_dir', 'else:\n    A_file_name = args.data_dir')
    patches.append("src/train.py: training-matrix file name defined for every N (original_matA/A_origN{N}.bin; "
                   "A_oriN128.bin for 128); the if N == 64 / elif N == 128 branches left it undefined otherwise.")

    _substitute(train, 'if N==64:\n    first_layer', 'if N!=128:\n    first_layer')
    patches.append("src/train.py: the \"64\" network is built for every N other than 128 (was only for N == 64).")

    _substitute(train, 'parser.add_argument("--data_dir"',
                'parser.add_argument("--rhs_dir", type=str, default=None,\n'
                '                    help="[neuralnumerics patch] folder of the training vectors {i}.npy")\n'
                'parser.add_argument("--num_rhs", type=int, default=20000,\n'
                '                    help="[neuralnumerics patch] number of training vectors")\n'
                'parser.add_argument("--lr", type=float, default=1.0e-4,\n'
                '                    help="[neuralnumerics patch] Adam learning rate")\n'
                'parser.add_argument("--data_dir"')
    _substitute(train, 'lr = 1.0e-4\n', 'lr = args.lr  # neuralnumerics patch (was 1.0e-4)\n')
    _substitute(train, 'total_data_points = 20000\n',
                'total_data_points = args.num_rhs  # neuralnumerics patch (was 20000)\n'
                'if args.rhs_dir:  # neuralnumerics patch: our training vectors\n'
                '    foldername = os.path.join(args.rhs_dir, "")\n')
    patches.append("src/train.py: new options --rhs_dir (folder of the training vectors {i}.npy, replacing the "
                   "hard-coded dataset folder), --num_rhs (their count, was total_data_points = 20000) and --lr "
                   "(was lr = 1.0e-4; default unchanged).")

    _substitute(train, 'return err/b_size_', 'return err/tf.cast(b_size_, tf.float32)')
    patches.append("src/train.py: loss returns err/tf.cast(b_size_, tf.float32) (was err/b_size_: on TF >= 2.4 "
                   "len() of a symbolic batch is an int32 tensor, which cannot divide the float32 loss).")

    _substitute(train, 'np.mat([coo.row, coo.col])', 'np.array([coo.row, coo.col])')
    patches.append("src/train.py: np.mat -> np.array for the sparse indices (np.mat is gone in NumPy 2; same values).")

    _substitute(train, 'model.optimizer.lr = lr\n',
                'model.optimizer.lr = lr\n'
                'print("effective learning rate:", float(model.optimizer.learning_rate))  # neuralnumerics patch\n')
    patches.append("src/train.py: prints the effective Adam learning rate after `model.optimizer.lr = lr` "
                   "(diagnostic only).")

    _substitute(test, 'type=int, choices=[64, 128, 256],', 'type=int,')
    _substitute(test, 'type=int, choices=[64, 128],', 'type=int,')
    patches.append("src/test_all_cg.py: `-N` and `-k` accept any resolution (were choices=[64, 128, 256] and "
                   "[64, 128]).")

    _substitute(test, 'parser.add_argument("--max_cg_iter"',
                'parser.add_argument("--max_dcdm_iter", type=int, default=100,\n'
                '                    help="[neuralnumerics patch] maximum DCDM iterations")\n'
                'parser.add_argument("--max_cg_iter"')
    _substitute(test, 'max_dcdm_iter = 100', 'max_dcdm_iter = args.max_dcdm_iter  # neuralnumerics patch (was 100)')
    patches.append("src/test_all_cg.py: new option --max_dcdm_iter (was max_dcdm_iter = 100; default unchanged).")

    _substitute(create, 'type=int, choices=[64, 128],', 'type=int,')
    _substitute(create, 'if N == 64:\n    A_file_name = args.dataset_dir',
                'if N != 128:\n    A_file_name = args.dataset_dir')
    _substitute(create, 'elif N == 128:\n    A_file_name = args.dataset_dir',
                'else:\n    A_file_name = args.dataset_dir')
    patches.append("src/datasetcreate.py (not run by this harness): `-N` accepts any resolution and the matrix file "
                   "name is defined for every N, as in train.py.")
    return patches


# --------------------------------------------------------------------------- #
# the reference's file formats
# --------------------------------------------------------------------------- #
def write_matrix(path: str | os.PathLike, matrix) -> None:
    """Write a square sparse matrix in the binary layout the reference's ``readA_sparse(N, file, 'f')`` reads.

    Eigen's compressed row-major layout, native byte order (little-endian here): five int32
    ``rows, cols, nnz, outerSize (= rows), innerSize (= cols)``; float32 ``values[nnz]``; int32 row
    pointers ``[rows]`` (the first ``rows`` entries of CSR's ``indptr``: the reader appends ``nnz``); int32
    column indices ``[nnz]``. Duplicates are summed, explicit zeros dropped, and columns sorted within rows.
    """
    import scipy.sparse as sp

    A = sp.csr_matrix(matrix, copy=True)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"write_matrix: the matrix must be square, got shape {A.shape}")
    if A.nnz and not np.all(np.isfinite(A.data)):
        raise ValueError("write_matrix: the matrix has non-finite entries")
    A.sum_duplicates()
    A.eliminate_zeros()
    A.sort_indices()
    if A.nnz >= 2 ** 31:
        raise ValueError("write_matrix: too many nonzeros for int32 indices")
    rows, cols = A.shape
    with open(path, "wb") as f:
        f.write(np.array([rows, cols, A.nnz, rows, cols], dtype=np.int32).tobytes())
        f.write(A.data.astype(np.float32).tobytes())
        f.write(A.indptr[:-1].astype(np.int32).tobytes())
        f.write(A.indices.astype(np.int32).tobytes())


def write_vector(path: str | os.PathLike, v) -> None:
    """Write a vector as the reference's ``div_v_star*.bin``: float64, one leading header value (the length,
    which the reader drops), then the entries."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ValueError("write_vector: the vector has non-finite entries")
    np.concatenate([[float(v.size)], v]).astype(np.float64).tofile(path)


def reference_form(matrix, rhs) -> tuple[Any, np.ndarray]:
    """The matrix as the reference expects it, and the mask of the rows/columns that were emptied.

    The reference's matrices leave the rows and columns of solid cells empty; our
    :class:`~neuralnumerics.linalg.PoissonGrid` puts an identity row there (decoupled from every other
    cell). A row with no off-diagonal entry, on which every right-hand side in ``rhs`` (a vector ``(n,)`` or
    samples ``(s, n)``) is zero, is such a decoupled equation ``d x_i = 0``: its exact solution is
    ``x_i = 0`` and nothing else depends on ``x_i``. Those rows and their columns are emptied, which is the
    reference's convention: there the network's output on those cells never enters a product with ``A``.
    This is exact: on the remaining rows the system is unchanged, and a solution of the emptied system
    with ``x_i`` set to 0 on the emptied cells solves the original one with the same residual
    (:func:`run_reference` reports that residual, in float64, as ``true_residual``). Rows with a nonzero
    right-hand side are left as they are.
    """
    import scipy.sparse as sp

    A = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    A.sum_duplicates()
    A.eliminate_zeros()
    n = A.shape[0]
    rhs = np.asarray(rhs)
    rhs = rhs.reshape(-1, n) if rhs.size else np.zeros((0, n))
    off = A - sp.diags(A.diagonal())
    off.eliminate_zeros()
    decoupled = np.diff(off.indptr) == 0
    zero_rhs = ~np.any(rhs != 0, axis=0)
    drop = decoupled & zero_rhs
    if drop.any():
        keep = sp.diags((~drop).astype(np.float64))
        A = (keep @ A @ keep).tocsr()
        A.eliminate_zeros()
    return A, drop


def _train_matrix_name(n: int) -> str:
    # the (patched) train.py reads A_origN{N}.bin, except A_oriN128.bin for 128 (the reference's own names)
    return f"A_oriN{n}.bin" if n == 128 else f"A_origN{n}.bin"


# --------------------------------------------------------------------------- #
# dependencies
# --------------------------------------------------------------------------- #
def reference_env(site: str | os.PathLike | None = None, threads: int = 1,
                  lib_paths: Sequence[str | os.PathLike] = ()) -> dict[str, str]:
    """The subprocess environment: ``PYTHONPATH = lib_paths : site : (inherited)``, ``threads`` threads for
    OpenMP / MKL / OpenBLAS / numba and TensorFlow's intra- and inter-op pools, no GPU, quiet TF logging."""
    env = dict(os.environ)
    paths = [str(Path(p)) for p in lib_paths]
    if site is not None:
        paths.append(str(Path(site).expanduser().resolve()))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    t = str(int(threads))
    env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, NUMBA_NUM_THREADS=t,
               TF_NUM_INTRAOP_THREADS=t, TF_NUM_INTEROP_THREADS=t, CUDA_VISIBLE_DEVICES="",
               PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def missing_dependencies(site: str | os.PathLike | None = None, python: str = sys.executable) -> list[str]:
    """The modules of :data:`REFERENCE_DEPENDENCIES` that ``python`` cannot find with ``site`` on its path.

    A quick probe (``importlib.util.find_spec``, nothing is imported); the driver itself also checks that
    Keras is version 2 (TensorFlow <= 2.15) and fails with a clear message otherwise.
    """
    return missing_modules(REFERENCE_DEPENDENCIES, python, reference_env(site))


# --------------------------------------------------------------------------- #
# driver (our own code, written into the scratch directory)
# --------------------------------------------------------------------------- #
_DRIVER = textwrap.dedent(
    '''\
    """Generated by neuralnumerics benchmarks/_dcdm_reference.py: run the DCDM reference's own train.py, then its
    test_all_cg.py (DCDM only) on each test system, and log results as JSON lines."""
    import contextlib, json, os, re, runpy, shutil, sys, time

    with open(sys.argv[1]) as f:
        spec = json.load(f)
    out = open(spec["out"], "a")


    def emit(rec):
        out.write(json.dumps(rec) + "\\n")
        out.flush()
        os.fsync(out.fileno())


    import numpy as np
    import tensorflow as tf

    threads = spec["threads"]
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    try:
        import keras as _keras

        keras_version = getattr(_keras, "__version__", "?")
    except ImportError:
        keras_version = "?"
    if keras_version.startswith("3") and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        sys.exit(f"the DCDM reference needs Keras 2 (TensorFlow <= 2.15); this TensorFlow {tf.__version__} has "
                 f"Keras {keras_version}. Pass a site directory with tensorflow-cpu==2.15.1.")
    import h5py, scipy

    emit({"phase": "versions", "tensorflow": tf.__version__, "keras": keras_version, "numpy": np.__version__,
          "scipy": scipy.__version__, "h5py": h5py.__version__, "python": sys.version.split()[0]})

    src = spec["src_dir"]
    os.chdir(src)


    def run_script(name, argv, log_path):
        sys.argv = [name] + argv
        with open(log_path, "w") as log, contextlib.redirect_stdout(log):
            return runpy.run_path(os.path.join(src, name), run_name="__main__")


    def resize(node, old, new):
        # the saved graph's input shape [None, K, K, K, 1] -> [None, N, N, N, 1]; everything else is shape-free
        if isinstance(node, dict):
            return {k: (new if k == "batch_input_shape" and v == old else resize(v, old, new)) for k, v in node.items()}
        if isinstance(node, list):
            return [resize(v, old, new) for v in node]
        return node


    if spec["seed"] is not None:  # python, numpy (the reference's shuffles) and TF (initial weights)
        tf.keras.utils.set_random_seed(spec["seed"])
    train = spec["train"]

    # an observer, not a patch: the weights train.py's network has when its first model.fit starts
    _fit = tf.keras.Model.fit


    def _fit_recording_initial_weights(self, *args, **kwargs):
        if not os.path.exists(train["initial_weights"]):
            np.savez(train["initial_weights"], *self.get_weights())
        return _fit(self, *args, **kwargs)


    tf.keras.Model.fit = _fit_recording_initial_weights
    t0 = time.perf_counter()
    g = run_script("train.py", train["argv"], train["log"])
    wall = time.perf_counter() - t0
    text = open(train["log"], errors="replace").read()
    lr = re.search(r"effective learning rate:\\s*(\\S+)", text)
    emit({"phase": "train", "wall_seconds": wall,
          "epoch_seconds": [float(s) for _, s in re.findall(r"Time for epoch =\\s+(\\d+)\\s+is\\s+(\\S+)", text)],
          "epoch_losses": [float(v) for v in re.findall(r"Training loss at i =\\s+(\\S+)", text)],
          "effective_lr": float(lr.group(1)) if lr else None, "params": int(g["model"].count_params())})
    tf.keras.Model.fit = _fit
    # the trained weights (layer order), and the network's output on a fixed input to check a port against
    probe = np.random.default_rng(12345).standard_normal((1,) + tuple(g["model"].input_shape[1:])).astype(np.float32)
    np.savez(train["trained_weights"], *g["model"].get_weights())
    np.savez(train["probe"], x=probe, y=g["model"](probe, training=False).numpy())
    del g
    tf.keras.backend.clear_session()

    saved = train["saved_dir"]
    with open(os.path.join(saved, "model.json")) as f:
        graph = json.load(f)
    K = train["N"]
    for s in spec["solves"]:
        N = s["N"]
        dest = s["model_dir"]
        os.makedirs(dest, exist_ok=True)
        with open(os.path.join(dest, "model.json"), "w") as f:
            json.dump(resize(graph, [None, K, K, K, 1], [None, N, N, N, 1]), f)
        shutil.copyfile(os.path.join(saved, "model.h5"), os.path.join(dest, "model.h5"))
        g = run_script("test_all_cg.py", s["argv"], s["log"])
        np.save(s["x_out"], np.asarray(g["x_sol"], dtype=np.float64))
        emit({"phase": "solve", "name": s["name"], "seconds": float(g["time_cg_ml"]),
              "residuals": [float(v) for v in g["res_arr"]], "params": int(g["model"].count_params())})
        del g
        tf.keras.backend.clear_session()
    ''')


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _cube(grid, what: str) -> int:
    try:
        sizes = tuple(int(s) for s in grid)
    except TypeError:
        raise ValueError(f"{what}: grid must be a 3-tuple (N, N, N), got {grid!r}") from None
    if len(sizes) != 3 or len(set(sizes)) != 1 or sizes[0] < 2 or sizes[0] % 2:
        raise ValueError(f"{what}: the reference is 3D on cubic grids of even side (one pooling level); got {grid!r}")
    return sizes[0]


def _loading_number(samples: int, batch: int, requested: int | None) -> int:
    """Vectors loaded per chunk of train.py's loop (``--loading_number``).

    The reference fits each chunk of ``L`` vectors, validating on its last ``L - round(0.9 L)``, with a
    loss that loops over the *configured* batch size: every batch, training and validation, must be full
    (``L`` and ``L - round(0.9 L)`` multiples of ``batch``), and the chunks must cover the set
    (``samples`` a multiple of ``L``). Default: the reference's 100 when that fits, else the largest that does.
    """
    def ok(L: int) -> bool:
        val = L - round(0.9 * L)
        return L >= 1 and samples % L == 0 and L % batch == 0 and val >= batch and val % batch == 0

    if requested is not None:
        if not ok(int(requested)):
            raise ValueError(f"loading_number {requested} does not fit the reference's loop with {samples} samples and "
                             f"batch size {batch}: it must divide the samples, and it and its last 10% (the "
                             "validation slice) must be nonzero multiples of the batch size")
        return int(requested)
    if ok(100):
        return 100
    for L in range(samples, 0, -1):
        if ok(L):
            return L
    raise ValueError(f"no chunk size fits the reference's loop with {samples} samples and batch size {batch}: use a "
                     "sample count that is a multiple of 10 x batch size")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "system"


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays of an ``np.savez(path, *arrays)`` file, in their order."""
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def dcdmnet_from_keras(weights: Sequence[np.ndarray]):
    """Our :class:`~neuralnumerics.linalg.DCDMNet` holding the reference network's Keras weights.

    ``weights`` is ``model.get_weights()`` of the reference's network (as :func:`run_reference` returns them):
    kernel and bias of every convolution in the order train.py creates them (input convolution, the
    full-resolution pairs, the half-resolution blocks, the blocks after upsampling), then the ``Dense`` layer.
    Keras kernels are ``(k, k, k, in, out)`` cross-correlations on channels-last data; PyTorch's are
    ``(out, in, k, k, k)`` on channels-first data, so each kernel is only transposed. The block counts are
    read from the number of layers: 16 (15 convolutions and the dense layer) are the "64" network, 24 the
    "128" one.
    """
    import torch

    from neuralnumerics.linalg import DCDMNet

    arrays = [np.asarray(w, dtype=np.float32) for w in weights]
    if len(arrays) % 2 or not arrays or arrays[0].ndim not in (4, 5):
        raise ValueError(f"dcdmnet_from_keras: expected (kernel, bias) pairs of Conv2D/Conv3D layers, got "
                         f"{len(arrays)} arrays of shapes {[a.shape for a in arrays][:4]}...")
    dim = arrays[0].ndim - 2
    layers = len(arrays) // 2
    blocks = {16: (2, 3, 2), 24: (3, 5, 3)}.get(layers)
    if blocks is None:
        raise ValueError(f"dcdmnet_from_keras: {layers} layers match neither the reference's '64' network (16) nor "
                         "its '128' network (24)")
    width = arrays[0].shape[-1]
    net = DCDMNet(dim, width=width, pre_blocks=blocks[0], mid_blocks=blocks[1], post_blocks=blocks[2])
    convs = [net.inp, *net.pre, *net.mid, *net.post, net.out]
    with torch.no_grad():
        for conv, kernel, bias in zip(convs, arrays[0::2], arrays[1::2]):
            if kernel.ndim == 2:  # the Dense layer: (in, out), a 1x1(x1) convolution
                kernel = kernel.reshape((1,) * dim + kernel.shape)
            w = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-2, -1), (1, 0))))
            if w.shape != conv.weight.shape or bias.shape != conv.bias.shape:
                raise ValueError(f"dcdmnet_from_keras: a kernel of shape {kernel.shape} does not fit "
                                 f"{tuple(conv.weight.shape)}")
            conv.weight.copy_(w)
            conv.bias.copy_(torch.from_numpy(bias))
    return net.eval()


# --------------------------------------------------------------------------- #
# public entry point
# --------------------------------------------------------------------------- #
def run_reference(checkout: str | os.PathLike, *, train_matrix, train_rhs, grid: Sequence[int],
                  test_systems: Sequence[tuple] = (), epochs: int = 1, batch_size: int = 10, lr: float = 1e-4,
                  rtol: float = 1e-4, max_iters: int = 100, site: str | os.PathLike | None = None,
                  scratch: str | os.PathLike | None = None, timeout: float | None = None,
                  loading_number: int | None = None, seed: int | None = 0, threads: int = 1,
                  python: str = sys.executable, progress: Callable[[dict], None] | None = None,
                  poll_seconds: float = 2.0) -> dict[str, Any]:
    """Train the reference's network on our data with its ``train.py``, then solve our systems with its DCDM.

    Args:
        checkout: local checkout of github.com/ayano721/2023_DCDM (never modified).
        train_matrix: the training matrix (scipy sparse, ``n x n``, ``n = N^3``), e.g. ``op.to_scipy()`` of
            :func:`neuralnumerics.io.dcdm_runs.training_operator`; written as ``original_matA/A_origN{N}.bin``
            in :func:`reference_form` (float32, as the reference stores and uses it).
        train_rhs: training vectors ``(samples, n)``, written as float32 ``{i}.npy`` (the files train.py's
            loop reads, one per vector). The reference uses them as given (ours are unit vectors, as its are).
        grid: the training grid ``(N, N, N)``, ``N`` even (the reference flattens in C order, as we do).
        test_systems: ``(name, grid, matrix, b)`` per system: each written as
            ``test_matrices_and_vectors/N{N}/smoke_passing_bunny/matrixA_1.bin`` (in :func:`reference_form`)
            and ``div_v_star1.bin`` in its own dataset folder, and solved by the reference's
            ``test_all_cg.py --skip_cg --skip_icpcg --skip_deflated_pcg`` from ``x0 = 0``.
        epochs: passes of train.py's outer loop (it runs ``--total_number_of_epochs - 1`` of them).
        batch_size, lr: train.py's ``--batch_size`` and (patched in) ``--lr``.
        rtol: test_all_cg.py's ``-tol``: DCDM stops once ``||r_k|| < rtol ||r_0||`` (its own criterion).
        max_iters: the DCDM iteration cap (patched-in ``--max_dcdm_iter``; the reference hard-codes 100).
        site: a directory put on the subprocess's ``PYTHONPATH`` (e.g. ``pip install --target DIR
            tensorflow-cpu==2.15.1``); ``None``: the current environment.
        scratch: keep the patched copy, data, logs and trained model here (created; our previous outputs in
            it are replaced); default a temporary directory removed afterwards.
        timeout: seconds for the whole subprocess (it is killed by process group on expiry).
        loading_number: train.py's ``--loading_number`` (default: see :func:`_loading_number`).
        seed: seeds Python, NumPy (the reference's shuffles) and TensorFlow (initial weights) in the driver
            before train.py runs (the reference does not seed); ``None``: unseeded.
        threads: threads for TensorFlow's pools and the BLAS/OpenMP libraries (default 1).
        python: the interpreter for the driver.
        progress: called with each JSON record (``phase`` ``versions`` / ``train`` / ``solve``) as it arrives.

    Returns:
        ``{"patches": [str, ...],
        "train": {"seconds", "seconds_per_sample", "steady_seconds_per_sample", "wall_seconds", "epoch_seconds",
        "epoch_losses", "final_loss", "samples", "epochs", "batch_size", "loading_number", "lr", "effective_lr",
        "params", "initial_weights", "trained_weights", "probe"},
        "solves": {name: {"grid", "iterations", "residual", "true_residual", "residuals", "converged", "seconds",
        "dropped_rows"}},
        "versions": {"tensorflow", "keras", "numpy", "scipy", "h5py", "python"},
        "wall_seconds", "scratch", "log_tail"}``.

        ``train.seconds`` is the sum of train.py's own per-pass timer (reading the ``.npy`` chunks, ``model.fit``
        on each chunk and its validation pass over the chunk's last 10%); ``seconds_per_sample`` divides it by
        ``epochs * samples`` and ``steady_seconds_per_sample`` does the same without the first pass (which
        includes tracing the Keras training function; ``None`` for one epoch). ``wall_seconds`` is the whole
        train.py run (also building the network and loading the matrix). ``epoch_losses``/``final_loss`` are
        train.py's printed "Training loss" (mean over chunks of Keras' running mean of the batch losses).
        ``initial_weights`` / ``trained_weights`` are the network's ``get_weights()`` when train.py's first
        ``model.fit`` starts (recorded by the driver, which wraps ``fit`` without changing it) and after training
        (for :func:`dcdmnet_from_keras`); ``probe`` is ``(x, y)``: a fixed input on the training grid and the
        trained network's output on it.

        Per system: ``residuals`` is the reference's ``res_arr`` divided by ``||b||`` (``x0 = 0``: relative
        residuals ``||b - A x_k|| / ||b||`` computed by the reference with its float32 ``A``), ``iterations``
        its length minus one, ``residual`` its last entry, ``converged`` whether it is below ``rtol``,
        ``seconds`` test_all_cg.py's own timer around the DCDM call (model loading and the untimed warm-up call
        excluded), ``true_residual`` the relative residual of the returned ``x`` (set to 0 on the emptied rows)
        with the float64 matrix given here, and ``dropped_rows`` how many rows :func:`reference_form` emptied.

    Raises:
        ValueError: on bad arguments (shapes, grids, a batch size the reference's loop cannot take).
        FileNotFoundError: if ``checkout`` is not a DCDM checkout.
        ReferenceUnavailable: if ``python`` cannot find TensorFlow etc. (pass ``site``).
        RuntimeError: if a patch does not apply, or the reference fails or times out (with its log's tail).
    """
    import scipy.sparse as sp

    N = _cube(grid, "run_reference")
    n = N ** 3
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("max_iters", max_iters, 1),
                             ("threads", threads, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"run_reference: {name} must be an integer >= {low}, got {value!r}")
    for name, value in (("lr", lr), ("rtol", rtol)):
        if isinstance(value, bool) or not (float(value) > 0 and np.isfinite(float(value))):
            raise ValueError(f"run_reference: {name} must be a positive number, got {value!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"run_reference: timeout must be positive, got {timeout!r}")
    A_train = sp.csr_matrix(train_matrix)
    if A_train.shape != (n, n):
        raise ValueError(f"run_reference: train_matrix has shape {A_train.shape}; the grid {tuple(grid)} needs "
                         f"{(n, n)}")
    rhs = np.asarray(train_rhs, dtype=np.float32)
    if rhs.ndim != 2 or rhs.shape[1] != n or rhs.shape[0] < 1:
        raise ValueError(f"run_reference: train_rhs must be (samples, {n}), got shape {rhs.shape}")
    if not np.all(np.isfinite(rhs)):
        raise ValueError("run_reference: train_rhs has non-finite entries")
    samples = rhs.shape[0]
    L = _loading_number(samples, int(batch_size), loading_number)
    systems = []
    names = set()
    for item in test_systems:
        try:
            name, sgrid, matrix, b = item
        except (TypeError, ValueError):
            raise ValueError("run_reference: each test system is (name, grid, matrix, b)") from None
        name = str(name)
        if name in names:
            raise ValueError(f"run_reference: duplicate test system name {name!r}")
        names.add(name)
        M = _cube(sgrid, f"run_reference: test system {name!r}")
        A = sp.csr_matrix(matrix)
        b = np.asarray(b, dtype=np.float64).reshape(-1)
        if A.shape != (M ** 3, M ** 3) or b.shape != (M ** 3,):
            raise ValueError(f"run_reference: test system {name!r} on {tuple(sgrid)} needs a {M ** 3}x{M ** 3} matrix "
                             f"and b of {M ** 3}, got {A.shape} and {b.shape}")
        if not np.all(np.isfinite(b)) or not np.any(b):
            raise ValueError(f"run_reference: test system {name!r} needs a finite, nonzero b")
        systems.append((name, M, A, b))

    checkout = check_dcdm_checkout(checkout)
    if site is not None and not Path(site).expanduser().is_dir():
        raise FileNotFoundError(f"run_reference: the site directory {site} does not exist")
    missing = missing_dependencies(site, python)
    if missing:
        hint = "pass --reference-site DIR" if site is None else f"the site directory {site} lacks them"
        raise ReferenceUnavailable(
            f"the DCDM reference needs {', '.join(missing)}, which {python} cannot import ({hint}: e.g. "
            "`pip install --target DIR tensorflow-cpu==2.15.1 h5py`)")

    tmp = None
    if scratch is None:
        tmp = tempfile.TemporaryDirectory(prefix="dcdm_ref_")
        work = Path(tmp.name)
    else:
        work = Path(scratch).expanduser().resolve()
        work.mkdir(parents=True, exist_ok=True)
        for entry in _MANAGED:
            p = work / entry
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        patches = prepare_reference(checkout, work)
        data = work / "data"
        (data / "original_matA").mkdir(parents=True)
        A_ref, dropped_train = reference_form(A_train, rhs)
        write_matrix(data / "original_matA" / _train_matrix_name(N), A_ref)
        rhs_dir = data / "rhs"
        rhs_dir.mkdir()
        for i, v in enumerate(rhs):
            np.save(rhs_dir / f"{i}.npy", v)

        train_argv = ["-N", str(N), "--total_number_of_epochs", str(int(epochs) + 1), "--epoch_each_number", "1",
                      "--batch_size", str(int(batch_size)), "--loading_number", str(L), "--gpu_idx=",
                      "--data_dir", str(data), "--rhs_dir", str(rhs_dir), "--num_rhs", str(samples),
                      "--lr", repr(float(lr))]
        saved_dir = work / "training" / f"3D_N{N}" / "src" / "saved_models" / f"3D_N{N}_json_E{int(epochs)}"
        solves, dropped = [], {}
        for i, (name, M, A, b) in enumerate(systems):
            base = work / "systems" / f"{i:02d}_{_safe(name)}"
            folder = base / "test_matrices_and_vectors" / f"N{M}" / _EXAMPLE
            folder.mkdir(parents=True)
            A_sys, drop = reference_form(A, b)
            dropped[name] = drop
            write_matrix(folder / "matrixA_1.bin", A_sys)
            write_vector(folder / "div_v_star1.bin", b)
            k = 64 if M == 64 else N  # test_all_cg.py loads model_N64_from64 whatever -k says when N == 64
            solves.append({
                "name": name, "N": M,
                "model_dir": str(base / "trained_models" / f"model_N{M}_from{k}_F32"),
                "argv": ["-N", str(M), "-k", str(N), "-f", "32", "-ex", _EXAMPLE, "--dataset_dir", str(base),
                         "-tol", repr(float(rtol)), "--max_dcdm_iter", str(int(max_iters)), "--skip_cg",
                         "--skip_icpcg", "--skip_deflated_pcg", "--CUDA_VISIBLE_DEVICES="],
                "log": str(base / "test_all_cg.log"), "x_out": str(base / "x.npy")})

        out_path, log_path = work / "records.jsonl", work / "driver.log"
        spec_path, driver_path = work / "driver_spec.json", work / _SCRIPT_NAME
        out_path.write_text("")
        driver_path.write_text(_DRIVER)
        spec_path.write_text(json.dumps({
            "src_dir": str(work / "src"), "threads": int(threads), "seed": seed, "out": str(out_path),
            "train": {"argv": train_argv, "log": str(work / "train.log"), "saved_dir": str(saved_dir), "N": N,
                      "initial_weights": str(work / "weights_initial.npz"),
                      "trained_weights": str(work / "weights_trained.npz"), "probe": str(work / "probe.npz")},
            "solves": solves}, indent=1))
        env = reference_env(site, threads, lib_paths=(work / "lib", work / "src"))
        returncode, timed_out, wall, records = run_driver(python, driver_path, spec_path, work / "src", env, out_path,
                                                          log_path, timeout=timeout, poll_seconds=poll_seconds,
                                                          progress=progress)
        phases = {r.get("phase") for r in records}
        done = [r for r in records if r.get("phase") == "solve"]
        if timed_out or returncode != 0 or "train" not in phases or len(done) != len(systems):
            how = f"timed out after {timeout:g} s" if timed_out else f"exited with code {returncode}"
            stage = ("training (src/train.py)" if "train" not in phases
                     else f"test system {systems[len(done)][0]!r} (src/test_all_cg.py)")
            stage_log = work / "train.log" if "train" not in phases else Path(solves[len(done)]["log"])
            raise RuntimeError(f"DCDM reference {how} during {stage}.\n--- driver stderr (tail) ---\n"
                               f"{_tail(log_path)}\n--- {stage_log.name} (tail) ---\n{_tail(stage_log, 1500)}")

        versions = next((dict(r) for r in records if r.get("phase") == "versions"), {})
        versions.pop("phase", None)
        tr = next(r for r in records if r.get("phase") == "train")
        secs = list(tr["epoch_seconds"])
        total = float(sum(secs))
        train = {"seconds": total, "seconds_per_sample": total / (len(secs) * samples) if secs else None,
                 "steady_seconds_per_sample": (float(sum(secs[1:])) / ((len(secs) - 1) * samples)
                                               if len(secs) > 1 else None),
                 "wall_seconds": tr["wall_seconds"], "epoch_seconds": secs, "epoch_losses": tr["epoch_losses"],
                 "final_loss": tr["epoch_losses"][-1] if tr["epoch_losses"] else None, "samples": samples,
                 "epochs": int(epochs), "batch_size": int(batch_size), "loading_number": L, "lr": float(lr),
                 "effective_lr": tr["effective_lr"], "params": tr["params"],
                 "dropped_rows": int(dropped_train.sum())}
        train["initial_weights"] = _load_arrays(work / "weights_initial.npz")
        train["trained_weights"] = _load_arrays(work / "weights_trained.npz")
        with np.load(work / "probe.npz") as z:
            train["probe"] = (z["x"], z["y"])
        results = {}
        for (name, M, A, b), rec, s in zip(systems, done, solves):
            res = np.asarray(rec["residuals"], dtype=np.float64)
            bnorm = float(np.linalg.norm(b))
            x = np.load(s["x_out"])
            x[dropped[name]] = 0.0
            true = float(np.linalg.norm(b - sp.csr_matrix(A, dtype=np.float64) @ x) / bnorm)
            rel = (res / bnorm).tolist()
            results[name] = {"grid": (M, M, M), "iterations": len(rel) - 1, "residual": rel[-1],
                             "true_residual": true, "residuals": rel, "converged": bool(rel[-1] < rtol),
                             "seconds": rec["seconds"], "dropped_rows": int(dropped[name].sum())}
        return {"patches": patches, "train": train, "solves": results, "versions": versions, "wall_seconds": wall,
                "scratch": None if tmp is not None else str(work), "log_tail": _tail(log_path, 2000)}
    finally:
        if tmp is not None:
            tmp.cleanup()


# --------------------------------------------------------------------------- #
# manual entry point: our Ritz vectors and smoke systems through the reference
# --------------------------------------------------------------------------- #
