"""The harness that runs the DCDM reference (github.com/ayano721/2023_DCDM) beside ours (benchmarks/_dcdm_reference.py).

The fast tests need no TensorFlow. The patch test needs a checkout: NEURALNUMERICS_DCDM_REFERENCE, or the local mirror
(a bare git repository, extracted with ``git archive``); it is skipped without one. The slow test also needs TensorFlow
2.15 (Keras 2), from NEURALNUMERICS_DCDM_REFERENCE_SITE or /tmp/dcdm_site.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
try:
    import _dcdm_reference as dref
finally:
    sys.path.pop(0)

MIRROR = Path("/work/.mirror/ayano721+2023_DCDM/repo")
DEFAULT_SITE = Path("/tmp/dcdm_site")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A checkout of the reference: the one named by the environment, else the mirror's HEAD extracted."""
    named = os.environ.get("NEURALNUMERICS_DCDM_REFERENCE")
    if named:
        return Path(named)
    if not MIRROR.is_dir() or shutil.which("git") is None:
        pytest.skip("set NEURALNUMERICS_DCDM_REFERENCE to a checkout of github.com/ayano721/2023_DCDM")
    dest = tmp_path_factory.mktemp("dcdm_checkout")
    archive = subprocess.run(["git", f"--git-dir={MIRROR}", "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


# --------------------------------------------------------------------------- #
# an independent reader of the reference's formats (from the format description, not the reference's code)
# --------------------------------------------------------------------------- #
def read_eigen_csr(path: Path, n: int) -> sp.csr_matrix:
    raw = path.read_bytes()
    rows, cols, nnz, outer, inner = struct.unpack_from("<5i", raw, 0)
    assert (outer, inner) == (rows, cols)
    off = 20
    values = np.frombuffer(raw, dtype="<f4", count=nnz, offset=off)
    off += 4 * nnz
    starts = np.frombuffer(raw, dtype="<i4", count=outer, offset=off)
    off += 4 * outer
    columns = np.frombuffer(raw, dtype="<i4", count=nnz, offset=off)
    off += 4 * nnz
    assert off == len(raw), "trailing bytes"
    indptr = np.append(starts, nnz)
    assert rows == cols == n
    return sp.csr_matrix((values.astype(np.float64), columns, indptr), shape=(n, n))


def read_vector(path: Path) -> tuple[float, np.ndarray]:
    v = np.fromfile(path, dtype="<f8")
    return float(v[0]), v[1:]


def poisson3d(n: int, solid: np.ndarray | None = None) -> sp.csr_matrix:
    """7-point Laplacian, Neumann walls, identity rows on solid cells (our PoissonGrid's convention)."""
    one = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1])
    one = sp.lil_matrix(one)
    one[0, 0] = one[-1, -1] = 1
    eye = sp.identity(n)
    A = (sp.kron(sp.kron(one, eye), eye) + sp.kron(sp.kron(eye, one), eye) + sp.kron(sp.kron(eye, eye), one)).tocsr()
    A = A + sp.identity(n ** 3) * 1e-2  # SPD
    if solid is not None:
        keep = sp.diags((~solid.ravel()).astype(float))
        A = keep @ A @ keep + sp.diags(solid.ravel().astype(float))
    return sp.csr_matrix(A)


# --------------------------------------------------------------------------- #
# fast tests
# --------------------------------------------------------------------------- #
def keras_forward(weights: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """The reference's Keras "64" network written out in NumPy, channels last: ``x`` is ``(N, N, N, 1)``.

    Conv3D with ``padding='same'`` is a cross-correlation with a ``(3, 3, 3, in, out)`` kernel over a zero-padded
    input; AveragePooling3D(2) averages 2x2x2 blocks; UpSampling3D(2) repeats every cell; Dense maps channels.
    Residual adds come after the ReLU, in train.py's order.
    """
    pairs = iter(zip(weights[0::2], weights[1::2]))

    def conv(h, relu=True):
        k, bias = next(pairs)
        p = np.pad(h, ((1, 1), (1, 1), (1, 1), (0, 0)))
        n = h.shape[:3]
        y = sum(p[i:i + n[0], j:j + n[1], l:l + n[2]] @ k[i, j, l] for i in range(3) for j in range(3) for l in range(3))
        y = y + bias
        return np.maximum(y, 0) if relu else y

    x0 = conv(x, relu=False)
    la = conv(x0)
    lb = conv(la)
    la = conv(lb) + la
    lb = conv(la)
    n = lb.shape[0] // 2
    apa = lb.reshape(n, 2, n, 2, n, 2, -1).mean(axis=(1, 3, 5))
    for _ in range(3):
        apb = conv(apa)
        apa = conv(apb) + apa
    upa = apa.repeat(2, 0).repeat(2, 1).repeat(2, 2) + lb
    for _ in range(2):
        upb = conv(upa)
        upa = conv(upb) + upa
    k, bias = next(pairs)
    return upa @ k + bias


def test_keras_weights_port_to_our_network():
    """The reference's layout (kernels (3,3,3,in,out), creation order, Dense last) lands in DCDMNet unchanged."""
    import torch

    rng = np.random.default_rng(3)
    shapes = [(3, 3, 3, 1, 16)] + [(3, 3, 3, 16, 16)] * 14 + [(16, 1)]
    weights = []
    for shape in shapes:
        weights += [rng.normal(0, 0.3, shape).astype(np.float32), rng.normal(0, 0.1, shape[-1]).astype(np.float32)]
    net = dref.dcdmnet_from_keras(weights)
    assert sum(p.numel() for p in net.parameters()) == 97457
    x = rng.standard_normal((6, 6, 6, 1)).astype(np.float32)
    expected = keras_forward([w.astype(np.float64) for w in weights], x.astype(np.float64))[..., 0]
    with torch.no_grad():
        ours = net(torch.from_numpy(x[..., 0])[None, None])[0, 0].double().numpy()
    assert np.abs(ours - expected).max() < 1e-5 * np.abs(expected).max()
    # a swapped in/out kernel axis is not the same network
    swapped = list(weights)
    swapped[2] = np.ascontiguousarray(np.swapaxes(swapped[2], 3, 4))
    with torch.no_grad():
        other = dref.dcdmnet_from_keras(swapped)(torch.from_numpy(x[..., 0])[None, None])[0, 0].double().numpy()
    assert np.abs(other - expected).max() > 1e-2 * np.abs(expected).max()


def test_keras_port_rejects_what_is_not_the_reference_network():
    with pytest.raises(ValueError, match="pairs"):
        dref.dcdmnet_from_keras([np.zeros((3, 3, 3, 1, 16))])
    with pytest.raises(ValueError, match="neither"):
        dref.dcdmnet_from_keras([np.zeros((3, 3, 3, 1, 16)), np.zeros(16)] * 5)
    weights = [np.zeros((3, 3, 3, 1, 16)), np.zeros(16)] + [np.zeros((3, 3, 3, 16, 16)), np.zeros(16)] * 14
    weights += [np.zeros((16, 2)), np.zeros(2)]  # two output channels
    with pytest.raises(ValueError, match="does not fit"):
        dref.dcdmnet_from_keras(weights)


def test_matrix_writer_round_trips(tmp_path):
    A = sp.random(27, 27, density=0.2, random_state=1, format="csr") + sp.identity(27)
    A = A.tocoo()
    # unsorted, with an explicit zero and an empty row: the writer must sort, drop and keep the row empty
    A = sp.csr_matrix((np.append(A.data, 0.0), (np.append(A.row, 3), np.append(A.col, 5))), shape=(27, 27))
    A = A.tolil()
    A[7, :] = 0
    A = A.tocsr()
    dref.write_matrix(tmp_path / "A.bin", A)
    back = read_eigen_csr(tmp_path / "A.bin", 27)
    expected = sp.csr_matrix(A)
    expected.eliminate_zeros()
    np.testing.assert_allclose(back.toarray(), expected.toarray().astype(np.float32), rtol=0, atol=0)
    assert back.getnnz(axis=1)[7] == 0 and back.nnz == expected.nnz
    assert all(np.all(np.diff(back.indices[back.indptr[i]:back.indptr[i + 1]]) > 0) for i in range(27))  # sorted


def test_matrix_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="square"):
        dref.write_matrix(tmp_path / "A.bin", sp.csr_matrix(np.ones((2, 3))))
    with pytest.raises(ValueError, match="non-finite"):
        dref.write_matrix(tmp_path / "A.bin", sp.csr_matrix(np.array([[np.nan, 0], [0, 1.0]])))


def test_vector_writer_round_trips(tmp_path):
    v = np.random.default_rng(2).standard_normal(64)
    dref.write_vector(tmp_path / "b.bin", v)
    header, back = read_vector(tmp_path / "b.bin")
    assert header == 64.0
    np.testing.assert_array_equal(back, v)
    assert (tmp_path / "b.bin").stat().st_size == 8 * 65


def test_reference_form_empties_decoupled_rows_with_zero_rhs():
    n = 4
    solid = np.zeros((n, n, n), bool)
    solid[1:3, 1:3, 1:3] = True
    A = poisson3d(n, solid)
    b = np.random.default_rng(0).standard_normal(n ** 3) * ~solid.ravel()
    R, drop = dref.reference_form(A, b)
    np.testing.assert_array_equal(drop, solid.ravel())
    assert R.getnnz(axis=1)[drop].sum() == 0 and R.getnnz(axis=0)[drop].sum() == 0
    np.testing.assert_array_equal(R[~drop][:, ~drop].toarray(), A[~drop][:, ~drop].toarray())
    # the emptied system's solution, zeroed on the solid cells, solves the original one
    x = np.zeros(n ** 3)
    x[~drop] = np.linalg.solve(A[~drop][:, ~drop].toarray(), b[~drop])
    assert np.linalg.norm(A @ x - b) < 1e-10 * np.linalg.norm(b)
    # a decoupled row with a nonzero right-hand side is kept
    b2 = b.copy()
    first = int(np.flatnonzero(solid.ravel())[0])
    b2[first] = 1.0
    R2, drop2 = dref.reference_form(A, b2)
    assert not drop2[first] and R2[first, first] == A[first, first]
    # with training samples (s, n), a row is emptied only where every sample is zero
    _, drop3 = dref.reference_form(A, np.stack([b, b2]))
    np.testing.assert_array_equal(drop3, drop2)


def test_loading_number_respects_the_reference_loop():
    assert dref._loading_number(200, 10, None) == 100  # the reference's default chunk
    assert dref._loading_number(20, 2, None) == 20
    assert dref._loading_number(40, 1, None) == 40
    L = dref._loading_number(300, 10, None)
    assert L == 100
    with pytest.raises(ValueError, match="no chunk size"):
        dref._loading_number(15, 10, None)
    with pytest.raises(ValueError, match="does not fit"):
        dref._loading_number(200, 10, 50)  # its last 10% is 5 < one batch of 10


def test_prepare_reference_applies_every_patch(checkout, tmp_path):
    before = {p: (checkout / p).read_text() for p in dref.CHECKOUT_FILES}
    patches = dref.prepare_reference(checkout, tmp_path / "scratch")
    assert len(patches) == 10 and all(isinstance(p, str) and p for p in patches)
    assert {p: (checkout / p).read_text() for p in dref.CHECKOUT_FILES} == before  # the checkout is untouched
    train = (tmp_path / "scratch" / "src" / "train.py").read_text()
    test = (tmp_path / "scratch" / "src" / "test_all_cg.py").read_text()
    assert "choices=[64, 128]" not in train and "np.mat(" not in train and "err/b_size_\n" not in train
    for needle in ("if N!=128:\n    first_layer", "lr = args.lr", "args.num_rhs", 'parser.add_argument("--rhs_dir"',
                   "tf.cast(b_size_, tf.float32)", "if N != 128:\n    A_file_name"):
        assert needle in train, needle
    assert "choices=[64, 128" not in test and "max_dcdm_iter = args.max_dcdm_iter" in test
    for path in (tmp_path / "scratch" / "src").glob("*.py"):
        compile(path.read_text(), str(path), "exec")
    assert (tmp_path / "scratch" / "lib" / "conjugate_gradient.py").is_file()
    # applying again to the same scratch starts from a fresh copy
    assert dref.prepare_reference(checkout, tmp_path / "scratch") == patches


def test_patches_fail_loudly_on_an_unexpected_checkout(checkout, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(checkout, other, ignore=shutil.ignore_patterns(".git"))
    train = other / "src" / "train.py"
    train.write_text(train.read_text().replace("return err/b_size_", "return err / b_size_"))
    with pytest.raises(RuntimeError, match=r"patch failed.*err/b_size_.*train\.py"):
        dref.prepare_reference(other, tmp_path / "scratch")


def test_a_directory_that_is_not_a_checkout_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="2023_DCDM"):
        dref.prepare_reference(tmp_path, tmp_path / "scratch")
    A = poisson3d(4)
    with pytest.raises(FileNotFoundError, match="does not look like a checkout of github.com/ayano721/2023_DCDM"):
        dref.run_reference(tmp_path, train_matrix=A, train_rhs=np.ones((10, 64), np.float32), grid=(4, 4, 4),
                           batch_size=1)


@pytest.mark.parametrize("kwargs, match", [
    ({"grid": (4, 4)}, "cubic"), ({"grid": (5, 5, 5)}, "even"), ({"grid": (4, 4, 8)}, "cubic"),
    ({"train_rhs": np.ones((10, 63), np.float32)}, "train_rhs"), ({"epochs": 0}, "epochs"),
    ({"batch_size": 3}, "no chunk size"), ({"rtol": 0.0}, "rtol"), ({"max_iters": 0}, "max_iters"),
    ({"test_systems": [("t", (6, 6, 6), np.eye(64), np.ones(64))]}, "test system .t. on"),
    ({"test_systems": [("t", (4, 4, 4), np.eye(64), np.zeros(64))]}, "nonzero b"),
])
def test_bad_arguments_are_rejected_before_anything_runs(tmp_path, kwargs, match):
    args = {"train_matrix": poisson3d(4), "train_rhs": np.ones((10, 64), np.float32), "grid": (4, 4, 4),
            "batch_size": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        dref.run_reference(tmp_path / "nowhere", **args)


def test_a_failing_reference_raises_with_its_log(checkout, tmp_path):
    # a site whose "tensorflow" fails to import: the probe finds it, the driver dies, the error carries its stderr
    site = tmp_path / "site"
    for mod in ("tensorflow", "h5py"):
        (site / mod).mkdir(parents=True)
        (site / mod / "__init__.py").write_text(f"raise ImportError('stub {mod} for a test: boom')\n")
    A = poisson3d(4)
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 1 during training.*stub tensorflow for a test: boom"):
        dref.run_reference(checkout, site=site, train_matrix=A, train_rhs=np.ones((10, 64), np.float32),
                           grid=(4, 4, 4), batch_size=1, timeout=120, poll_seconds=0.2)


def test_driver_is_valid_python():
    compile(dref._DRIVER, dref._SCRIPT_NAME, "exec")


def test_missing_dependencies_lists_module_names(tmp_path):
    missing = dref.missing_dependencies(site=tmp_path)  # an empty site directory adds nothing
    assert isinstance(missing, list) and set(missing) <= set(dref.REFERENCE_DEPENDENCIES)


def test_reference_env_pins_threads_and_paths(tmp_path):
    env = dref.reference_env(tmp_path, 1, lib_paths=("/x/lib", "/x/src"))
    assert env["PYTHONPATH"].split(os.pathsep)[:3] == ["/x/lib", "/x/src", str(tmp_path.resolve())]
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        assert env[var] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == ""


# --------------------------------------------------------------------------- #
# end to end (TensorFlow 2.15)
# --------------------------------------------------------------------------- #
def _site() -> Path | None:
    site = Path(os.environ.get("NEURALNUMERICS_DCDM_REFERENCE_SITE", DEFAULT_SITE))
    return site if site.is_dir() else None


@pytest.mark.slow
def test_reference_trains_and_solves_a_small_poisson_system(checkout, tmp_path):
    site = _site()
    if dref.missing_dependencies(site):
        pytest.skip("TensorFlow 2.15 is not importable: set NEURALNUMERICS_DCDM_REFERENCE_SITE to a site directory")
    n = 8
    rng = np.random.default_rng(0)
    A = poisson3d(n)
    # the paper's kind of data, exactly: eigenvectors instead of Ritz vectors, 9x weight on the lower half
    _, V = np.linalg.eigh(A.toarray())
    c = rng.standard_normal((n ** 3, 100))
    c[: n ** 3 // 2] *= 9
    rhs = (V @ c).T
    rhs = (rhs / np.linalg.norm(rhs, axis=1, keepdims=True)).astype(np.float32)
    solid = np.zeros((n,) * 3, bool)
    solid[3:5, 3:5, 3:5] = True
    A_test = poisson3d(n, solid)
    b = A_test @ (rng.standard_normal(n ** 3) * ~solid.ravel())
    # 10 passes over 100 vectors (100 Adam steps): a network trained much less makes DCDM stagnate (its
    # direction becomes A-orthogonal to the error and, the network being deterministic, stays so)
    res = dref.run_reference(checkout, site=site, scratch=tmp_path / "work", train_matrix=A, train_rhs=rhs,
                             grid=(n, n, n), epochs=10, batch_size=10, lr=1e-3,
                             test_systems=[("box", (n, n, n), A_test, b)], rtol=1e-4, max_iters=400, timeout=900)
    assert len(res["patches"]) == 10 and res["versions"]["tensorflow"].startswith("2.")
    train = res["train"]
    assert train["samples"] == 100 and train["epochs"] == 10 and train["loading_number"] == 100
    assert len(train["epoch_seconds"]) == len(train["epoch_losses"]) == 10
    assert train["seconds"] > 0 and train["seconds_per_sample"] == pytest.approx(train["seconds"] / 1000)
    assert train["final_loss"] < 0.5 * train["epoch_losses"][0] and train["params"] == 97457
    assert train["effective_lr"] == pytest.approx(1e-3)
    box = res["solves"]["box"]
    assert box["dropped_rows"] == 8 and box["grid"] == (n, n, n)
    assert box["converged"] and box["residual"] < 1e-4 and box["true_residual"] < 2e-4
    assert box["iterations"] == len(box["residuals"]) - 1 >= 1 and box["residuals"][0] == pytest.approx(1.0)
    assert box["seconds"] > 0
    # the recorded weights: 16 layers before and after training, and the trained ones port to our network
    import torch

    initial, trained = train["initial_weights"], train["trained_weights"]
    assert len(initial) == len(trained) == 32 and initial[2].shape == (3, 3, 3, 16, 16)
    assert not np.allclose(initial[2], trained[2])
    probe_x, probe_y = train["probe"]
    with torch.no_grad():
        ours = dref.dcdmnet_from_keras(trained)(torch.from_numpy(probe_x[..., 0]).unsqueeze(1))[:, 0].numpy()
    assert np.abs(ours - probe_y[..., 0]).max() < 1e-5 * np.abs(probe_y).max()
