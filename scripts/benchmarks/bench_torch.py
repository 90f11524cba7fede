"""sharpflow against PyTorch (CPU, its default threads) on the same networks with the same weights.

The library's CNN (3 x 3 'SAME' convolutions of 32, 64, 128 channels, tanh, 2 x 2 average pools, a dense
head) and ResNet ((16, 32) x 2 blocks, tanh), written again in PyTorch with the JAX weights copied in (the
losses agree to 1e-5 and are checked), on CIFAR-shaped random inputs (3 x 32 x 32), 10 classes,
cross-entropy, float32, at n = 256 and 512. Each row is a median of interleaved repeats in one process,
compiled (JAX) or warmed up (PyTorch) first; the ratio is sharpflow's time over PyTorch's:

- the full-batch gradient (sharpflow: `Problem.grad`, the best of chunk None, 64 and 128; PyTorch:
  `loss.backward()`);
- a Hessian-vector product (sharpflow: `analysis.hessian.hvp`; PyTorch: double backward, as PyHessian);
- Hutchinson's trace estimate with 50 probes (sharpflow: `hessian.trace_hutchinson`; PyTorch: 50 double
  backwards);
- 30 Lanczos steps (sharpflow: `hessian.top_eigenvalues(num_iter=30)`; PyTorch: the same Lanczos with full
  reorthogonalisation on its double-backward product);
- the first gradient of a fresh process (sharpflow: import, build, compile, run, with JAX's persistent
  compilation cache cold and then warm; PyTorch: import, build, run), n = 256.

Targets (issue 47): gradient and HVP within 1.0x PyTorch on both nets; Hutchinson within 1.0x; first calls
within 3 s.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from bench_common import median_times, table

from analysis import hessian
from models import CNN, Problem, ResNet

CLASSES, PROBES, STEPS = 10, 50, 30


def nets():
    """name -> the JAX model."""
    return {
        "CNN (32, 64, 128)": CNN(
            (3, 32, 32), (32, 64, 128), outputs=CLASSES, activation="tanh", key=jax.random.key(2)
        ),
        "ResNet ((16, 32) x 2)": ResNet(
            3, (16, 32), 2, outputs=CLASSES, activation="tanh", key=jax.random.key(2)
        ),
    }


def torch_net(model):
    """`model` (a models.CNN or models.ResNet) in PyTorch, with its weights."""
    import torch
    from torch import nn

    def conv(layer):
        out, c, kh, kw = layer.weight.shape
        t = nn.Conv2d(c, out, (kh, kw), padding=kh // 2)
        t.weight.data = torch.from_numpy(np.asarray(layer.weight)).contiguous()
        t.bias.data = torch.from_numpy(np.asarray(layer.bias).reshape(-1)).contiguous()
        return t

    def linear(layer):
        t = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
        t.weight.data = torch.from_numpy(np.asarray(layer.weight)).contiguous()
        t.bias.data = torch.from_numpy(np.asarray(layer.bias)).contiguous()
        return t

    class TorchCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(conv(c) for c in model.convs)
            self.head = linear(model.head)

        def forward(self, x):
            for c in self.convs:
                x = nn.functional.avg_pool2d(torch.tanh(c(x)), 2)
            return self.head(x.flatten(1))

    class TorchResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv(model.stem)
            self.blocks = nn.ModuleList(
                nn.ModuleList(nn.ModuleList([conv(b.first), conv(b.second)]) for b in stage)
                for stage in model.stages
            )
            self.transitions = nn.ModuleList(conv(t) for t in model.transitions)
            self.head = linear(model.head)

        def forward(self, x):
            x = self.stem(x)
            for s, stage in enumerate(self.blocks):
                if s > 0:
                    x = self.transitions[s - 1](nn.functional.avg_pool2d(x, 2))
                for first, second in stage:
                    x = x + model.alpha * second(torch.tanh(first(torch.tanh(x))))
            return self.head(torch.tanh(x).mean(dim=(2, 3)))

    return TorchCNN() if isinstance(model, CNN) else TorchResNet()


def torch_calls(net, X, y, key):
    """name -> a call, PyTorch's side of each row."""
    import torch

    X, y = torch.from_numpy(np.asarray(X)), torch.from_numpy(np.asarray(y)).long()
    params = [p for p in net.parameters()]
    gen = torch.Generator().manual_seed(int(jax.random.randint(key, (), 0, 2**30)))

    def loss():
        return torch.nn.functional.cross_entropy(net(X), y)

    def gradient():
        net.zero_grad()
        loss().backward()
        return params[0].grad

    def hvp(vs):
        g = torch.autograd.grad(loss(), params, create_graph=True)
        return torch.autograd.grad(g, params, grad_outputs=vs)

    def probe():
        return [torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1 for p in params]

    def hutchinson():
        total = 0.0
        for _ in range(PROBES):
            z = probe()
            total += sum(float((a * b).sum()) for a, b in zip(z, hvp(z)))
        return total / PROBES

    def lanczos():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        shapes = [p.shape for p in params]

        def mv(v):
            parts = torch.split(v, [int(np.prod(s)) for s in shapes])
            return torch.cat([h.reshape(-1) for h in hvp([u.reshape(s) for u, s in zip(parts, shapes)])])

        Q = torch.zeros(STEPS + 1, flat.numel())
        q = torch.randn(flat.numel(), generator=gen)
        Q[0] = q / q.norm()
        alpha, beta = [], []
        for j in range(STEPS):
            w = mv(Q[j])
            alpha.append(float(w @ Q[j]))
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)  # full reorthogonalisation
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
            beta.append(float(w.norm()))
            Q[j + 1] = w / beta[-1]
        T = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
        return np.linalg.eigvalsh(T)[-1]

    return {
        "gradient": gradient,
        "HVP": lambda: hvp(probe()),
        "Hutchinson": hutchinson,
        "Lanczos": lanczos,
    }, loss


ROWS = ("gradient", "HVP", "Hutchinson", "Lanczos")


def jax_calls(model, X, y, key):
    """name -> a call, sharpflow's side of each row (the chunk the gradient's fastest of None, 64, the
    recommendation, and 128)."""
    problems = {c: Problem(model, X, y, loss="cross_entropy", chunk=c) for c in (None, 64, 128)}
    grads = {c: jax.jit(lambda w, P=P: P.grad(w)) for c, P in problems.items()}
    speed = median_times({c: (lambda c=c: grads[c](problems[c].params)) for c in problems}, repeats=3)
    P = problems[min(speed, key=speed.get)]
    flat = P.ravel(P.params)[0]
    v = jax.random.normal(key, flat.shape, flat.dtype)
    hvp = jax.jit(lambda w, v: hessian.hvp(P, w, v))
    hutchinson = jax.jit(lambda w: hessian.trace_hutchinson(P, w, key, PROBES))
    lanczos = jax.jit(lambda w: hessian.top_eigenvalues(P, w, key=key, num_iter=STEPS))
    calls = {
        "gradient": lambda: grads[P.chunk](P.params),
        "HVP": lambda: hvp(P.params, v),
        "Hutchinson": lambda: hutchinson(P.params),
        "Lanczos": lambda: lanczos(P.params),
    }
    return calls, P


FIRST_CALL = """
import sys, time
start = time.perf_counter()
sys.path[:0] = {paths!r}
import jax
if {cache!r}:
    jax.config.update("jax_compilation_cache_dir", {cache!r})
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_enable_x64", False)
from bench_torch import nets, data
from models import Problem
X, y = data(256)
P = Problem(nets()[{name!r}], X, y, loss="cross_entropy")
jax.block_until_ready(jax.jit(lambda w: P.grad(w))(P.params))
print(time.perf_counter() - start)
"""

TORCH_FIRST_CALL = """
import sys, time
start = time.perf_counter()
import torch
imported = time.perf_counter() - start
sys.path[:0] = {paths!r}
import jax
jax.config.update("jax_enable_x64", False)
from bench_torch import nets, data, torch_net
X, y = data(256)
net = torch_net(nets()[{name!r}])
X, y = torch.from_numpy(X), torch.from_numpy(y).long()
start = time.perf_counter()
torch.nn.functional.cross_entropy(net(X), y).backward()
print(imported + time.perf_counter() - start)
"""


def data(n):
    """CIFAR-shaped inputs and labels, fixed draws (NumPy float32 / int32)."""
    X = jax.random.normal(jax.random.key(0), (n, 3, 32, 32), jnp.float32)
    y = jax.random.randint(jax.random.key(1), (n,), 0, CLASSES)
    return np.asarray(X), np.asarray(y)


def first_calls(name):
    """Seconds to a first gradient in a fresh process: sharpflow (import, build, compile, run) with a cold
    and a warm persistent cache; PyTorch (import torch, run; its copy of the network built untimed)."""
    here = Path(__file__).resolve().parent
    paths = [str(here), str(here.parents[1])]
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for label, code in (
            ("sharpflow, cache cold", FIRST_CALL.format(paths=paths, cache=cache, name=name)),
            ("sharpflow, cache warm", FIRST_CALL.format(paths=paths, cache=cache, name=name)),
            ("PyTorch", TORCH_FIRST_CALL.format(paths=paths, name=name)),
        ):
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            out[label] = float(run.stdout.strip().splitlines()[-1])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--nets", nargs="+", default=list(nets()), choices=list(nets()))
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="the rows to time")
    p.add_argument("--no-first-call", action="store_true", help="leave out the fresh-process rows")
    args = p.parse_args(argv)
    import torch

    torch.manual_seed(0)
    out = []
    with jax.enable_x64(False):
        for name in args.nets:
            model = nets()[name]
            for n in args.sizes:
                X, y = data(n)
                key = jax.random.key(3)
                ours, P = jax_calls(model, jnp.asarray(X), jnp.asarray(y), key)
                theirs, loss = torch_calls(torch_net(model), X, y, key)
                reference = float(loss().detach())
                gap = abs(float(P.loss(P.params)) - reference) / reference
                assert gap < 1e-5, f"{name}: the losses differ by {gap:.1e}"
                sides = {"sharpflow": ours, "torch": theirs}
                fns = {f"{row}, {side}": calls[row] for row in args.rows for side, calls in sides.items()}
                t = median_times(fns, repeats=args.repeats)
                print(f"\n{name}, n={n}, p={P.num_params}, chunk={P.chunk}: losses agree to {gap:.1e}")
                for row in args.rows:
                    a, b = t[f"{row}, sharpflow"], t[f"{row}, torch"]
                    print(f"  {row:12s} sharpflow {a:8.4f} s  torch {b:8.4f} s  ratio {a / b:5.2f}x")
                    out.append(
                        {"benchmark": f"vs PyTorch, {name}, n={n}", "run": f"{row}: sharpflow", "seconds": a,
                         "baseline": "torch", "ratio": a / b}
                    )  # fmt: skip
            if args.no_first_call:
                continue
            first = first_calls(name)
            out += table(f"first gradient in a fresh process, {name}, n=256", list(first.items()), "PyTorch")
    return out


if __name__ == "__main__":
    main()
