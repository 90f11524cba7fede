"""Phi where it is called often: `limit_map` of a trajectory's saves, the stiff Rosenbrock-W flow of both
modes against the explicit flow it replaced, float64.

Problems: the digits MLP 64-64-64-1 with tanh of `slow_flow_real_net`'s quick preset (n = 64, p = 8,385),
and the two-layer tanh net of the slow flow's growth study at N = `--sizes` (p = 32 N). Points: a
label-noise GD iterate near the manifold (a save; eta = 0.1 on the MLP, 0.5 on the two-layer net, sigma =
0.5, from Phi of the initialisation) and the initialisation itself. Rows, each compiled first, medians of
`--repeats` interleaved calls in this process:

- `limit_map`: the library's dense mode, its default tolerances: up to 256 Tsit5 steps, then, where the flow
  has not settled (stiff), ROS34PW2 with the Gauss-Newton W (flows/_rosenbrock.py);
- `tsit5`, the baseline written here: what `limit_map` ran before, Tsit5 gradient flow (rtol = atol = tol /
  100) to an RMS gradient of tol = 1.5e-7, then the Gauss-Newton landing (`flows.retract`);
- `limit_map, matrix-free` and `tsit5, matrix-free`: the same two where J is never formed (the Rosenbrock-W
  stages solved by conjugate gradients, the landing's Gauss-Newton steps too), `--matrix-free` (the
  digits MLP only: its Tsit5 baseline takes ~2,750 steps).

Reported beside the times: each landing's distance to a tight reference (the Rosenbrock-W flow at rtol
1e-10 to an RMS gradient of 1e-12, then the landing), in the parameters (max) and in tr H (relative), and
the steps the Rosenbrock-W flow takes alone and the baseline's Tsit5 steps. Target: a save of a stiff flow
mapped faster than by the baseline, and every landing closer to Phi.
"""

import argparse

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from bench_common import median_times, table

from flows import _rosenbrock as rosenbrock  # the steps it takes, and the tight reference
from flows import label_noise_sgd, limit_map, retract
from models import MLP, Problem, TwoLayerNet, data

OLD_TOL = 1.5e-7  # the old float64 default: 10 sqrt(eps)
LABELS = {"dense": "", "matrix_free": ", matrix-free"}  # each mode's suffix in the row names


@eqx.filter_jit
def tsit5_flow(P, params):
    """The baseline: Tsit5 gradient flow until the RMS of grad L is OLD_TOL (flat parameters out)."""
    flat, unravel = P.ravel(params)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, v, args: -jax.grad(lambda w: P.loss(unravel(w)))(v)),
        diffrax.Tsit5(), 0.0, 1e6, None, flat,
        stepsize_controller=diffrax.PIDController(rtol=OLD_TOL / 100, atol=OLD_TOL / 100),
        event=diffrax.Event(diffrax.steady_state_event(rtol=0.0, atol=OLD_TOL)),
        max_steps=10**6,
    )  # fmt: skip
    return sol.ys[-1], sol.stats["num_steps"]


@eqx.filter_jit
def settled(P, params, tol, rtol):
    """The Rosenbrock-W flow alone to an RMS gradient of `tol` at local tolerance `rtol`."""
    flat, unravel = P.ravel(params)
    small_gradient = lambda theta, f: jnp.sqrt(jnp.mean(f**2)) <= tol  # noqa: E731
    return rosenbrock.settle(P, flat, unravel, small_gradient, rtol, 1e6, 10**6)


def points(name):
    """(problem, {point name: params}): a label-noise GD save (2,000 steps from Phi of the initialisation)
    and the initialisation."""
    if name == "digits MLP":
        X, y = data.digits(classes=(3, 8))  # slow_flow_real_net's quick preset (a script imports no figure)
        train, _ = data.train_test_split(jax.random.key(0), X, y, n_train=64)
        P = Problem(MLP(X.shape[1], 64, outputs=1, key=jax.random.key(1)), *train)
        eta = 0.1
    else:
        N = int(name.split("N = ")[1])
        kx, kt, kn = jax.random.split(jax.random.key(0), 3)
        X = data.gaussian(kx, N, 32)
        y, _ = data.two_layer_teacher(kt, X, width=4, activation="tanh")
        P = Problem(TwoLayerNet(32, N, key=kn, activation="tanh", train_outer=False), X, y)
        eta = 0.5
    start = limit_map(P, P.params)
    run = label_noise_sgd(P, start, steps=2000, eta=eta, sigma=0.5, key=jax.random.key(1), save_every=2000)
    return P, {"save": run.final, "initialisation": P.params}


def rows_for(name, repeats, modes=("dense",)):
    P, starts = points(name)
    rows = []
    for where, params in starts.items():
        unravel = P.ravel(params)[1]
        reference = retract(P, unravel(settled(P, params, 1e-12, 1e-10)[0]))
        ref_flat, ref_trace = P.ravel(reference)[0], float(P.gauss_newton_trace(reference))

        runs = {}
        for mode in modes:
            label = LABELS[mode]

            def old(params=params, unravel=unravel, mode=mode):
                return retract(P, unravel(tsit5_flow(P, params)[0]), mode=mode)

            def new(params=params, mode=mode):
                return limit_map(P, params, mode=mode)

            runs |= {f"limit_map{label}": new, f"tsit5{label}": old}
        times = median_times(runs, repeats=repeats)
        for run, fn in runs.items():
            land = fn()
            miss = float(jnp.max(jnp.abs(P.ravel(land)[0] - ref_flat)))
            trace = abs(float(P.gauss_newton_trace(land)) / ref_trace - 1)
            print(f"{name}, {where}, {run}: {miss:.1e} from Phi in the parameters, {trace:.1e} in tr H")
        _, _, tried, accepted = settled(P, params, 1e-10, 1e-8)
        tsit5_steps = int(tsit5_flow(P, params)[1])
        alone = f"Rosenbrock-W alone {int(accepted)} steps accepted of {int(tried)}"
        print(f"{name}, {where}: {alone}; the baseline's Tsit5 {tsit5_steps}")
        for mode in modes:
            label = LABELS[mode]
            pair = [(run, times[run]) for run in (f"limit_map{label}", f"tsit5{label}")]
            rows += table(f"limit_map of the {where}, {name}{label}", pair, f"tsit5{label}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="*", default=[256], help="N of the two-layer net")
    p.add_argument("--matrix-free", action="store_true", help="the matrix-free rows of the digits MLP")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    rows = rows_for("digits MLP", args.repeats, ("dense", "matrix_free") if args.matrix_free else ("dense",))
    for N in args.sizes:
        rows += rows_for(f"two-layer net, N = {N}", args.repeats)
    return rows


if __name__ == "__main__":
    main()
