"""Mode connectivity: the cost of weight matching, of a BatchNorm-recomputed line and of training a Bezier curve, and
the barrier between two seeds before and after alignment.

Two VGG-A (BatchNorm) runs that differ only in their seed, on the CIFAR subset; then
1. weight matching of the two at the given width, and of two fresh ResNet-20s (seconds, units moved);
2. `landscape connect` of the two seeds: the line, the aligned line and a Bezier curve trained for one epoch,
   25 points each, BatchNorm recomputed: seconds, and each path's loss barrier and accuracy drop on the test images.

    python benchmarks/bench_connect.py --data-root ../shared/data
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.commands.connect import ConnectOptions, compute_connection  # noqa: E402
from landscape.connectivity.matching import weight_matching  # noqa: E402
from landscape.connectivity.permutations import permutation_spec  # noqa: E402
from landscape.files.path_file import read_path  # noqa: E402
from landscape.training.config import RunConfig  # noqa: E402
from landscape.training.models import build_model  # noqa: E402
from landscape.training.runner import train  # noqa: E402


def matching_seconds(name: str, width: float, a: dict, b: dict) -> str:
    model = build_model(name, width=width).eval()
    start = time.perf_counter()
    spec = permutation_spec(model, torch.randn(2, 3, 32, 32))
    matched = weight_matching(spec, a, b)
    return (f"{name} width {width:g}: {len(spec.sizes)} groups, {sum(spec.sizes)} units, {matched.moved} moved, "
            f"{matched.sweeps} sweeps, {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--points", type=int, default=25)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    runs = []
    for seed in (0, 1):
        config = RunConfig(model="vgg_bn", lrs=(0.05,), optimizer="sgd", momentum=0.9, width=args.width,
                           data_root=args.data_root, epochs=args.epochs, seed=seed, device=args.device)
        runs.append(train(config, folder / f"seed{seed}.h5", progress=False))
    from landscape.commands.sources import snapshot_model
    from landscape.files.run_file import read_run
    from landscape.files.weights_file import weights_of_run

    states = []
    for path in runs:
        run = read_run(path)
        weights = weights_of_run(run)
        states.append(snapshot_model(run, weights, 0, weights.epochs[-1], torch.device("cpu")).state_dict())
    print(f"1. weight matching ({torch.get_num_threads()} threads)")
    print("   " + matching_seconds("vgg_bn", args.width, *states))
    torch.manual_seed(0)
    fresh = [build_model("resnet20").state_dict() for _ in range(2)]
    print("   " + matching_seconds("resnet20", 1.0, *fresh))
    print(f"\n2. two seeds of VGG-A BN width {args.width}, {args.epochs} epochs of SGD (lr 0.05, momentum 0.9); "
          f"{args.points} points, BatchNorm recomputed on 1,024 images, {args.images} train / 1,024 test images")
    for curve, align in (("line", "none"), ("bezier", "weights")):
        options = ConnectOptions(points=args.points, align=align, curve=curve, images=args.images,
                                 device=args.device, data_root=args.data_root)
        start = time.perf_counter()
        out = compute_connection(runs[0], runs[1], options, folder / f"{curve}.h5", progress=False)
        seconds = time.perf_counter() - start
        result = read_path(out)
        print(f"   connect --align {align} --curve {curve}: {seconds:.1f} s")
        for name, splits in result.values.items():
            for split in splits:
                barrier = result.barriers[name][split]
                print(f"   {name:>13} {split:>5}: loss barrier {barrier['loss']:.4f}, accuracy drop "
                      f"{100 * barrier.get('acc', float('nan')):.2f}% (ends {splits[split]['loss'][0]:.3f} / "
                      f"{splits[split]['loss'][-1]:.3f})")


if __name__ == "__main__":
    main()
