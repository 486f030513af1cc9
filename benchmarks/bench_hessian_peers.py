"""Curvature against PyHessian and hessian-eigenthings 1.0, each held to scipy's eigsh at 1e-8.

1. accuracy: on the snapshots of a short VGG-A (BatchNorm) run on the CIFAR subset, `landscape`'s default
   top-5 (tol 1e-3, the confirmed stopping rule) against eigsh at 1e-8 on the same operator: the relative error of
   each of the top five and the closest pair among them.
2. peers: top-3 eigenvalues of the last snapshot (eval-mode BatchNorm, the same batches, as PyHessian and
   hessian-eigenthings differentiate a model in eval mode) with each library's defaults, and again with the
   products `landscape` used: products, seconds, worst relative error against eigsh.
3. curvlinops 3.0 (`curvlinops-for-pytorch`; operators exported to scipy): top-1 and top-3 of the Hessian and of the
   Gauss-Newton matrix of the last snapshot, eigsh at tol 1e-3 on curvlinops' operator against `landscape` at tol
   1e-3 (its confirmed stopping rule; the GGN in closed form), both held to eigsh at 1e-8 on our operator:
   products (counted), seconds, worst relative error, and the time ratio.
4. trace: an MLP small enough for its explicit Hessian: the relative RMSE over 10 seeds of each library's trace at
   30 and 96 products (Hutch++ and XTrace here and in curvlinops, Hutch++ in hessian-eigenthings, Hutchinson in
   PyHessian; ours also after a top-1 Lanczos, deflated by its basis, products counted in all).
5. memory (--memory): peak resident memory of one whole-model top-3 on the CIFAR ResNet-18 (11M parameters) in a
   fresh process per library: `landscape` with its default basis, with --basis-vectors 20 (restarted), PyHessian,
   hessian-eigenthings; and `landscape`'s values against eigsh.

    pip install -e '.[bench]'
    python benchmarks/bench_hessian_peers.py --data-root ../shared/data --width 0.25 --images 512
    python benchmarks/bench_hessian_peers.py --data-root ../shared/data --memory --images 32
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.engine.curvature import top_eigenvalues  # noqa: E402
from landscape.engine.operators import GaussNewtonOperator  # noqa: E402
from landscape.engine.trace import deflated_trace, hutchpp_trace, xtrace_trace  # noqa: E402
from landscape.engine.functional import module_buffers, prepared_module, state_of  # noqa: E402
from landscape.engine.operators import HessianOperator  # noqa: E402
from landscape.training.config import RunConfig  # noqa: E402
from landscape.training.data import Normalizer, eval_batches, load_dataset  # noqa: E402
from landscape.training.models import build_model  # noqa: E402

TRUTH_TOL = 1e-8


def our_operator(model: nn.Module, batches, bn: str = "eval", kind: str = "hessian") -> HessianOperator:
    module = prepared_module(model, bn)
    params, buffers = state_of(model)
    operator = GaussNewtonOperator if kind == "ggn" else HessianOperator
    return operator(module, params, module_buffers(module, buffers), batches)


def curvlinops_top(model: nn.Module, batches, k: int, kind: str, tol: float = 1e-3) -> tuple[np.ndarray, int, float]:
    """eigsh at `tol` on curvlinops' Hessian or GGN operator (model in eval mode); (top k, products, seconds)."""
    from curvlinops import GGNLinearOperator, HessianLinearOperator
    from scipy.sparse.linalg import eigsh

    model = model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    cls = GGNLinearOperator if kind == "ggn" else HessianLinearOperator
    operator = cls(model, nn.CrossEntropyLoss(), params, batches, check_deterministic=False)
    linear = operator.to_scipy()
    counted = [0]

    def matvec(v):
        counted[0] += 1
        return linear.matvec(v)

    from scipy.sparse.linalg import LinearOperator

    start = time.perf_counter()
    values = eigsh(LinearOperator(linear.shape, matvec=matvec, dtype=linear.dtype), k=k, which="LA", tol=tol,
                   return_eigenvectors=False)
    return np.sort(values)[::-1], counted[0], time.perf_counter() - start


def curvlinops_table(model: nn.Module, batches) -> None:
    print("\n3. curvlinops 3.0 + eigsh (tol 1e-3) against landscape (tol 1e-3), both against eigsh at 1e-8")
    print("| matrix | curvlinops products | seconds | worst error | landscape products | seconds | worst error "
          "| time ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in ("hessian", "ggn"):
        truth, _ = eigsh_top(our_operator(model, batches, kind=kind), 3)
        for k in (1, 3):
            try:
                theirs = curvlinops_top(model, batches, k, kind)
            except ImportError:
                print("curvlinops is not installed: pip install -e '.[bench]'")
                return
            mine = ours(our_operator(model, batches, kind=kind), k)
            print(f"| {kind} top-{k} | {theirs[1]} | {theirs[2]:.1f} | {worst_error(theirs[0], truth[:k]):.1e} | "
                  f"{mine[1]} | {mine[2]:.1f} | {worst_error(mine[0], truth[:k]):.1e} | {mine[2] / theirs[2]:.2f}x |")


def eigsh_top(operator: HessianOperator, k: int) -> tuple[np.ndarray, int]:
    """scipy's ARPACK (implicitly restarted Lanczos) at tol 1e-8: the top k (descending) and its products."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    before = operator.products
    linear = LinearOperator((operator.size, operator.size), dtype=np.float64,
                            matvec=lambda v: operator(torch.as_tensor(np.ravel(v), device=operator.device)).cpu().numpy())
    values = eigsh(linear, k=k, which="LA", tol=TRUTH_TOL, return_eigenvectors=False)
    return np.sort(values)[::-1], operator.products - before


def ours(operator: HessianOperator, k: int, **options) -> tuple[np.ndarray, int, float]:
    before, start = operator.products, time.perf_counter()
    eigen = top_eigenvalues(operator, k, **options)
    return eigen.values, operator.products - before, time.perf_counter() - start


def count_calls(owner, method: str) -> list[int]:
    """Wrap owner.method to count its calls; the returned one-element list holds the count."""
    counted = [0]
    original = getattr(owner, method)

    def counting(*args):
        counted[0] += 1
        return original(*args)

    setattr(owner, method, counting)
    return counted


def pyhessian_top(model, batches, k: int, max_iter: int = 100) -> tuple[np.ndarray, int, float]:
    from pyhessian import hessian as PyHessian

    computer = PyHessian(model.eval(), F.cross_entropy, dataloader=batches, cuda=next(model.parameters()).is_cuda)
    counted = count_calls(computer, "dataloader_hv_product")
    start = time.perf_counter()
    values, _ = computer.eigenvalues(top_n=k, maxIter=max_iter)
    return np.sort(np.asarray(values, dtype=float))[::-1], counted[0], time.perf_counter() - start


def eigenthings_operator(model, batches):
    import hessian_eigenthings as he

    return he.HessianOperator(model.eval(), batches, he.supervised_loss(F.cross_entropy))


def eigenthings_top(model, batches, k: int, max_iter: int | None = None) -> tuple[np.ndarray, int, float]:
    import hessian_eigenthings as he

    operator = eigenthings_operator(model, batches)
    counted = count_calls(operator, "matvec")
    start = time.perf_counter()
    result = he.lanczos(operator, k=k, seed=0, **({"max_iter": max_iter} if max_iter else {}))
    return np.sort(np.asarray(result.eigenvalues, dtype=float))[::-1], counted[0], time.perf_counter() - start


def worst_error(values: np.ndarray, truth: np.ndarray) -> float:
    return float(np.max(np.abs(values[:len(truth)] - truth) / np.abs(truth)))


def trained_snapshots(args, device) -> tuple[list[nn.Module], list]:
    """A short SGD run of VGG-A with BatchNorm; its models after each epoch, and the measured batches."""
    from landscape.commands.sources import ImageSet, snapshot_model
    from landscape.files.run_file import read_run
    from landscape.files.weights_file import weights_of_run
    from landscape.training.runner import train

    folder = tempfile.mkdtemp()
    config = RunConfig(model="vgg_bn", lrs=(0.05,), optimizer="sgd", momentum=0.9, width=args.width,
                       data_root=args.data_root, epochs=args.epochs, train_subset=2048, snapshot_every=1,
                       device=str(device))
    run = read_run(train(config, Path(folder) / "peers.h5", progress=False))
    weights = weights_of_run(run)
    models = [snapshot_model(run, weights, 0, epoch, device) for epoch in weights.epochs if epoch > 0]
    images = ImageSet.of_run(run, device)
    return models, list(images.batches(images.split("train", args.images), 128))


def accuracy_and_peers(args, device, peers: bool = True, curvlinops: bool = True) -> None:
    models, batches = trained_snapshots(args, device)
    print(f"1. landscape's default top-5 (tol 1e-3) against eigsh at {TRUTH_TOL:g}; VGG-A BN width {args.width}, "
          f"{args.images} images, eval-mode BatchNorm")
    print(f"{'epoch':>6}  {'products':>8}  {'eigsh products':>14}  {'closest pair gap':>16}  "
          + "  ".join(f"{'err top-' + str(i + 1):>10}" for i in range(5)))
    for epoch, model in enumerate(models, start=1):
        operator = our_operator(model, batches)
        truth, truth_products = eigsh_top(operator, 5)
        values, products, _ = ours(operator, 5)
        gap = float(np.min(np.abs(np.diff(truth)) / np.abs(truth[:-1])))
        errors = np.abs(values - truth) / np.abs(truth)
        print(f"{epoch:>6}  {products:>8}  {truth_products:>14}  {gap:>16.2e}  "
              + "  ".join(f"{e:>10.1e}" for e in errors))
    if curvlinops:
        curvlinops_table(models[-1], batches)
    if not peers:
        return
    model = models[-1]
    operator = our_operator(model, batches)
    truth, _ = eigsh_top(operator, 3)
    print(f"\n2. top-3 of the last snapshot against eigsh at {TRUTH_TOL:g} (worst relative error of the three)")
    print(f"{'':>36}  {'products':>8}  {'seconds':>8}  {'worst error':>11}")
    values, products, seconds = ours(our_operator(model, batches), 3)
    rows = [("landscape (default)", values, products, seconds)]
    for tol in (1e-2, 1e-1):  # looser stops: the peers' accuracy in fewer products
        rows.append((f"landscape (tol {tol:g})", *ours(our_operator(model, batches), 3, tol=tol)))
    for name, run in (("PyHessian (default)", lambda: pyhessian_top(model, batches, 3)),
                      (f"PyHessian ({products} products)", lambda: pyhessian_top(model, batches, 3,
                                                                                  max(1, products // 3))),
                      ("hessian-eigenthings (default)", lambda: eigenthings_top(model, batches, 3)),
                      (f"hessian-eigenthings ({products} products)",
                       lambda: eigenthings_top(model, batches, 3, products))):
        try:
            rows.append((name, *run()))
        except ImportError as exc:
            print(f"{name}: not installed ({exc.name}); pip install -e '.[bench]'")
    for name, values, used, seconds in rows:
        print(f"{name:>36}  {used:>8}  {seconds:>8.2f}  {worst_error(values, truth):>11.1e}")


def trace_table(seeds: int = 10, data_root: str | None = None) -> None:
    """Relative RMSE of each library's trace estimate of the explicit Hessian of bench_trace.py's MLP."""
    from bench_trace import Matrix, explicit_hessian, images

    torch.manual_seed(0)
    x, y = images(data_root)
    model = nn.Sequential(nn.Linear(48, 40), nn.Tanh(), nn.Linear(40, 10)).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    hessian = explicit_hessian(model, x, y)
    exact, matrix = float(np.trace(hessian)), torch.as_tensor(hessian)
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, len(y), 128)]
    print(f"\n4. trace of a trained MLP's explicit Hessian ({hessian.shape[0]:,} parameters, exact {exact:.6g}): "
          f"relative RMSE over {seeds} seeds")
    print("| estimator | products | relative RMSE |")
    print("| --- | --- | --- |")
    for products in (30, 96):  # curvlinops' XTrace takes an even number, its Hutch++ a multiple of 3
        rows: dict[str, list[float]] = {"landscape Hutch++": [], "landscape XTrace": []}
        for seed in range(seeds):
            rows["landscape Hutch++"].append(hutchpp_trace(Matrix(hessian), products, seed)[0])
            rows["landscape XTrace"].append(xtrace_trace(Matrix(hessian), products, seed)[0])
        try:
            import curvlinops

            for name, estimator in (("curvlinops Hutch++", curvlinops.hutchpp_trace),
                                    ("curvlinops XTrace", curvlinops.xtrace)):
                rows[name] = []
                for seed in range(seeds):
                    torch.manual_seed(seed)
                    rows[name].append(float(estimator(matrix, products)))
        except ImportError:
            print("curvlinops is not installed: its rows are missing")
        try:
            import hessian_eigenthings as he

            rows["hessian-eigenthings Hutch++"] = [
                float(he.trace(eigenthings_operator(model, batches), num_matvecs=products, seed=seed).estimate)
                for seed in range(seeds)]
        except ImportError:
            print("hessian-eigenthings is not installed: its row is missing")
        try:
            from pyhessian import hessian as PyHessian

            pyhessian = []
            for seed in range(seeds):
                torch.manual_seed(seed)
                pyhessian.append(float(np.mean(PyHessian(model, F.cross_entropy, dataloader=batches, cuda=False).trace(
                    maxIter=products, tol=0.0))))
            rows["PyHessian Hutchinson"] = pyhessian
        except ImportError:
            print("PyHessian is not installed: its row is missing")
        for name, values in rows.items():
            print(f"| {name} | {products} | {relative_rmse(values, exact):.4f} |")
        deflated, counts = [], []
        for seed in range(seeds):
            operator = Matrix(hessian)
            eigen = top_eigenvalues(operator, 1, seed=seed, keep_basis=True)
            lanczos_products = operator.products
            deflated.append(deflated_trace(operator, eigen.krylov, eigen.krylov_trace,
                                           products - lanczos_products if products > lanczos_products else 1,
                                           seed)[0])
            counts.append(operator.products)
        print(f"| landscape top-1 Lanczos, then Krylov-deflated (in all) | {np.mean(counts):.0f} | "
              f"{relative_rmse(deflated, exact):.4f} |")


def relative_rmse(values: list[float], exact: float) -> float:
    return float(np.sqrt(np.mean((np.asarray(values) - exact) ** 2)) / abs(exact))


def memory_child(library: str, images: int, data_root: str, basis: int) -> None:
    """One whole-model top-3 on the CIFAR ResNet-18 in this process; prints JSON (values, products, seconds, peak)."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10)
    dataset = load_dataset("cifar10", data_root, device=torch.device("cpu"))
    normalize = Normalizer(dataset.mean, dataset.std, dataset.train.device)
    batches = [b for b, _ in zip(eval_batches(dataset.train, normalize, images), range(1))]
    model.eval()
    if library == "landscape":
        operator = our_operator(model, batches)
        values, products, seconds = ours(operator, 3, basis_vectors=basis or None)
        truth, truth_products = eigsh_top(operator, 3)
        extra = {"eigsh": truth.tolist(), "eigsh_products": truth_products}
    elif library == "pyhessian":
        values, products, seconds = pyhessian_top(model, batches, 3)
        extra = {}
    else:
        values, products, seconds = eigenthings_top(model, batches, 3)
        extra = {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    print(json.dumps({"values": list(map(float, values)), "products": products, "seconds": seconds, "peak_gib": peak,
                      **extra}))


def memory_table(args) -> None:
    print(f"\n4. whole-model top-3 of the CIFAR ResNet-18 (11.2M parameters, {args.images} images): peak resident "
          f"memory of a fresh process")
    print(f"{'':>32}  {'products':>8}  {'seconds':>8}  {'peak GiB':>8}  top eigenvalue")
    for name, library, basis in (("landscape (default basis)", "landscape", 0),
                                 ("landscape (--basis-vectors 20)", "landscape", 20),
                                 ("PyHessian", "pyhessian", 0), ("hessian-eigenthings", "eigenthings", 0)):
        done = subprocess.run([sys.executable, __file__, "--memory-child", library, "--images", str(args.images),
                               "--data-root", args.data_root, "--basis", str(basis)], capture_output=True, text=True)
        if done.returncode:
            print(f"{name:>32}  failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        note = (f"  (eigsh at 1e-8: {row['eigsh'][0]:.6g}, worst error of top-3 "
                f"{worst_error(np.array(row['values']), np.array(row['eigsh'])):.1e})" if "eigsh" in row else "")
        print(f"{name:>32}  {row['products']:>8}  {row['seconds']:>8.1f}  {row['peak_gib']:>8.2f}  "
              f"{row['values'][0]:.6g}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", action="store_true", help="only the ResNet-18 memory table")
    parser.add_argument("--skip", default="", help="comma list of parts to leave out: peers,curvlinops,trace")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--basis", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.images, args.data_root, args.basis)
        return
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.memory:
        memory_table(args)
        return
    skip = set(filter(None, args.skip.split(",")))
    accuracy_and_peers(args, torch.device(args.device), "peers" not in skip, "curvlinops" not in skip)
    if "trace" not in skip:
        trace_table(data_root=args.data_root)


if __name__ == "__main__":
    main()
