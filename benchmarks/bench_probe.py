"""Cost of Santurkar probes: the same `landscape run` with probes off and every K steps.

    python benchmarks/bench_probe.py --data-root ../shared/data --probe-every 10

A probe costs one forward and backward per multiplier per run, so the expected overhead is about
J / (K * (1 + eval share)) of the training time; this prints the measured one.
"""
from __future__ import annotations

from landscape.training.config import RunConfig, parse_lrs, parse_multipliers

from common import run_arguments, time_landscape_run


def main() -> None:
    parser = run_arguments(__doc__.splitlines()[0])
    parser.add_argument("--probe-every", type=int, default=10)
    parser.add_argument("--probe-multipliers", default="0.5:4:8")
    parser.add_argument("--probe-batch", action="store_true", help="all multipliers in one vmapped pass")
    args = parser.parse_args()
    base = RunConfig(model=args.model, lrs=parse_lrs(args.lrs), width=args.width, data_root=args.data_root,
                     train_subset=args.train_subset, epochs=args.epochs, batch_size=args.batch_size,
                     device=args.device).validate()
    probed = RunConfig(**{**base.__dict__, "probe_every": args.probe_every, "probe_batch": args.probe_batch,
                          "probe_multipliers": parse_multipliers(args.probe_multipliers)}).validate()
    plain_s = min(time_landscape_run(base) for _ in range(args.repeats))
    probed_s = min(time_landscape_run(probed) for _ in range(args.repeats))
    j = len(probed.probe_multipliers)
    print(f"{base.model} width {base.width}, {len(base.lrs)} rates, {base.train_subset} images, "
          f"{j} multipliers every {args.probe_every} steps" + (", batched" if args.probe_batch else ""))
    print(f"  without probes: {plain_s:.2f} s")
    print(f"  with probes:    {probed_s:.2f} s  overhead {100 * (probed_s / plain_s - 1):.1f}% "
          f"(about {j / args.probe_every:.2f} extra forward+backward per step)")


if __name__ == "__main__":
    main()
