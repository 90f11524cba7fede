"""Step <-> time conversions: the one place where eta, B and sigma meet time (docs/conventions.md).

- Gradient-flow time: t = eta * k. GD, SGD and label-noise SGD at step k sit at time t on the clock of
  gradient flow and of the first-order SDEs.
- SDE diffusion in that clock: d theta = -grad L dt + sqrt(eta) Sigma^{1/2} dW.
- Slow time on the zero-loss manifold for label noise: tau = eta^2 sigma^2 k / B. In tau, label-noise SGD
  follows d theta / d tau = -(1/4) P_T grad tr H (Blanc et al. 2020; Damian et al. 2021; Li et al. 2022).
"""

import numpy as np


def flow_time(step, eta):
    """t = eta * k."""
    return eta * step


def steps_for_time(t, eta) -> int:
    """The number of steps k with eta * k = t; t must be a whole number of steps (to 1e-9 relative)."""
    return _whole(t / eta, f"t = {t} is not a whole number of steps of eta = {eta}")


def diffusion_scale(eta):
    """The factor sqrt(eta) in front of Sigma^{1/2} dW in the first-order SDE, in gradient-flow time."""
    return np.sqrt(eta) if isinstance(eta, float | int) else eta**0.5


def slow_time(step, eta, sigma, batch_size):
    """tau = eta^2 sigma^2 k / B."""
    return eta**2 * sigma**2 * step / batch_size


def steps_for_slow_time(tau, eta, sigma, batch_size) -> int:
    """The number of steps k with eta^2 sigma^2 k / B = tau, rounded up to a whole step."""
    return int(np.ceil(tau * batch_size / (eta**2 * sigma**2) - 1e-9))


def _whole(k, message) -> int:
    r = round(float(k))
    if abs(k - r) > 1e-9 * max(1.0, abs(k)):
        raise ValueError(message)
    return r
