"""A long ensemble from the command line: many seeds of GD, SGD or label-noise SGD on a two-layer tanh net,
sharded over every device (`analysis.ensembles.ensemble`; and over every process when started by
`scripts/tools/launch.py`), run in chunks of steps with the whole state (parameters, keys, step, the loss so
far) written atomically to --out after each chunk (`analysis.store.resumable`). Kill it and run the same
command again: it goes on from the last chunk and ends with the same bits as a run that never stopped. A
folder holding another run's state is refused, never overwritten.

    python scripts/tools/ensemble.py --flow sgd --seeds 1024 --steps 1000000 --chunk 10000 --out results/ens

The state (`analysis.store`: --out/arrays.npz) holds `state/loss` (seeds, saves), `state/ts` (saves,) and the
final parameters, `state/params/...` in the structure of the model's parameters.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from analysis import ensembles  # noqa: E402

ensembles.init_processes()  # before JAX picks its devices

import jax  # noqa: E402
import numpy as np  # noqa: E402

from analysis import store  # noqa: E402
from flows import gd, label_noise_sgd, sgd  # noqa: E402
from models import Problem, TwoLayerNet, data  # noqa: E402


def arguments(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flow", choices=("gd", "sgd", "label_noise_sgd"), default="sgd")
    p.add_argument("--seeds", type=int, default=64, help="ensemble size")
    p.add_argument("--steps", type=int, default=2000, help="steps in all")
    p.add_argument("--chunk", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--save-every", type=int, default=50, help="steps between recorded losses")
    p.add_argument("--eta", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=8, help="minibatch size (sgd, label_noise_sgd)")
    p.add_argument("--sigma", type=float, default=0.5, help="label noise (label_noise_sgd)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--x64", action="store_true", help="float64")
    p.add_argument("--out", type=Path, required=True, help="folder of the run's state (and result)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("seeds", "steps", "chunk", "save_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.steps % args.chunk or args.chunk % args.save_every:
        p.error("--steps must be a multiple of --chunk, and --chunk of --save-every")
    return args


def main(argv=None):
    args = arguments(argv)
    jax.config.update("jax_enable_x64", args.x64)
    kx, kt, kn = jax.random.split(jax.random.key(args.seed), 3)
    X = data.gaussian(kx, args.n, args.d)
    y, _ = data.two_layer_teacher(kt, X, width=4, activation="tanh")
    P = Problem(TwoLayerNet(args.d, args.width, key=kn, activation="tanh"), X, y)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), 1), args.seeds)
    flow = {"gd": gd, "sgd": sgd, "label_noise_sgd": label_noise_sgd}[args.flow]
    hyper = {
        "gd": {},
        "sgd": dict(batch_size=args.batch),
        "label_noise_sgd": dict(batch_size=args.batch, sigma=args.sigma),
    }[args.flow]

    def run(key, params, first_step):
        keyed = {} if args.flow == "gd" else dict(key=key)
        return flow(P, params, steps=args.chunk, eta=args.eta, save_every=args.save_every,
                    first_step=first_step, **keyed, **hyper)  # fmt: skip

    def init():
        return {
            "params": jax.tree.map(lambda leaf: np.broadcast_to(leaf, (args.seeds, *leaf.shape)), P.params),
            "loss": np.full((args.seeds, 1), float(P.loss(P.params))),
            "ts": np.zeros(1),
        }

    def advance(state, i):
        first = np.full(args.seeds, i * args.chunk)
        traj = ensembles.ensemble(run, keys, state["params"], first)  # one compilation for every chunk
        return {
            "params": jax.tree.map(lambda leaf: leaf[:, -1], traj.params),
            "loss": np.concatenate([state["loss"], np.asarray(traj.stats["loss"])[:, 1:]], axis=1),
            "ts": np.concatenate([state["ts"], np.asarray(traj.ts)[0, 1:]]),
        }

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    del config["out"], config["no_progress"]
    state = store.resumable(
        args.out,
        config,
        init,
        advance,
        args.steps // args.chunk,
        progress=not args.no_progress,
        save=jax.process_index() == 0,
    )
    if jax.process_index() == 0:
        loss = state["loss"][:, -1]
        where = f"{jax.device_count()} devices ({jax.process_count()} processes)"
        print(f"{args.flow}, {args.seeds} seeds on {where}: final loss {loss.mean():.4g} +- {loss.std():.2g}")
        print(f"data:   {args.out}")


if __name__ == "__main__":
    main()
