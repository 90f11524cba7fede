"""The slow flow against the label-noise GD it replaces, and how its cost grows with N and p.

1. The quadratic parametrisation w = u*u - v*v, n = 20, d = 40 (80 parameters), sparse teacher: the Riemannian
   flow of tr H / 4 to slow time tau = 2 (default solver and tolerances) against label-noise GD at
   eta = 0.01 and 0.005 (sigma = 1, tau * n / (eta^2 sigma^2) steps), both the library's `label_noise_sgd`
   and a bare `lax.scan` written here (one gradient of the noisy loss a step, nothing saved), float64 and
   float32 rows; medians, all compiled before timing and their repeats interleaved, in one process; the
   flow also timed 10 calls back to back (an interleaved call pays the machine's wake-up after a scan).
   Reported with it: the flow's accepted and rejected steps, its field evaluations, and the cost of one
   (the geometry at a point: J's rows, the QR of [J^T; sqrt(mu) I], two triangular solves), timed in a
   loop, with the QR's and the solves' shares, the Cholesky the normal equations would take and the
   triangular solve R^{-T} J that forming Q_1 = J^T R^{-1} would add.
   Target: the flow >= 300x faster than the bare scan at eta = 0.01, the ratio growing as eta
   shrinks; a second flow call with the same shapes does not recompile.
2. Growth: a two-layer tanh net with a fixed outer layer on a tanh teacher, d = 32, width m = N (so
   p = 32 N), N = 64, 256, 1024 (`--sizes`), in float64 and in float32 (the same problem built in float64
   and cast, run with x64 off as a user runs it): `limit_map` from the initialisation, the flow to
   tau = 0.5, and label-noise GD to the same tau (eta = 0.01, sigma = 1: 0.5 N / eta^2 steps) estimated from
   20 timed steps; each size and dtype in its own process, whose peak memory (max RSS) is reported, and
   the float32 tr H at tau = 0.5 against float64's. Target at N = 1,024, p = 32,768: the flow < 5 minutes
   with peak memory < 4 GB and >= 100x the label-noise GD it replaces, `limit_map` < 30 s, float32's tr H
   within 1e-3 of float64's. The times include compilation (one call each, as a user would run them).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from bench_common import median_time, median_times, table

from flows import Solve, label_noise_objective, label_noise_sgd, limit_map, riemannian_flow, timescale
from flows import _manifold as manifold  # the flow's vector field, to count and time its evaluations
from flows import _numerics as numerics
from models import Problem, QuadraticParam, TwoLayerNet, data

TAU1, SIGMA, ETAS = 2.0, 1.0, (0.01, 0.005)
NET_TAU, NET_ETA, NET_D = 0.5, 0.01, 32


def quadratic(dtype):
    """The problem drawn in float64 and cast to `dtype`, and its start on the manifold."""
    X = data.gaussian(jax.random.key(0), 20, 40)
    P = Problem(QuadraticParam(40, init_scale=1.0), X, X[:, 0] - 0.5 * X[:, 1])
    P = jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, P)
    return P, limit_map(P, P.params)


@eqx.filter_jit
def bare_label_noise_gd(P, params, steps, eta, key):
    """Label-noise GD as a bare scan: theta <- theta - eta grad (1/2n) ||f(theta) - y - sigma z_k||^2."""
    flat, unravel = P.ravel(params)

    def step(v, k):
        z = jax.random.normal(jax.random.fold_in(key, k), P.y.shape, P.y.dtype)
        g = jax.grad(lambda w: 0.5 * jnp.mean((P.outputs(unravel(w)) - P.y - SIGMA * z) ** 2))(v)
        return v - eta * g, None

    return jax.lax.scan(step, flat, jnp.arange(steps))[0]


def field_cost(P, start):
    """(accepted steps, rejected steps, seconds of one field evaluation) of the default flow to TAU1."""
    flat, unravel = P.ravel(start)
    field = manifold._slow_field(P, unravel, None, "dense", 1.0)  # riemannian_flow's, at its defaults
    rtol = numerics.slow_flow_rtol(flat.dtype)
    sol = eqx.filter_jit(diffrax.diffeqsolve)(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        jnp.zeros((), flat.dtype),
        jnp.asarray(TAU1, flat.dtype),
        None,
        flat,
        stepsize_controller=Solve(diffrax.Tsit5(), rtol, rtol / 100).controller(),
        max_steps=100_000,
    )
    return int(sol.stats["num_accepted_steps"]), int(sol.stats["num_rejected_steps"]), per_call(field, flat)


def per_call(fn, flat) -> float:
    """Seconds of one `fn(0.0, v, None)` (a field's signature), from a compiled loop of 1,000 calls whose
    results feed the next (so none is hoisted or dropped)."""
    loop = jax.jit(lambda v: jax.lax.fori_loop(0, 1000, lambda i, v: v + 1e-12 * fn(0.0, v, None), v))
    return median_time(lambda: loop(flat), repeats=5) / 1000


def factorisation_costs(P, start) -> dict[str, float]:
    """Seconds of the two dense linear-algebra steps of one field evaluation at the start, in the loop of
    `per_call`: the QR (R only) of [J^T; sqrt(mu) I] and the two triangular solves R^{-1} R^{-T} b of a
    projection; and, for comparison, the Cholesky of K + mu I the normal equations would take instead of
    the QR (losing cond(J)^2 eps), and the triangular solve R^{-T} J that forming Q_1 would add."""
    flat = P.ravel(start)[0]
    J = P.jacobian(start)
    N = J.shape[0]
    mu = jnp.asarray(1e-6, flat.dtype)
    eye = jnp.eye(N, dtype=flat.dtype)
    R = jnp.linalg.qr(jnp.concatenate([J.T, jnp.sqrt(mu) * eye]), mode="r")

    def qr(t, v, args):  # v enters the matrix so that each call in the loop is computed anew
        stacked = jnp.concatenate([J.T + 1e-20 * v[:, None], jnp.sqrt(mu) * eye])
        return 1e-30 * jnp.sum(jnp.linalg.qr(stacked, mode="r")) + v

    def solves(t, v, args):
        b = J @ v
        return (
            1e-30
            * (jax.scipy.linalg.solve_triangular(R, jax.scipy.linalg.solve_triangular(R, b, trans="T")) @ J)
            + v
        )

    def q1(t, v, args):
        return 1e-30 * jnp.sum(jax.scipy.linalg.solve_triangular(R, J + 1e-20 * v, trans="T"), 0) + v

    def cholesky(t, v, args):
        K = J @ J.T + mu * eye + 1e-20 * jnp.sum(v)
        return 1e-30 * jnp.sum(jnp.linalg.cholesky(K)) + v

    fns = {"QR": qr, "R^-1 R^-T b": solves, "Cholesky": cholesky, "R^-T J": q1}
    return {name: per_call(fn, flat) for name, fn in fns.items()}


def count_compiles(fn) -> int:
    compiles = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        jax.block_until_ready(fn())
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return len(compiles)


def quadratic_rows(dtype, repeats):
    P, start = quadratic(dtype)
    bits = jnp.dtype(dtype).itemsize * 8
    name = f"Riemannian flow to tau = {TAU1:g}, float{bits}"

    def flow(start=start, tau1=TAU1):
        ts = jnp.array([0.0, tau1], dtype)
        return riemannian_flow(P, start, t1=tau1, ts=ts, save_params=False).stats["objective"]

    runs = {name: flow}
    trace0, trace1 = 4 * label_noise_objective(P, start), 4 * flow()[-1]
    print(f"float{bits}: tr H at the start {trace0:.4f}, flow at tau1 {trace1:.4f}")
    for eta in ETAS:
        steps = timescale.steps_for_slow_time(TAU1, eta, SIGMA, P.n)

        def sgd(eta=eta, steps=steps):
            key = jax.random.key(1)
            return label_noise_sgd(
                P, start, steps=steps, eta=eta, sigma=SIGMA, key=key, save_every=steps
            ).params

        def bare(eta=eta, steps=steps):
            return bare_label_noise_gd(P, start, steps, eta, jax.random.key(1))

        runs[f"label-noise GD eta={eta} ({steps} steps), float{bits}"] = sgd
        runs[f"bare scan eta={eta}, float{bits}"] = bare
        end = limit_map(P, jax.tree.map(lambda x: x[-1], sgd()))
        print(f"  tr H of Phi(label-noise GD, eta={eta}) at tau1: {4 * label_noise_objective(P, end):.4f}")
    rows = [*median_times(runs, repeats=repeats).items()]
    # the same flow called 10 times in a row: its cost without the wake-up of an idle machine that each
    # interleaved call pays after the scans (4.3 ms against 11 ms after a 0.6 s sleep, measured)
    warm = median_time(lambda: [flow() for _ in range(10)], repeats=repeats) / 10
    rows.insert(1, (f"{name}, 10 calls back to back (per call)", warm))
    accepted, rejected, seconds = field_cost(P, start)
    evaluations = 6 * (accepted + rejected)  # Tsit5: six new field evaluations a step (first same as last)
    print(
        f"  the flow: {accepted} accepted and {rejected} rejected steps, ~{evaluations} field evaluations of "
        f"{seconds * 1e6:.1f} us each: {evaluations * seconds * 1e3:.1f} ms of its {rows[0][1] * 1e3:.1f} ms "
        f"({warm * 1e3:.1f} ms back to back)"
    )
    costs = ", ".join(f"{name} {t * 1e6:.1f} us" for name, t in factorisation_costs(P, start).items())
    print(f"  of an evaluation: {costs} (not used: the normal equations' Cholesky, cond(J)^2 eps; Q_1)")
    other = jax.tree.map(lambda x: 1.01 * x, start)
    compiles = count_compiles(lambda: flow(other, 0.5))
    print(f"  compilations on a second flow call with the same shapes: {compiles}")
    out = table(
        f"slow flow vs label-noise GD to tau = {TAU1:g}, quadratic n=20 d=40, float{bits}", rows, name
    )
    for run, seconds in rows[2:]:
        print(
            f"  {run} / flow = {seconds / rows[0][1]:.0f}x, / flow back to back = {seconds / warm:.0f}x "
            "(target: the bare scan >= 300x at eta = 0.01)"
        )
    return out


def net_size(N: int, bits: int) -> dict:
    """One size of the growth study, in this process: seconds of limit_map, flow, one GD step; max RSS. The
    problem is drawn in float64 and, for `bits` = 32, cast to float32 and run with x64 off."""
    jax.config.update("jax_enable_x64", True)
    kx, kt, kn = jax.random.split(jax.random.key(0), 3)
    X = data.gaussian(kx, N, NET_D)
    y, _ = data.two_layer_teacher(kt, X, width=4, activation="tanh")
    P = Problem(TwoLayerNet(NET_D, N, key=kn, activation="tanh", train_outer=False), X, y)
    if bits == 32:
        P = jax.tree.map(lambda x: x.astype(jnp.float32) if eqx.is_inexact_array(x) else x, P)
        jax.config.update("jax_enable_x64", False)
    start = time.perf_counter()
    on = jax.block_until_ready(limit_map(P, P.params))
    phi = time.perf_counter() - start
    start = time.perf_counter()
    flow = riemannian_flow(P, on, t1=NET_TAU, ts=jnp.array([0.0, NET_TAU]), save_params=False)
    trace = jax.block_until_ready(4 * flow.stats["objective"])
    seconds = time.perf_counter() - start

    def gd(k):
        run = label_noise_sgd(P, on, steps=k, eta=NET_ETA, sigma=SIGMA, key=jax.random.key(1), save_every=k,
                              save_params=False)  # fmt: skip
        return run.stats["loss"]

    jax.block_until_ready(gd(20))
    start = time.perf_counter()
    jax.block_until_ready(gd(20))
    step = (time.perf_counter() - start) / 20
    return {
        "N": N,
        "bits": bits,
        "p": P.num_params,
        "limit_map": phi,
        "flow": seconds,
        "gd_step": step,
        "gd_steps": timescale.steps_for_slow_time(NET_TAU, NET_ETA, SIGMA, N),
        "trace_H": [float(t) for t in trace],
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def growth_rows(sizes):
    rows = []
    print(f"\ngrowth: two-layer tanh net, d = {NET_D}, width N, flow to tau = {NET_TAU}")
    head = ("N", "p", "dtype", "limit_map s", "flow s", "GD est. s", "GD / flow", "max RSS GB")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (6, 8, 7, 12, 9, 11, 10, 11))))
    for N in sizes:
        traces = {}
        for bits in (64, 32):
            cmd = [sys.executable, __file__, "--one", str(N), str(bits)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            traces[bits] = r["trace_H"][-1]
            gd = r["gd_step"] * r["gd_steps"]
            cells = (
                f"{r['N']:6d} {r['p']:8d} {'float' + str(bits):>7} {r['limit_map']:12.1f} {r['flow']:9.1f}"
            )
            trace = f"tr H {r['trace_H'][0]:.5f} -> {r['trace_H'][-1]:.5f}"
            print(f"{cells} {gd:11.0f} {gd / r['flow']:9.0f}x {r['max_rss_gb']:11.2f}   {trace}")
            title = (
                f"slow flow, two-layer net N={r['N']} p={r['p']}, float{bits} "
                f"(peak RSS {r['max_rss_gb']:.2f} GB)"
            )
            rows += table(
                title,
                [
                    ("Riemannian flow to tau = 0.5", r["flow"]),
                    ("limit_map", r["limit_map"]),
                    (f"label-noise GD, {r['gd_steps']} steps (estimated)", gd),
                ],
                "Riemannian flow to tau = 0.5",
            )
        print(f"  float32 tr H at tau = 0.5 against float64: {abs(traces[32] / traces[64] - 1):.2e} relative")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", type=int, nargs="*", default=[64, 256, 1024], help="N of the growth study")
    p.add_argument("--one", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(net_size(*args.one)))
        return []
    jax.config.update("jax_enable_x64", True)
    rows = quadratic_rows(jnp.float64, args.repeats) + quadratic_rows(jnp.float32, args.repeats)
    return rows + growth_rows(args.sizes)


if __name__ == "__main__":
    main()
