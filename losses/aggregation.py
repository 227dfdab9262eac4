"""Combining the per-task gradients of a multi-task model into one update: one Optax transformation per method.

This is the gradient-level half of the multi-task family: `losses.multitask`
weights the task *losses* before one backward pass; an aggregator receives the
gradient of every task loss (the Jacobian) and chooses the update direction
itself. Each function of this module returns an
`optax.GradientTransformationExtraArgs` whose `update` maps per-task gradients
(the parameter pytree with a leading task axis N on every leaf, e.g. from
`jax.jacrev` of the N task losses) to one update pytree without that axis:

    optimizer = optax.chain(losses.aggregation.upgrad(), optax.adam(1e-3))
    updates, state = optimizer.update(task_grads, state, params, task_losses=task_losses)

`losses.gradient_aggregator(name, **options)` builds the method `name` (one of
`AGGREGATOR_NAMES`, the names of the functions below) from its options, as the
experiments' configs select it (`--config.weighting=NAME`); it also accepts
`seed` and `num_tasks` for every method and drops them where a method has no
use for them.

Write J for the N × P matrix whose rows gᵢ are the flattened task gradients,
G = JJᵀ for its Gramian and d for the update. Except for `graddrop`,
`trimmed_mean`, `excess_mtl`, `db_mtl` and `moco` (which read J itself),
d = Jᵀw for weights w computed from G alone (N × N), so the work that grows
with the number of parameters P is one Gramian and one weighted sum per leaf. The methods follow
TorchJD 0.18 (`torchjd.aggregation`): its definitions, option names, defaults,
normalisations and tie-breaking rules, cross-checked in
tests/test_aggregation.py on float64 Jacobians; `gradnorm`, which TorchJD does
not have, follows its paper. TorchJD's Gramian weightings that have no
aggregator of their own there (`MoDoWeighting`, `SDMGradWeighting`,
`CRMOGMWeighting`) are aggregators here too: `modo`, `sdmgrad` and `cr_mogm`,
with d = Jᵀw. From LibMTL, beyond TorchJD: `db_mtl` and `moco`, as LibMTL
computes them.

Each function's docstring gives its math, its source, its numerical choices
and the differences from TorchJD. What they share:

* Everything runs under `jax.jit` (and `vmap`, `scan`, ...) with a fixed number
  of iterations; nothing calls back to the host, and no QP library is used at
  run time. Where TorchJD calls an iterative solver that stops early (MGDA's
  Frank-Wolfe, Nash-MTL's ECOS, CAGrad's Clarabel, FairGrad's
  `scipy.optimize.least_squares`), the problem is solved here to rounding.
* The QPs on the simplex and on the nonnegative orthant are solved in two
  phases: `max_iters` (default 100) steps of projected gradient with Nesterov
  acceleration and adaptive restart, then 3N + 4 steps of the primal
  active-set method (Nocedal & Wright, Algorithm 16.3), each an exact solve of
  the equality constrained problem on the current face, with a ridge of 1e-13
  (float64) or 1e-6 (float32) times each diagonal entry so that faces of
  linearly dependent rows stay solvable. On 1000 random problems (N = 6, P from
  3 to 100, gradient norms spanning three decades, conflicting and dependent
  rows) the float64 UPGrad updates match quadprog to 5e-10 relative.
* Gradients are combined in at least float32 (bfloat16 leaves are upcast) and
  each update leaf is returned in its parameter's dtype; matrix products use
  `Precision.HIGHEST`. In float32 the QP-based updates are within 1e-7 of the
  largest gradient norm of the float64 ones on typical problems and within
  6e-4 on ill-conditioned ones.

State. Stateless methods keep `optax.EmptyState()`; the others a NamedTuple
of arrays (it checkpoints with Orbax): the PRNG key of the random methods
(`KeyState`, from the `seed` option, split at every update as optax's own
random transformations do), and each stateful method's own NamedTuple. States
with a task axis need the number of tasks at `init`, so those methods take the
option `num_tasks`; every method accepts it and then checks the task axis
against it.

Examples:
  >>> import jax, jax.numpy as jnp, optax
  >>> import losses
  >>> aggregator = losses.aggregation.upgrad()
  >>> params = {"w": jnp.zeros(2)}
  >>> task_grads = {"w": jnp.array([[1.0, 0.0], [-0.5, 1.0]])}  # Conflicting: g₁·g₂ < 0.
  >>> update, _ = jax.jit(aggregator.update)(task_grads, aggregator.init(params))
  >>> print((task_grads["w"] @ update["w"] >= 0).all())  # No task's loss increases to first order.
  True
"""

from collections.abc import Callable, Mapping
import inspect
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from losses import _common

if TYPE_CHECKING:
  import optax

PyTree = Any
Transformation = "optax.GradientTransformationExtraArgs"

_HIGHEST = jax.lax.Precision.HIGHEST
_CAGRAD_BISECTIONS = 40
_CAGRAD_LOG_RANGE = (math.log(1e-9), 0.0)


class KeyState(NamedTuple):
  """The state of `pcgrad`, `graddrop` and `random`: the uint32 `(2,)` PRNG key, split at every update."""

  key: jax.Array


class GradVacState(NamedTuple):
  """The state of `gradvac`: the PRNG key of the visiting orders and the EMA targets φ̂ (N, N) of the cosines."""

  key: jax.Array
  phi: jax.Array


class NashMTLState(NamedTuple):
  """The state of `nash_mtl`: the updates so far (int32) and the last solved weights (N,), the warm start."""

  count: jax.Array
  weights: jax.Array


class GradNormState(NamedTuple):
  """The state of `gradnorm`: the updates so far, the trained weights (N,) and the first losses Lᵢ(0) (N,)."""

  count: jax.Array
  weights: jax.Array
  initial_losses: jax.Array


class ExcessMTLState(NamedTuple):
  """The state of `excess_mtl`.

  Attributes:
    count: int32, the updates so far.
    weights: (N,) on the simplex, 1/N at first.
    squared_grad_sum: the sums of the squared task gradients, the parameter pytree with the task axis N.
    initial_excess: (N,) the baseline excess risks (set at the first update after the warm-up).
    warmup_excess_sum: (N,) the excess risks summed over the warm-up.
  """

  count: jax.Array
  weights: jax.Array
  squared_grad_sum: PyTree
  initial_excess: jax.Array
  warmup_excess_sum: jax.Array


class DBMTLState(NamedTuple):
  """The state of `db_mtl`: the updates so far and the buffers (EMA) of the log-loss gradients, the parameter
  pytree with the task axis N."""

  count: jax.Array
  buffer: PyTree


class MoCoState(NamedTuple):
  """The state of `moco`: the updates so far, the weights λ (N,) and the tracked gradients y, the parameter
  pytree with the task axis N."""

  count: jax.Array
  weights: jax.Array
  tracking: PyTree


class PCDState(NamedTuple):
  """The state of `pcd`: the updates so far and the EMA (N,) of the squared gradient norms (not debiased)."""

  count: jax.Array
  squared_norm_ema: jax.Array


class SimplexState(NamedTuple):
  """The state of `modo` and `sdmgrad`: their task weights (N,) on the simplex, 1/N at first."""

  weights: jax.Array


class CRMOGMState(NamedTuple):
  """The state of `cr_mogm`: the updates so far, the smoothed weights λ (N,) and the wrapped method's state."""

  count: jax.Array
  weights: jax.Array
  inner: Any


# ---------------------------------------------------------------------------------------------------------------
# Quadratic programs on the simplex and on the nonnegative orthant.


def _project_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection onto {x ≥ 0, Σx = 1}, by sorting."""
  n = v.shape[-1]
  ordered = jnp.sort(v)[::-1]
  excess = jnp.cumsum(ordered) - 1.0
  support = jnp.sum(ordered - excess / jnp.arange(1, n + 1, dtype=v.dtype) > 0)
  threshold = jnp.take(excess, support - 1) / support
  return jnp.maximum(v - threshold, 0.0)


def _project_orthant(v: jax.Array) -> jax.Array:
  return jnp.maximum(v, 0.0)


def _ridge(dtype) -> float:
  return 1e-13 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def _accelerated_projected_gradient(q, c, x, project, iterations):
  """Projected gradient with Nesterov momentum and gradient-based restart (O'Donoghue & Candès 2015)."""
  largest = jnp.linalg.eigvalsh(q)[-1]
  step = 1.0 / jnp.maximum(largest, jnp.finfo(q.dtype).tiny)

  def body(_, carry):
    previous, ahead, momentum = carry
    current = project(ahead - step * (q @ ahead + c))
    restart = jnp.vdot(ahead - current, current - previous) > 0
    next_momentum = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * momentum ** 2)))
    factor = jnp.where(restart, 0.0, (momentum - 1.0) / next_momentum)
    return current, current + factor * (current - previous), next_momentum

  x, _, _ = jax.lax.fori_loop(0, iterations, body, (x, x, jnp.ones((), q.dtype)))
  return x


def _active_set(q, c, x, simplex: bool, iterations: int):
  """The primal active-set method from a feasible `x`: exact once it reaches the optimal face.

  Minimises ½xᵀ(q + ridge·I)x + cᵀx subject to x ≥ 0 (and Σx = 1 if `simplex`). The working set holds the
  coordinates fixed at 0; each step solves the problem on the free coordinates, then either moves towards its
  solution until a coordinate hits 0 (which joins the working set) or, at that solution, frees the coordinate
  with the most negative multiplier, or stops when none is negative.
  """
  n = q.shape[0]
  dtype = q.dtype
  diagonal = jnp.diag(q)
  q = q + jnp.diag(_ridge(dtype) * (diagonal + _ridge(dtype) * jnp.max(diagonal)))  # Relative to each row's scale.
  tolerance = 32 * jnp.finfo(dtype).eps * (jnp.max(jnp.abs(q)) + jnp.max(jnp.abs(c)))
  index = jnp.arange(n)

  def body(_, carry):
    x, fixed, done = carry
    free = ~fixed
    matrix = jnp.where(free[:, None] & free[None, :], q, 0.0) + jnp.diag(fixed.astype(dtype))
    rhs = jnp.where(free, -c, 0.0)
    if simplex:
      border = free.astype(dtype)
      bordered = jnp.block([[matrix, -border[:, None]], [border[None, :], jnp.zeros((1, 1), dtype)]])
      solution = jnp.linalg.solve(bordered, jnp.concatenate([rhs, jnp.ones(1, dtype)]))
      target, shift = jnp.where(free, solution[:n], 0.0), solution[n]
    else:
      target, shift = jnp.where(free, jnp.linalg.solve(matrix, rhs), 0.0), 0.0
    infeasible = free & (target < 0)
    blocked = jnp.any(infeasible)
    ratios = jnp.where(infeasible, x / jnp.where(infeasible, x - target, 1.0), jnp.inf)
    blocking = jnp.argmin(ratios)
    step = jnp.minimum(ratios[blocking], 1.0)
    moved = jnp.where(blocked, x + step * (target - x), target)
    moved = jnp.where(blocked & (index == blocking), 0.0, jnp.maximum(moved, 0.0))
    multipliers = jnp.where(fixed, q @ target + c - shift, jnp.inf)
    release = jnp.argmin(multipliers)
    optimal = ~blocked & (multipliers[release] >= -tolerance)
    new_fixed = jnp.where(blocked, fixed | (index == blocking), jnp.where(optimal, fixed, fixed & (index != release)))
    finite = jnp.all(jnp.isfinite(moved))
    keep = done | ~finite
    return jnp.where(keep, x, moved), jnp.where(keep, fixed, new_fixed), done | optimal | ~finite

  x, _, _ = jax.lax.fori_loop(0, iterations, body, (x, x <= 0, jnp.zeros((), bool)))
  return x


def _solve_qp(q, c, x, *, simplex: bool, iterations: int) -> jax.Array:
  """argmin ½xᵀqx + cᵀx over the simplex or the orthant: accelerated projected gradient, then active set."""
  project = _project_simplex if simplex else _project_orthant
  x = project(x)
  if iterations:
    x = _accelerated_projected_gradient(q, c, x, project, iterations)
  return _active_set(q, c, x, simplex, 3 * q.shape[0] + 4)


def _normalised(gram: jax.Array, norm_eps: float) -> jax.Array:
  """G divided by its trace, or 0 where the trace is below `norm_eps` (TorchJD's `normalize`)."""
  trace = jnp.trace(gram)
  return jnp.where(trace < norm_eps, 0.0, gram / jnp.where(trace > 0, trace, 1.0))


# ---------------------------------------------------------------------------------------------------------------
# The weights of each method from the Gramian G (N × N).


def _mean_weights(gram):
  n = gram.shape[0]
  return jnp.full((n,), 1.0 / n, gram.dtype)


def _mgda_weights(gram, max_iters):
  n = gram.shape[0]
  q = _normalised(gram, 0.0)
  return _solve_qp(q, jnp.zeros(n, gram.dtype), jnp.full((n,), 1.0 / n, gram.dtype), simplex=True,
                   iterations=max_iters)


def _dual_cone_weights(gram, u, norm_eps, reg_eps, max_iters):
  """The v ≥ u minimising vᵀGv for each row u of `u` (TorchJD's QuadprogProjector, same normalisation)."""
  n = gram.shape[0]
  q = _normalised(gram, norm_eps) + reg_eps * jnp.eye(n, dtype=gram.dtype)
  solve = lambda row: row + _solve_qp(q, q @ row, jnp.zeros_like(row), simplex=False, iterations=max_iters)
  return jax.vmap(solve)(u)


def _upgrad_weights(gram, preference, norm_eps, reg_eps, max_iters):
  return jnp.sum(_dual_cone_weights(gram, jnp.diag(preference), norm_eps, reg_eps, max_iters), axis=0)


def _dualproj_weights(gram, preference, norm_eps, reg_eps, max_iters):
  return _dual_cone_weights(gram, preference[None], norm_eps, reg_eps, max_iters)[0]


def _pcgrad_weights(gram: jax.Array, orders: jax.Array) -> jax.Array:
  """PCGrad's weights, task i visiting the others in the order `orders[i]` (a permutation of 0..N-1)."""
  n = gram.shape[0]
  safe_diagonal = jnp.where(jnp.diag(gram) > 0, jnp.diag(gram), 1.0)

  def one_task(i, order):
    def visit(coefficients, j):
      product = gram[j] @ coefficients
      change = jnp.where((j != i) & (product < 0), -product / safe_diagonal[j], 0.0)
      return coefficients.at[j].add(change), None
    coefficients, _ = jax.lax.scan(visit, jax.nn.one_hot(i, n, dtype=gram.dtype), order)
    return coefficients

  return jnp.sum(jax.vmap(one_task)(jnp.arange(n), orders), axis=0)


def _gradvac_weights(gram: jax.Array, phi: jax.Array, orders: jax.Array, beta: float, eps: float):
  """GradVac's weights and EMA targets, task i visiting the other tasks in the order `orders[i]` ((N, N − 1))."""
  n = gram.shape[0]
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))

  def one_task(i, targets, order):
    def visit(carry, j):
      coefficients, products, targets = carry  # products = (g_i^PC · g_k)_k.
      norm_i = jnp.sqrt(jnp.maximum(products @ coefficients, 0.0))
      cosine = products[j] / (norm_i * norms[j] + eps)
      target = targets[j]
      gap = jnp.sqrt(jnp.maximum(1.0 - cosine ** 2, 0.0))
      target_gap = jnp.sqrt(jnp.maximum(1.0 - target ** 2, 0.0))
      amount = norm_i * (target * gap - cosine * target_gap) / (norms[j] * target_gap + eps)
      amount = jnp.where(cosine < target, amount, 0.0)
      targets = targets.at[j].set((1.0 - beta) * target + beta * cosine)
      return (coefficients.at[j].add(amount), products + amount * gram[j], targets), None
    start = (jax.nn.one_hot(i, n, dtype=gram.dtype), gram[i], targets)
    (coefficients, _, targets), _ = jax.lax.scan(visit, start, order)
    return coefficients, targets

  coefficients, phi = jax.vmap(one_task)(jnp.arange(n), phi, orders)
  return jnp.sum(coefficients, axis=0), phi


def _cagrad_weights(gram, c, norm_eps, max_iters):
  n = gram.shape[0]
  dtype = gram.dtype
  q = _normalised(gram, norm_eps)
  mean = jnp.full((n,), 1.0 / n, dtype)
  linear = q @ mean  # (g_i · g₀)_i
  radius = c * jnp.sqrt(jnp.maximum(mean @ linear, 0.0))  # ρ = c‖g₀‖
  safe_radius = jnp.where(radius > 0, radius, 1.0)

  def solve(log_t, start, iterations):
    return _solve_qp(q, jnp.exp(log_t) / safe_radius * linear, start, simplex=True, iterations=iterations)

  norm_of = lambda w: jnp.sqrt(jnp.maximum(w @ q @ w, 0.0))
  low, high = (jnp.asarray(bound, dtype) for bound in _CAGRAD_LOG_RANGE)
  w = solve(high, mean, max_iters)

  def bisect(_, carry):
    low, high, w = carry
    middle = 0.5 * (low + high)
    w = solve(middle, w, 0)
    above = norm_of(w) > jnp.exp(middle)  # ‖g_w(t)‖ > t: the optimal t is larger.
    return jnp.where(above, middle, low), jnp.where(above, high, middle), w

  low, high, w = jax.lax.fori_loop(0, _CAGRAD_BISECTIONS, bisect, (low, high, w))
  w = solve(high, w, 0)
  norm = norm_of(w)
  weights = jnp.where(norm >= norm_eps, mean + radius / jnp.where(norm > 0, norm, 1.0) * w, 0.0)
  return jnp.where(radius > 0, weights, jnp.where(jnp.trace(q) > 0, mean, 0.0))


def _fair_solve(gram, start, iterations, alpha=1.0):
  """w > 0 with (Gw)ᵢ = wᵢ^(−1/α): Newton steps on the convex ½wᵀGw − Σᵢ h(wᵢ), h′(w) = w^(−1/α), from `start`
  rescaled along its ray (α = 1, h = log, is Nash-MTL's bargaining condition wᵢ(Gw)ᵢ = 1).

  Each step is the Newton direction with the best of 30 halvings of the largest step that stays positive
  (capped at 1), so the iterates stay positive, every step decreases the objective, and the last steps are
  full Newton steps (quadratic convergence). G is scaled to unit Frobenius norm s: the solution for G is
  s^(−α/(1+α)) times the one for G/s.
  """
  power = 1.0 / alpha
  scale = jnp.sqrt(jnp.sum(gram ** 2))
  safe_scale = jnp.where(scale > 0, scale, 1.0)
  unit = safe_scale ** (-alpha / (1.0 + alpha))
  q = gram / safe_scale
  x = start / unit
  x = jnp.where(jnp.all(jnp.isfinite(x) & (x > 0)), x, jnp.ones_like(x))
  # The optimal multiple t of x: t^(1 + 1/α)·xᵀqx = Σᵢ xᵢ^(1 − 1/α).
  curvature = x @ q @ x
  best_multiple = (jnp.sum(x ** (1.0 - power)) / jnp.where(curvature > 0, curvature, 1.0)) ** (1.0 / (1.0 + power))
  x = jnp.where(curvature > 0, x * best_multiple, x)
  if alpha == 1.0:
    barrier = lambda x: jnp.sum(jnp.log(x), axis=-1)
  else:
    barrier = lambda x: jnp.sum(x ** (1.0 - power), axis=-1) / (1.0 - power)
  objective = lambda x: 0.5 * jnp.einsum("...i,ij,...j->...", x, q, x) - barrier(x)
  halvings = 0.5 ** jnp.arange(30, dtype=gram.dtype)

  def newton(_, x):
    gradient = q @ x - x ** -power
    step = jnp.linalg.solve(q + jnp.diag(power * x ** (-power - 1.0)), gradient)
    limit = jnp.min(jnp.where(step > 0, x / jnp.where(step > 0, step, 1.0), jnp.inf))
    candidates = x - (jnp.minimum(1.0, 0.99 * limit) * halvings)[:, None] * step
    values = jnp.where(jnp.all(candidates > 0, axis=1), objective(jnp.maximum(candidates, jnp.finfo(x.dtype).tiny)),
                       jnp.inf)
    best = jnp.argmin(values)
    new = candidates[best]
    improves = jnp.all(jnp.isfinite(new) & (new > 0)) & (values[best] <= objective(x))
    # Near the solution (Newton decrement below 0.1, inside the region of quadratic convergence) the full step
    # is taken even where rounding hides its decrease of the objective.
    close = (gradient @ step < 1e-2) & jnp.all(jnp.isfinite(step)) & jnp.all(x - step > 0)
    return jnp.where(close, x - step, jnp.where(improves, new, x))

  x = jax.lax.fori_loop(0, iterations, newton, x)
  return jnp.where(scale > 0, x * unit, start)


def _nash_weights(gram, previous, count, max_norm, update_weights_every, optim_niter):
  solved = jax.lax.cond(count % update_weights_every == 0, lambda: _fair_solve(gram, previous, optim_niter),
                        lambda: previous)
  weights = solved
  if max_norm > 0:
    norm = jnp.sqrt(jnp.maximum(solved @ gram @ solved, 0.0))
    weights = jnp.where(norm > max_norm, solved / jnp.where(norm > 0, norm, 1.0) * max_norm, solved)
  return weights, solved


def _imtl_g_weights(gram):
  n = gram.shape[0]
  inverse = jnp.linalg.pinv(gram, rtol=n * jnp.finfo(gram.dtype).eps, hermitian=True)
  v = inverse @ jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  total = jnp.sum(v)
  return jnp.where(jnp.abs(total) < 1e-12, 0.0, v / jnp.where(total == 0, 1.0, total))


def _aligned_mtl_weights(gram, preference, scale_mode):
  n = gram.shape[0]
  eigenvalues, vectors = jnp.linalg.eigh(gram)  # Ascending.
  kept = eigenvalues > jnp.max(eigenvalues) * n * jnp.finfo(gram.dtype).eps
  rank = jnp.sum(kept)
  safe = jnp.where(kept, eigenvalues, 1.0)
  if scale_mode == "min":
    scale = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
  elif scale_mode == "median":  # The lower median of the kept eigenvalues, as torch.median.
    scale = eigenvalues[jnp.clip(n - rank + (rank - 1) // 2, 0, n - 1)]
  else:  # "rmse": their mean.
    scale = jnp.sum(jnp.where(kept, eigenvalues, 0.0)) / jnp.maximum(rank, 1)
  balance = jnp.sqrt(jnp.where(rank > 0, scale, 1.0)) * (vectors * jnp.where(kept, 1.0 / jnp.sqrt(safe), 0.0)) @ (
      vectors.T)
  return jnp.where(rank > 0, balance @ preference, preference)


def _config_weights(gram, preference):
  n = gram.shape[0]
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  inverse_norms = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
  units = gram * inverse_norms[:, None] * inverse_norms[None, :]  # UUᵀ
  coefficients = jnp.linalg.pinv(units, rtol=n * jnp.finfo(gram.dtype).eps, hermitian=True) @ preference  # x = Uᵀa
  length_of_x = jnp.sqrt(jnp.maximum(coefficients @ units @ coefficients, 0.0))
  direction = coefficients * inverse_norms / jnp.maximum(length_of_x, 1e-12)  # x̂ = Jᵀ(this)
  length = jnp.sum(gram @ direction)  # Σᵢ gᵢ·x̂
  return length * direction


def _random_weights(key, n, dtype):
  return jax.nn.softmax(jax.random.normal(key, (n,), dtype))


def _gradnorm_step(norms, weights, initial_losses, task_losses, alpha, learning_rate):
  """The weights after one step on Σᵢ|wᵢ‖gᵢ‖ − Ḡ·rᵢ^α|, renormalised to sum to N; and the gradient of that loss."""
  n = norms.shape[0]
  weighted = weights * norms
  inverse_rates = task_losses / initial_losses
  targets = jnp.mean(weighted) * (inverse_rates / jnp.mean(inverse_rates)) ** alpha
  gradient = jnp.sign(weighted - targets) * norms
  stepped = jnp.maximum(weights - learning_rate * gradient, 0.0)
  total = jnp.sum(stepped)
  return jnp.where(total > 0, n * stepped / jnp.where(total > 0, total, 1.0), 1.0), gradient


def _graddrop(matrix, uniform, f, leak):
  """GradDrop's update of the (N, P) `matrix` given the uniform draws `uniform` (P,)."""
  purity = 0.5 * (1.0 + jnp.sum(matrix, axis=0) / jnp.sum(jnp.abs(matrix), axis=0))
  fp = f(purity)
  keep = ((fp > uniform) & (matrix > 0)) | ((fp < uniform) & (matrix < 0))
  return jnp.sum((leak[:, None] + (1.0 - leak[:, None]) * keep) * matrix, axis=0)


def _krum_weights(gram, n_byzantine, n_selected):
  """Krum's weights: 1/`n_selected` on the rows of smallest score, ties to the lower index."""
  n = gram.shape[0]
  squares = jnp.diag(gram)
  distances = jnp.sqrt(jnp.maximum(squares[None, :] + squares[:, None] - 2.0 * gram, 0.0))
  scores = jnp.sum(jnp.sort(distances, axis=1)[:, 1:n - n_byzantine - 1], axis=1)  # Without the distance to itself.
  selected = jnp.argsort(scores, stable=True)[:n_selected]
  return jnp.sum(jax.nn.one_hot(selected, n, dtype=gram.dtype), axis=0) / n_selected


def _pcd_weights(gram, scales, taus, max_iters):
  """PCD's weights given the scales sᵢ: the dual multipliers μ of the secondary constraints, rescaled."""
  n = gram.shape[0]
  dtype = gram.dtype
  normalized = gram * scales[:, None] * scales[None, :]
  w = jnp.ones(1, dtype)
  if n > 1:
    secondary = normalized[1:, 1:]
    b = taus * jnp.diag(secondary) - normalized[1:, 0]  # bⱼ > 0 where g̃₁ violates constraint j.
    mu = _solve_qp(secondary, -b, jnp.zeros(n - 1, dtype), simplex=False, iterations=max_iters)
    # Infeasible constraints leave the ridge-regularised dual unbounded but for the ridge: a violation of the
    # order of b remains, where feasible ones leave ridge·μ.
    tolerance = math.sqrt(_ridge(dtype)) * jnp.maximum(jnp.max(jnp.diag(normalized)), jnp.finfo(dtype).tiny)
    infeasible = jnp.any(secondary @ mu - b < -tolerance)
    w = jnp.concatenate([w, jnp.where(infeasible, 0.0, mu)])
  direction = w @ normalized @ w
  magnitude = (jnp.abs(w) @ jnp.sqrt(jnp.maximum(jnp.diag(normalized), 0.0))) ** 2
  nonzero = (gram[0, 0] > 0) & (direction > 10 * jnp.finfo(dtype).eps * magnitude)
  safe = jnp.where(nonzero, direction, 1.0)
  return jnp.where(nonzero, w * scales * jnp.sqrt(jnp.maximum(gram[0, 0], 0.0) / safe), 0.0)


def _others_orders(key: jax.Array, n: int) -> jax.Array:
  """For each task i, a random order of the other N − 1 tasks, (N, N − 1) (GradVac's visiting orders)."""
  def one(k, i):
    order = jax.random.permutation(k, n - 1)
    return order + (order >= i)
  return jax.vmap(one)(jax.random.split(key, n), jnp.arange(n))


# ---------------------------------------------------------------------------------------------------------------
# The transformation shared by every method.


class _Weighting(NamedTuple):
  """A method whose update is Jᵀw: `init(dtype) -> state`, `weigh(matrix, state, task_losses) -> (w, state)`.

  `matrix` is the Gramian G = JJᵀ, or J·J′ᵀ for the methods that take `independent_task_grads`.
  """

  init: Callable[[Any], Any]
  weigh: Callable[[jax.Array, Any, Any], tuple[jax.Array, Any]]


def _total(items):
  """The sum of the arrays `items` (the builtin `sum` is the method of this module)."""
  result = items[0]
  for item in items[1:]:
    result = result + item
  return result


def _gram(rows, others=None) -> jax.Array:
  others = rows if others is None else others
  return _total([jnp.matmul(row, other.T, precision=_HIGHEST) for row, other in zip(rows, others)])


def _row_norms(rows) -> jax.Array:
  """‖gᵢ‖ (N,) of the rows split over the (N, size) leaves `rows`."""
  return jnp.sqrt(_total([jnp.sum(row ** 2, axis=1) for row in rows]))


def _increment(count: jax.Array) -> jax.Array:
  return jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count)


def _task_axis_zeros(params: PyTree, n: int, dtype) -> PyTree:
  return jax.tree.map(lambda p: jnp.zeros((n, *jnp.shape(p)), dtype), params)


def _rows_of(tree: PyTree, rows: list[jax.Array]) -> list[jax.Array]:
  """The leaves of the task-axis pytree `tree` (a state field) shaped as `rows`."""
  return [leaf.reshape(row.shape) for leaf, row in zip(jax.tree.leaves(tree), rows)]


def _tree_of(rows: list[jax.Array], like: PyTree) -> PyTree:
  """`rows` as a pytree with the structure and leaf shapes of `like`."""
  return jax.tree.unflatten(jax.tree.structure(like), [row.reshape(leaf.shape)
                                                       for row, leaf in zip(rows, jax.tree.leaves(like))])


def _decayed(rate: float, sigma: float, count: jax.Array, dtype) -> jax.Array:
  """rate / t^sigma at the t-th update (t = `count` ≥ 1), LibMTL's decaying step sizes."""
  return rate / count.astype(dtype) ** sigma


def _float_dtype(leaves) -> Any:
  floats = [leaf for leaf in leaves if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)]
  dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
  return jnp.promote_types(dtype, jnp.float32)


def _check_task_grads(task_grads: PyTree, num_tasks: int | None, name: str = "task_grads"):
  leaves, treedef = jax.tree.flatten(task_grads)
  if not leaves:
    raise ValueError(f"`{name}` has no leaves.")
  leaves = [jnp.asarray(leaf) for leaf in leaves]
  for leaf in leaves:
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(f"`{name}` must hold floating-point arrays, got a leaf of dtype {leaf.dtype}.")
  expected = "(N, ...) on every leaf: the task axis first" + (f", N = {num_tasks}" if num_tasks else "")
  n = num_tasks if num_tasks is not None else (leaves[0].shape[0] if leaves[0].ndim else 0)
  for leaf in leaves:
    if leaf.ndim == 0 or leaf.shape[0] != n or n == 0:
      raise AssertionError(_common.shape_message(name, leaf.shape, expected))
  return leaves, treedef, n


def _cast_floats(tree: PyTree, dtypes: PyTree) -> PyTree:
  """`tree` with each floating leaf cast to the dtype of the matching leaf of `dtypes` (a tree or a dtype)."""
  if not isinstance(dtypes, (jnp.dtype, np.dtype, type)):
    return jax.tree.map(lambda x, like: x.astype(like.dtype) if jnp.issubdtype(like.dtype, jnp.floating) else x,
                        tree, dtypes)
  return jax.tree.map(lambda x: x.astype(dtypes) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _transformation(combine, init_state, num_tasks: int | None, weighting: _Weighting | None = None):
  """The Optax transformation of `combine(rows, state, task_losses, extra_args) -> (output rows, state)`.

  `rows` are the leaves of `task_grads` as (N, size) arrays in the common dtype (at least float32); the state's
  floating arrays are handed over in that dtype and stored back in their own. `weighting` is kept on `update`
  for `cr_mogm`.
  """
  import optax  # pylint: disable=g-import-not-at-top  # `import losses` must not load optax.

  def init(params: PyTree):
    return init_state(params, _float_dtype(jax.tree.leaves(params)))

  def update(task_grads: PyTree, state, params: PyTree | None = None, *, task_losses: ArrayLike | None = None,
             **extra_args):
    del params
    leaves, treedef, n = _check_task_grads(task_grads, num_tasks)
    dtype = _float_dtype(leaves)
    rows = [leaf.reshape(n, -1).astype(dtype) for leaf in leaves]
    outputs, new_state = combine(rows, _cast_floats(state, dtype), task_losses, extra_args)
    updates = [out.reshape(leaf.shape[1:]).astype(leaf.dtype) for out, leaf in zip(outputs, leaves)]
    return jax.tree.unflatten(treedef, updates), _cast_floats(new_state, state)

  update.weighting = weighting
  return optax.GradientTransformationExtraArgs(init, update)


def _weighted(weighting: _Weighting, num_tasks: int | None, *, independent: bool = False):
  """The transformation d = Jᵀw of `weighting`, w from G = JJᵀ (or from J·J′ᵀ with `independent` methods)."""

  def combine(rows, state, task_losses, extra_args):
    other = extra_args.get("independent_task_grads") if independent else None
    if other is None:
      weights, state = weighting.weigh(_gram(rows), state, task_losses)
      return [jnp.matmul(weights, row, precision=_HIGHEST) for row in rows], state
    other_leaves, _, _ = _check_task_grads(other, rows[0].shape[0], "independent_task_grads")
    others = [leaf.reshape(row.shape).astype(row.dtype) for leaf, row in zip(other_leaves, rows)]
    weights, state = weighting.weigh(_gram(rows, others), state, task_losses)
    return [0.5 * jnp.matmul(weights, row + other, precision=_HIGHEST) for row, other in zip(rows, others)], state

  return _transformation(combine, lambda params, dtype: weighting.init(dtype), num_tasks, weighting)


def _stateless(weights_of_gram: Callable[[jax.Array], jax.Array], num_tasks: int | None):
  return _weighted(_Weighting(lambda dtype: _empty_state(),
                              lambda gram, state, task_losses: (weights_of_gram(gram), state)), num_tasks)


def _empty_state():
  import optax  # pylint: disable=g-import-not-at-top
  return optax.EmptyState()


def _key_weighted(weights_of, seed: int, num_tasks: int | None):
  """A method whose weights `weights_of(gram, key)` are random: the state is the key, split at every update."""
  seed = _common.check_int(seed, "seed")

  def weigh(gram, state, task_losses):
    key, subkey = jax.random.split(state.key)
    return weights_of(gram, subkey), KeyState(key)

  return _weighted(_Weighting(lambda dtype: KeyState(jax.random.PRNGKey(seed)), weigh), num_tasks)


def _num_tasks(num_tasks, name: str, *, required: bool = False) -> int | None:
  if num_tasks is None:
    if required:
      raise ValueError(f"The {name!r} aggregator keeps per-task state: give `num_tasks`.")
    return None
  return _common.check_int(num_tasks, "num_tasks", minimum=1)


def _float(value, name: str, *, minimum: float | None = 0.0, strict: bool = False,
           maximum: float | None = None, below: bool = False) -> float:
  _common.check_number(value, name, minimum=minimum, strict=strict, static=True)
  if maximum is not None and not (value < maximum if below else value <= maximum):
    interval = f"[{minimum}, {maximum})" if below else f"[{minimum}, {maximum}]"
    raise ValueError(f"`{name}` must be in {interval}, got {value}.")
  return float(value)


def _vector(value, name: str, num_tasks: int | None, *, length_offset: int = 0) -> tuple[np.ndarray | None,
                                                                                            int | None]:
  """A per-task option as a float64 NumPy vector, and the number of tasks it implies (`num_tasks` if given)."""
  if value is None:
    return None, num_tasks
  vector = np.asarray(value, np.float64)
  if vector.ndim != 1 or vector.size + length_offset < 1:
    raise ValueError(_common.shape_message(name, vector.shape, "(N,) with N >= 1"))
  implied = vector.size + length_offset
  if num_tasks is not None and implied != num_tasks:
    raise ValueError(_common.shape_message(name, vector.shape, f"(N{'-1' if length_offset else ''},) with N = "
                                           f"{num_tasks} like `num_tasks`"))
  return vector, implied


def _preference(vector, n, dtype, default):
  return jnp.full((n,), default, dtype) if vector is None else jnp.asarray(vector, dtype)


def _task_losses(task_losses, n: int, dtype, name: str) -> jax.Array:
  if task_losses is None:
    raise ValueError(f"The {name!r} aggregator needs `task_losses`: update(task_grads, state, params, "
                     "task_losses=...).")
  task_losses = _common.as_float(task_losses, "task_losses").astype(dtype)
  _common.chex().assert_shape(task_losses, (n,), custom_message=_common.shape_message(
      "task_losses", task_losses.shape, f"(N,) = ({n},)"))
  return jax.lax.stop_gradient(task_losses)


# ---------------------------------------------------------------------------------------------------------------
# The methods. Every `update(task_grads, state, params=None, *, task_losses=None, **extra_args)` returns the
# update pytree without the task axis (each leaf in its `task_grads` leaf's dtype) and the new state.


def mean(*, num_tasks: int | None = None) -> Transformation:
  """The mean of the task gradients, d = (1/N) Σᵢ gᵢ (TorchJD's `Mean`).

  Args:
    num_tasks: if given, checked against the task axis.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs` (`optax.EmptyState()`).

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.mean()
    >>> print(aggregator.update(jnp.array([[1.0, 0.0], [0.0, 2.0]]), aggregator.init(jnp.zeros(2)))[0])
    [0.5 1. ]
  """
  return _stateless(_mean_weights, _num_tasks(num_tasks, "mean"))


def sum(*, num_tasks: int | None = None) -> Transformation:
  """The sum of the task gradients, d = Σᵢ gᵢ (TorchJD's `Sum`): linear scalarisation with unit weights.

  Args:
    num_tasks: if given, checked against the task axis.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.sum()
    >>> print(aggregator.update(jnp.array([[1.0, 0.0], [0.0, 2.0]]), aggregator.init(jnp.zeros(2)))[0])
    [1. 2.]
  """
  return _stateless(lambda gram: jnp.ones(gram.shape[0], gram.dtype), _num_tasks(num_tasks, "sum"))


def constant(weights: ArrayLike, *, num_tasks: int | None = None) -> Transformation:
  """Fixed weights, d = Σᵢ wᵢgᵢ (TorchJD's `Constant`).

  Args:
    weights: (N,) the weights, as static numbers.
    num_tasks: if given, checked against the task axis and the length of `weights`.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.constant((0.5, 2.0))
    >>> print(aggregator.update(jnp.array([[1.0, 0.0], [0.0, 2.0]]), aggregator.init(jnp.zeros(2)))[0])
    [0.5 4. ]
  """
  vector, n = _vector(weights, "weights", _num_tasks(num_tasks, "constant"))
  if vector is None:
    raise ValueError(_common.shape_message("weights", (), "(N,) with N >= 1"))
  return _stateless(lambda gram: jnp.asarray(vector, gram.dtype), n)


def mgda(*, max_iters: int = 100, num_tasks: int | None = None) -> Transformation:
  """MGDA: the minimum-norm point of the convex hull of the gᵢ, w = argmin_{w ∈ Δ} wᵀGw.

  Source: Désidéri 2012, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization";
  Sener & Koltun, NeurIPS 2018. TorchJD's `MGDA` runs Frank-Wolfe for at most 100 iterations, stopping once
  the step is below `epsilon` = 1e-3, so its answer is approximate (up to 4e-2 of the largest gradient norm
  away from the minimum-norm point, never shorter than ours); here the QP is solved to rounding (see the
  module docstring), so the options are this solver's, not Frank-Wolfe's: the solution satisfies
  gᵢ·d ≥ ‖d‖², with equality on the support, to 1e-14 of trace(G) in float64.

  Args:
    max_iters: accelerated projected-gradient steps before the exact active-set phase.
    num_tasks: if given, checked against the task axis.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, losses
    >>> params = {"w": jnp.zeros(2)}
    >>> optimizer = optax.chain(losses.aggregation.mgda(), optax.sgd(1.0))
    >>> task_grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    >>> updates, state = jax.jit(optimizer.update)(task_grads, optimizer.init(params), params)
    >>> print(updates["w"].round(3))  # −(min-norm point of the segment [(1, 0), (0, 2)]) = −(0.8, 0.4)
    [-0.8 -0.4]
  """
  max_iters = _common.check_int(max_iters, "max_iters", minimum=0)
  return _stateless(lambda gram: _mgda_weights(gram, max_iters), _num_tasks(num_tasks, "mgda"))


def pcgrad(*, seed: int = 0, num_tasks: int | None = None) -> Transformation:
  """PCGrad: each gᵢ, visiting the others in a random order, loses its component along every original gⱼ it
  conflicts with, gᵢ ← gᵢ − min(0, gᵢ·gⱼ)/‖gⱼ‖² gⱼ; d is the sum of the projected gᵢ.

  Source: Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020 (TorchJD's `PCGrad`, which draws
  the order of task i with `torch.randperm(N)`, itself included and skipped). Closed form on the Gramian, no
  solver.

  Args:
    seed: the PRNG seed of the visiting orders (the state's key, split at every update).
    num_tasks: if given, checked against the task axis.

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `KeyState`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.pcgrad()
    >>> update, _ = aggregator.update(jnp.array([[1.0, 0.0], [-1.0, 1.0]]), aggregator.init(jnp.zeros(2)))
    >>> print(update)  # (1, 0) + ½(1, 1) and (−1, 1) + (1, 0): two tasks, one outcome whatever the order.
    [0.5 1.5]
  """
  n = _num_tasks(num_tasks, "pcgrad")
  return _key_weighted(lambda gram, key: _pcgrad_weights(gram, jax.vmap(
      lambda k: jax.random.permutation(k, gram.shape[0]))(jax.random.split(key, gram.shape[0]))), seed, n)


def gradvac(*, beta: float = 0.5, eps: float = 1e-8, seed: int = 0, num_tasks: int | None = None) -> Transformation:
  """GradVac: like PCGrad, but whenever φᵢⱼ = cos(gᵢ, gⱼ) is below its EMA target φ̂ᵢⱼ, gᵢ gains the multiple of
  gⱼ that raises the cosine to φ̂ᵢⱼ; φ̂ ← (1 − β)φ̂ + βφ (state); d is the sum.

  Source: Wang et al., "Gradient Vaccine", ICLR 2021 (TorchJD's `GradVac`, the same visiting orders of the other
  tasks and the same `eps` in the denominators). Closed form on the Gramian.

  Args:
    beta: the EMA rate of the cosine targets, in [0, 1].
    eps: added to the denominators.
    seed: the PRNG seed of the visiting orders.
    num_tasks: the number of tasks N (required: the targets are N × N).

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `GradVacState`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.gradvac(num_tasks=2)
    >>> state = aggregator.init(jnp.zeros(2))
    >>> _, state = aggregator.update(jnp.array([[1.0, 0.0], [0.0, 1.0]]), state)
    >>> print(state.phi)  # ½·0 + ½·cos = 0: orthogonal gradients leave the targets at 0.
    [[0. 0.]
     [0. 0.]]
  """
  n = _num_tasks(num_tasks, "gradvac", required=True)
  beta, eps, seed = _float(beta, "beta", maximum=1.0), _float(eps, "eps"), _common.check_int(seed, "seed")

  def weigh(gram, state, task_losses):
    key, subkey = jax.random.split(state.key)
    weights, phi = _gradvac_weights(gram, state.phi, _others_orders(subkey, n), beta, eps)
    return weights, GradVacState(key, phi)

  return _weighted(_Weighting(lambda dtype: GradVacState(jax.random.PRNGKey(seed), jnp.zeros((n, n), dtype)),
                              weigh), n)


def cagrad(c: float, *, norm_eps: float = 1e-4, max_iters: int = 100, num_tasks: int | None = None) -> Transformation:
  """CAGrad: d = g₀ + ρ·g_w/‖g_w‖ with g₀ the mean gradient, ρ = c‖g₀‖ and w = argmin_{w ∈ Δ} g_w·g₀ + ρ‖g_w‖,
  the dual of max_d minᵢ gᵢ·d s.t. ‖d − g₀‖ ≤ ρ.

  Source: Liu et al., "Conflict-Averse Gradient Descent", NeurIPS 2021 (TorchJD's `CAGrad`, which solves the
  problem with cvxpy/Clarabel on the trace-normalised Gramian). The objective is non-smooth; it equals
  min_{t>0} g_w·g₀ + ρ(‖g_w‖²/(2t) + t/2), so the optimal t = ‖g_{w(t)}‖ is found by 40 bisection steps on
  log t in [1e-9, 1], each solving the simplex QP warm-started. TorchJD's solution is within 5e-4 relative
  (float64), and ours is never worse on the objective minᵢ gᵢ·d. TorchJD's guards are kept: G is divided by
  its trace, and a zero update is returned if the trace is below `norm_eps` or ‖g_w‖ is.

  Args:
    c: the radius factor (required: TorchJD has no default; LibMTL and the paper use 0.5 for multi-task
      benchmarks).
    norm_eps: the guard above (0 disables it).
    max_iters: accelerated projected-gradient steps of the first QP.
    num_tasks: if given, checked against the task axis.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.cagrad(0.5)
    >>> jacobian = jnp.array([[1.0, 0.0], [-0.5, 1.0]])
    >>> update, _ = aggregator.update(jacobian, aggregator.init(jnp.zeros(2)))
    >>> print(bool(jnp.isclose(jnp.linalg.norm(update - jacobian.mean(0)), 0.5 * jnp.linalg.norm(jacobian.mean(0)))))
    True
  """
  c, norm_eps = _float(c, "c"), _float(norm_eps, "norm_eps")
  max_iters = _common.check_int(max_iters, "max_iters", minimum=0)
  return _stateless(lambda gram: _cagrad_weights(gram, c, norm_eps, max_iters), _num_tasks(num_tasks, "cagrad"))


def nash_mtl(*, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20,
             num_tasks: int | None = None) -> Transformation:
  """Nash-MTL: the Nash bargaining solution, w > 0 with wᵢ(Gw)ᵢ = 1 for every i, rescaled so that ‖d‖ ≤ `max_norm`.

  Source: Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022 (TorchJD's `NashMTL`, after the
  official code, linearises the problem and calls ECOS up to `optim_niter` times; its `n_tasks` is
  `num_tasks` here, as everywhere in this library). Here Gw = 1/w is solved by Newton's method on the
  self-concordant ½wᵀGw − Σᵢ log wᵢ, iterates kept positive, warm-started from the previous weights (state),
  so `optim_niter` counts Newton steps: 20 reach maxᵢ|wᵢ(Gw)ᵢ − 1| < 1e-9 on every tested problem, where
  TorchJD's residual is often above 1; where TorchJD converges the updates agree to 1e-5.

  Args:
    max_norm: the largest ‖d‖ (0 disables the clipping).
    update_weights_every: solve every this many updates, reuse the weights in between.
    optim_niter: Newton steps per solve.
    num_tasks: the number of tasks N (required: the weights are kept).

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `NashMTLState`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.nash_mtl(num_tasks=2, max_norm=0.0)
    >>> _, state = aggregator.update(jnp.array([[2.0, 0.0], [0.0, 0.5]]), aggregator.init(jnp.zeros(2)))
    >>> print(state.weights.round(4))  # wᵢ‖gᵢ‖² wᵢ = 1: wᵢ = 1/‖gᵢ‖ for orthogonal gradients.
    [0.5 2. ]
  """
  n = _num_tasks(num_tasks, "nash_mtl", required=True)
  max_norm = _float(max_norm, "max_norm")
  every = _common.check_int(update_weights_every, "update_weights_every", minimum=1)
  optim_niter = _common.check_int(optim_niter, "optim_niter", minimum=0)

  def weigh(gram, state, task_losses):
    weights, solved = _nash_weights(gram, state.weights, state.count, max_norm, every, optim_niter)
    return weights, NashMTLState(_increment(state.count), solved)

  return _weighted(_Weighting(lambda dtype: NashMTLState(jnp.zeros((), jnp.int32), jnp.ones(n, dtype)), weigh), n)


def imtl_g(*, num_tasks: int | None = None) -> Transformation:
  """IMTL-G: w ∝ G⁺·diag(G)^½, so that d has the same projection d·gᵢ/‖gᵢ‖ on every task's direction.

  Source: Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, in TorchJD's form (`IMTLG`) that allows
  dependent rows; the pseudo-inverse drops eigenvalues below N·eps·λ_max, as TorchJD.

  Args:
    num_tasks: if given, checked against the task axis.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.imtl_g()
    >>> update, _ = aggregator.update(jnp.array([[2.0, 0.0], [0.0, 1.0]]), aggregator.init(jnp.zeros(2)))
    >>> print(update.round(4))  # w = (1/2, 1)/1.5: equal projections 2/3 on both axes.
    [0.6667 0.6667]
  """
  return _stateless(_imtl_g_weights, _num_tasks(num_tasks, "imtl_g"))


def aligned_mtl(*, pref_vector: ArrayLike | None = None, scale_mode: str = "min",
                num_tasks: int | None = None) -> Transformation:
  """Aligned-MTL: w = B·p with B = √λ·V Λ^(−½) Vᵀ from G = VΛVᵀ (nonzero eigenvalues only): the gradients'
  principal components are equalised.

  Source: Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023 (TorchJD's
  `AlignedMTL`); eigenvalues below N·eps·λ_max count as zero, as TorchJD.

  Args:
    pref_vector: (N,) p, default 1/N.
    scale_mode: λ is the smallest nonzero eigenvalue ("min"), their lower median ("median", as
      `torch.median`) or their mean ("rmse").
    num_tasks: if given, checked against the task axis and `pref_vector`.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.aligned_mtl()
    >>> update, _ = aggregator.update(jnp.array([[2.0, 0.0], [0.0, 1.0]]), aggregator.init(jnp.zeros(2)))
    >>> print(update.round(4))  # Both components scaled to the smaller one, times p = ½.
    [0.5 0.5]
  """
  vector, n = _vector(pref_vector, "pref_vector", _num_tasks(num_tasks, "aligned_mtl"))
  if scale_mode not in ("min", "median", "rmse"):
    raise ValueError(f"`scale_mode` must be 'min', 'median' or 'rmse', got {scale_mode!r}.")
  return _stateless(lambda gram: _aligned_mtl_weights(gram, _preference(vector, gram.shape[0], gram.dtype,
                                                                        1.0 / gram.shape[0]), scale_mode), n)


def upgrad(*, pref_vector: ArrayLike | None = None, norm_eps: float = 1e-4, reg_eps: float = 1e-4,
           max_iters: int = 100, num_tasks: int | None = None) -> Transformation:
  """UPGrad: every pᵢgᵢ is projected onto the dual cone {x: Jx ≥ 0} and the projections are summed; the projection
  of Jᵀu is Jᵀv with v = argmin_{v ≥ u} vᵀGv.

  Source: Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization" (TorchJD's `UPGrad`, which
  calls quadprog; the same normalisation: G divided by its trace, `reg_eps` added to its diagonal, and the
  plain combination Jᵀp where the trace is below `norm_eps`, i.e. ‖J‖_F < 0.01). The orthant QP is solved
  exactly (module docstring); the updates equal TorchJD's to 1e-9 relative.

  Args:
    pref_vector: (N,) p, default 1/N.
    norm_eps: the guard above (0 disables it).
    reg_eps: the ridge of the normalised Gramian (0: ⟨d, gᵢ⟩ ≥ 0 exactly).
    max_iters: accelerated projected-gradient steps before the active-set phase.
    num_tasks: if given, checked against the task axis and `pref_vector`.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.upgrad(reg_eps=0.0)
    >>> jacobian = jnp.array([[1.0, 0.0], [-0.5, 1.0]])
    >>> update, _ = aggregator.update(jacobian, aggregator.init(jnp.zeros(2)))
    >>> print(bool((jacobian @ update >= -1e-6).all()))
    True
  """
  return _dual_cone(_upgrad_weights, "upgrad", pref_vector, norm_eps, reg_eps, max_iters, num_tasks)


def dualproj(*, pref_vector: ArrayLike | None = None, norm_eps: float = 1e-4, reg_eps: float = 1e-4,
             max_iters: int = 100, num_tasks: int | None = None) -> Transformation:
  """DualProj: the projection of Jᵀp onto the dual cone {x: Jx ≥ 0}, Jᵀv with v = argmin_{v ≥ p} vᵀGv.

  Source: Lopez-Paz & Ranzato, "Gradient Episodic Memory", NeurIPS 2017, in the form of Quinton & Rey 2024
  (TorchJD's `DualProj`: the options and guards of `upgrad`).

  Args:
    pref_vector: (N,) p, default 1/N.
    norm_eps: G's trace below which Jᵀp is returned.
    reg_eps: the ridge of the normalised Gramian.
    max_iters: accelerated projected-gradient steps before the active-set phase.
    num_tasks: if given, checked against the task axis and `pref_vector`.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.dualproj(reg_eps=0.0)
    >>> update, _ = aggregator.update(jnp.array([[1.0, 0.0], [-2.0, 1.0]]), aggregator.init(jnp.zeros(2)))
    >>> print(bool(jnp.allclose(update, jnp.array([0.0, 0.5]), atol=1e-5)))  # The mean (−½, ½) projected: g₁·d = 0.
    True
  """
  return _dual_cone(_dualproj_weights, "dualproj", pref_vector, norm_eps, reg_eps, max_iters, num_tasks)


def _dual_cone(solver, name, pref_vector, norm_eps, reg_eps, max_iters, num_tasks):
  vector, n = _vector(pref_vector, "pref_vector", _num_tasks(num_tasks, name))
  norm_eps, reg_eps = _float(norm_eps, "norm_eps"), _float(reg_eps, "reg_eps")
  max_iters = _common.check_int(max_iters, "max_iters", minimum=0)
  return _stateless(lambda gram: solver(gram, _preference(vector, gram.shape[0], gram.dtype, 1.0 / gram.shape[0]),
                                        norm_eps, reg_eps, max_iters), n)


def graddrop(*, f: Callable[[jax.Array], jax.Array] | None = None, leak: ArrayLike | None = None, seed: int = 0,
             num_tasks: int | None = None) -> Transformation:
  """GradDrop: per coordinate, the positive-sign purity P = ½(1 + Σᵢgᵢ/Σᵢ|gᵢ|) and a uniform draw U keep the
  positive components where f(P) > U and the negative ones where f(P) < U; d is the sum of what is kept (plus
  the fraction `leak` of every gradient).

  Source: Chen et al., "Just Pick a Sign", NeurIPS 2020 (TorchJD's `GradDrop`). It reads J coordinate-wise, not
  through the Gramian.

  Args:
    f: a monotone function applied to the purity array (default: the identity).
    leak: (N,) the fraction of each gradient let through (default: zeros).
    seed: the PRNG seed of the uniform draws.
    num_tasks: if given, checked against the task axis and `leak`.

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `KeyState`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.graddrop()
    >>> update, _ = aggregator.update(jnp.array([[1.0, 2.0], [3.0, 1.0]]), aggregator.init(jnp.zeros(2)))
    >>> print(update)  # No conflicting signs: every component is kept.
    [4. 3.]
  """
  if f is not None and not callable(f):
    raise TypeError(f"`f` must be a callable applied to the purity array, got {f!r}.")
  vector, n = _vector(leak, "leak", _num_tasks(num_tasks, "graddrop"))
  seed = _common.check_int(seed, "seed")

  def combine(rows, state, task_losses, extra_args):
    key, subkey = jax.random.split(state.key)
    matrix = jnp.concatenate(rows, axis=1)
    fractions = jnp.zeros(matrix.shape[0], matrix.dtype) if vector is None else jnp.asarray(vector, matrix.dtype)
    combined = _graddrop(matrix, jax.random.uniform(subkey, (matrix.shape[1],), matrix.dtype),
                         f or (lambda purity: purity), fractions)
    return jnp.split(combined, np.cumsum([row.shape[1] for row in rows])[:-1]), KeyState(key)

  return _transformation(combine, lambda params, dtype: KeyState(jax.random.PRNGKey(seed)), n)


def config(*, pref_vector: ArrayLike | None = None, num_tasks: int | None = None) -> Transformation:
  """ConFIG: with the unit rows uᵢ = gᵢ/‖gᵢ‖, the direction x = U⁺p (so uᵢ·x = pᵢ) and d = (Σᵢ gᵢ·x̂)·x̂.

  Source: Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", ICLR 2025
  (TorchJD's `ConFIG`, which takes the pseudo-inverse of the N × P unit-row matrix; here U⁺ = Uᵀ(UUᵀ)⁺ from the
  Gramian, eigenvalues below N·eps·λ_max counting as zero. The two agree for independent rows and for exactly
  dependent ones).

  Args:
    pref_vector: (N,) p, default ones.
    num_tasks: if given, checked against the task axis and `pref_vector`.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.config()
    >>> update, _ = aggregator.update(jnp.array([[2.0, 0.0], [0.0, 1.0]]), aggregator.init(jnp.zeros(2)))
    >>> print(update.round(4))  # x̂ = (1, 1)/√2, length Σᵢ gᵢ·x̂ = 3/√2.
    [1.5 1.5]
  """
  vector, n = _vector(pref_vector, "pref_vector", _num_tasks(num_tasks, "config"))
  return _stateless(lambda gram: _config_weights(gram, _preference(vector, gram.shape[0], gram.dtype, 1.0)), n)


def random(*, seed: int = 0, num_tasks: int | None = None) -> Transformation:
  """Random loss weighting at the gradient level: w = softmax(z), z ~ N(0, I), drawn anew at every update.

  Source: Lin et al., "Reasonable Effectiveness of Random Weighting", TMLR 2022 (TorchJD's `Random`).

  Args:
    seed: the PRNG seed of the draws.
    num_tasks: if given, checked against the task axis.

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `KeyState`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.random(seed=1)
    >>> update, _ = aggregator.update(jnp.eye(3), aggregator.init(jnp.zeros(3)))
    >>> print(round(float(update.sum()), 5))  # J = I: the update is the weights, on the simplex.
    1.0
  """
  return _key_weighted(lambda gram, key: _random_weights(key, gram.shape[0], gram.dtype), seed,
                       _num_tasks(num_tasks, "random"))


def gradnorm(*, alpha: float = 1.5, learning_rate: float = 0.025, num_tasks: int | None = None) -> Transformation:
  """GradNorm: trainable weights wᵢ (state) combine the gradients; each update then moves them by one step of size
  `learning_rate` on Σᵢ|wᵢ‖gᵢ‖ − Ḡ·rᵢ^α| (targets held constant, Ḡ the mean of wᵢ‖gᵢ‖, rᵢ the inverse training
  rate Lᵢ(t)/Lᵢ(0) over its mean) and renormalises them to sum to N.

  Source: Chen et al., "GradNorm", ICML 2018 (TorchJD has no GradNorm). The paper trains wᵢ directly and
  renormalises them (followed here); LibMTL parametrises w = N·softmax(s), takes Lᵢ(0) as the mean loss of the
  first epoch and keeps w = 1 during it. Here Lᵢ(0) are the losses of the first update. The paper takes the
  norms at the last shared layer; this aggregator, like LibMTL, uses the gradients it receives: pass it the
  gradients of the shared parameters only. Weights are clipped at 0 before renormalising.

  Args:
    alpha: the asymmetry α.
    learning_rate: the step size of the weights (the paper gives none).
    num_tasks: the number of tasks N (required: the weights are kept).

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `GradNormState`; its `update` needs
    `task_losses=` (N,).

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.gradnorm(num_tasks=2)
    >>> jacobian = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> _, state = aggregator.update(jacobian, aggregator.init(jnp.zeros(2)), task_losses=jnp.array([2.0, 1.0]))
    >>> print(state.weights.round(2))  # (1 + 0.025, 1 − 0.025·2), renormalised to sum to 2
    [1.04 0.96]
  """
  n = _num_tasks(num_tasks, "gradnorm", required=True)
  alpha, learning_rate = _float(alpha, "alpha"), _float(learning_rate, "learning_rate")

  def weigh(gram, state, task_losses):
    task_losses = _task_losses(task_losses, n, gram.dtype, "gradnorm")
    initial = jnp.where(state.count == 0, task_losses, state.initial_losses)
    new_weights, _ = _gradnorm_step(jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)), state.weights, initial,
                                    task_losses, alpha, learning_rate)
    return state.weights, GradNormState(_increment(state.count), new_weights, initial)

  return _weighted(_Weighting(lambda dtype: GradNormState(jnp.zeros((), jnp.int32), jnp.ones(n, dtype),
                                                          jnp.ones(n, dtype)), weigh), n)


def krum(n_byzantine: int, *, n_selected: int = 1, num_tasks: int | None = None) -> Transformation:
  """Krum and Multi-Krum: the mean of the `n_selected` rows with the smallest scores, a row's score being the sum
  of its distances to its N − f − 2 nearest other rows (f = `n_byzantine`).

  Source: Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS
  2017 (TorchJD's `Krum`). Distances from the Gramian, ‖gᵢ − gⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ clipped at 0. Ties are
  broken by the lower index (a stable sort; TorchJD's `torch.topk` leaves them unspecified).

  Args:
    n_byzantine: f, the number of rows that may be adversarial (N ≥ f + 3 is checked at trace time).
    n_selected: the number of rows averaged (1: Krum).
    num_tasks: if given, checked against the task axis.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.krum(0)
    >>> jacobian = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    >>> print(aggregator.update(jacobian, aggregator.init(jnp.zeros(2)))[0])  # The row nearest the others.
    [0. 0.]
  """
  n_byzantine = _common.check_int(n_byzantine, "n_byzantine", minimum=0)
  n_selected = _common.check_int(n_selected, "n_selected", minimum=1)

  def weights_of(gram):
    n = gram.shape[0]
    if n < max(n_byzantine + 3, n_selected):
      raise AssertionError(_common.shape_message("task_grads", gram.shape[:1], f"(N, ...) with N >= n_byzantine + 3 "
                                                 f"= {n_byzantine + 3} and N >= n_selected = {n_selected}"))
    return _krum_weights(gram, n_byzantine, n_selected)

  return _stateless(weights_of, _num_tasks(num_tasks, "krum"))


def trimmed_mean(trim_number: int, *, num_tasks: int | None = None) -> Transformation:
  """The coordinate-wise trimmed mean: in every coordinate, the `trim_number` largest and smallest of the N values
  are dropped and the others averaged.

  Source: Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018
  (TorchJD's `TrimmedMean`). It reads J coordinate-wise, not through the Gramian.

  Args:
    trim_number: the number of values dropped at each end (N ≥ 2·trim_number + 1 is checked at trace time).
    num_tasks: if given, checked against the task axis.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.trimmed_mean(1)
    >>> jacobian = jnp.array([[0.0, 5.0], [1.0, -9.0], [100.0, 1.0]])
    >>> print(aggregator.update(jacobian, aggregator.init(jnp.zeros(2)))[0])  # The median of three.
    [1. 1.]
  """
  trim_number = _common.check_int(trim_number, "trim_number", minimum=0)

  def combine(rows, state, task_losses, extra_args):
    n = rows[0].shape[0]
    if n < 2 * trim_number + 1:
      raise AssertionError(_common.shape_message("task_grads", (n,), f"(N, ...) with N >= 2·trim_number + 1 = "
                                                 f"{2 * trim_number + 1}"))
    return [jnp.mean(jnp.sort(row, axis=0)[trim_number:n - trim_number], axis=0) for row in rows], state

  return _transformation(combine, lambda params, dtype: _empty_state(), _num_tasks(num_tasks, "trimmed_mean"))


def fairgrad(alpha: float, *, max_iters: int | None = None, num_tasks: int | None = None) -> Transformation:
  """FairGrad: the α-fair weights, w > 0 with (Gw)ᵢ = wᵢ^(−1/α) for every i (α = 0: w = 1/N; α = 1: Nash-MTL's
  bargaining condition).

  Source: Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, eq. 4 (TorchJD's `FairGrad`,
  which calls `scipy.optimize.least_squares` from w = 1/N with bounds w ≥ 0 and at most `max_iters` function
  evaluations, 100·N by default). Here the condition is solved as the minimiser of the convex
  ½wᵀGw − Σᵢ h(wᵢ), h′(w) = w^(−1/α), by Newton's method with positive iterates (as `nash_mtl`), from the best
  multiple of ones: `max_iters` counts Newton steps (default 20), which reach
  maxᵢ|(Gw)ᵢ·wᵢ^(1/α) − 1| < 1e-9 on the tested problems in float64. For singular G (dependent rows) the
  condition may have no exact solution; both solvers then return a point where the residual is small.

  Args:
    alpha: α ≥ 0 (required, as in TorchJD).
    max_iters: Newton steps (None: 20).
    num_tasks: if given, checked against the task axis.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.fairgrad(2.0)
    >>> update, _ = aggregator.update(jnp.array([[4.0, 0.0], [0.0, 1.0]]), aggregator.init(jnp.zeros(2)))
    >>> print([round(x, 3) for x in update.tolist()])  # Orthogonal rows: ‖gᵢ‖²wᵢ = wᵢ^(−½), wᵢ = ‖gᵢ‖^(−4/3).
    [0.63, 1.0]
  """
  alpha = _float(alpha, "alpha")
  iterations = 20 if max_iters is None else _common.check_int(max_iters, "max_iters", minimum=0)

  def weights_of(gram):
    n = gram.shape[0]
    if alpha == 0:
      return jnp.full((n,), 1.0 / n, gram.dtype)
    return _fair_solve(gram, jnp.ones(n, gram.dtype), iterations, alpha)

  return _stateless(weights_of, _num_tasks(num_tasks, "fairgrad"))


def excess_mtl(*, robust_step_size: float = 1.0, n_warmup_steps: int = 0,
               num_tasks: int | None = None) -> Transformation:
  """ExcessMTL: weights on the simplex moved by an exponentiated-gradient step on each task's excess risk,
  w ← softmax(log w + η·Êᵢ/Êᵢ⁽⁰⁾), with Êᵢ = Σₚ gᵢₚ²/√(Sᵢₚ + 1e-7) and S the running sum of squared gradients
  (an AdaGrad-style diagonal Hessian: Êᵢ ≈ gᵢᵀHᵢ⁻¹gᵢ).

  Source: He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024, eqs. 6, 7 and 9 (TorchJD's
  `ExcessMTL`: weights start at 1/N; during the first `n_warmup_steps` updates they stay there and the
  excess risks are summed, their mean becoming the baseline Ê⁽⁰⁾; with no warm-up the first update's raw
  excess risks are both the baseline and its step, as in the official code and LibMTL). It reads J itself:
  S has the parameters' shape with a task axis, kept in the state (memory N times the shared parameters).
  No solver.

  Args:
    robust_step_size: η > 0.
    n_warmup_steps: updates with uniform weights that only collect the baseline.
    num_tasks: the number of tasks N (required: the state has a task axis).

  Returns:
    An `optax.GradientTransformationExtraArgs` with an `ExcessMTLState`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.excess_mtl(num_tasks=2)
    >>> _, state = aggregator.update(jnp.array([[1.0, 0.0], [0.0, 2.0]]), aggregator.init(jnp.zeros(2)))
    >>> print([round(w, 4) for w in state.weights.tolist()])  # Ê = (1, 2) to 1e-7: softmax(log ½ + Ê).
    [0.2689, 0.7311]
  """
  n = _num_tasks(num_tasks, "excess_mtl", required=True)
  step = _float(robust_step_size, "robust_step_size", strict=True)
  warmup = _common.check_int(n_warmup_steps, "n_warmup_steps", minimum=0)

  def init(params, dtype):
    return ExcessMTLState(jnp.zeros((), jnp.int32), jnp.full((n,), 1.0 / n, dtype),
                          _task_axis_zeros(params, n, dtype), jnp.zeros(n, dtype), jnp.zeros(n, dtype))

  def combine(rows, state, task_losses, extra_args):
    sums = [total + row ** 2 for total, row in zip(_rows_of(state.squared_grad_sum, rows), rows)]
    excess = _total([jnp.sum(row ** 2 / jnp.sqrt(total + 1e-7), axis=1) for row, total in zip(rows, sums)])
    in_warmup = state.count < warmup
    first = state.count == warmup
    warmup_sum = jnp.where(in_warmup, state.warmup_excess_sum + excess, state.warmup_excess_sum)
    if warmup:  # The baseline is the warm-up's mean.
      initial = jnp.where(first, warmup_sum / warmup, state.initial_excess)
      scaled = excess / (initial + 1e-7)
    else:  # The first excess risks are the baseline, and the first step takes them raw.
      initial = jnp.where(first, excess, state.initial_excess)
      scaled = jnp.where(first, excess, excess / (initial + 1e-7))
    stepped = jax.nn.softmax(jnp.log(state.weights) + step * scaled)
    weights = jnp.where(in_warmup, state.weights, stepped)
    new_state = ExcessMTLState(_increment(state.count), weights, _tree_of(sums, state.squared_grad_sum), initial,
                               warmup_sum)
    return [jnp.matmul(weights, row, precision=_HIGHEST) for row in rows], new_state

  return _transformation(combine, init, n)


def pcd(*, tau: float | ArrayLike = 0.02, beta: float = 0.999, eps: float = 1e-8, max_iters: int = 100,
        num_tasks: int | None = None) -> Transformation:
  """Priority-Constrained Descent: follow the primary gradient g₁ (the first task) as closely as possible while every
  secondary task j gets at least the fraction τ of the progress of its own normalised gradient,
  d̃ = argmin ½‖d − g̃₁‖² s.t. g̃ⱼ·d ≥ τ‖g̃ⱼ‖², g̃ᵢ = sᵢgᵢ, sᵢ = 1/√(v̂ᵢ + eps) with v̂ the debiased EMA of ‖gᵢ‖²;
  d is d̃ rescaled to ‖g₁‖.

  Source: "Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical Multi-Objective
  Optimization", TMLR 2026 (TorchJD's `PCD`, which solves the dual by Goldfarb & Idnani's active-set method).
  Here the dual, μ = argmin_{μ ≥ 0} ½μᵀG̃ₛμ − bᵀμ with bⱼ = τ‖g̃ⱼ‖² − g̃ⱼ·g̃₁ and d̃ = g̃₁ + Σⱼμⱼg̃ⱼ, is the
  orthant QP of `upgrad` (exact on the optimal face). As TorchJD: g₁ = 0 gives 0; infeasible constraints
  (detected here as a violation above √ridge·max G̃ᵢᵢ at the ridge-regularised solution) are dropped, d = g₁;
  d̃ = 0 to rounding (10·eps relative) gives 0; a non-finite Gramian gives NaN weights and leaves the EMA.

  Args:
    tau: τ in [0, 1], a number or an (N − 1,) vector, one per secondary task.
    beta: the EMA decay, in [0, 1).
    eps: added to the EMA before the inverse square root.
    max_iters: accelerated projected-gradient steps before the active-set phase.
    num_tasks: the number of tasks N (required: the EMA is kept).

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `PCDState`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.pcd(num_tasks=2, tau=0.5)
    >>> update, _ = aggregator.update(jnp.array([[1.0, 0.0], [-1.0, 1.0]]), aggregator.init(jnp.zeros(2)))
    >>> print([round(x, 4) for x in update.tolist()])  # d̃ = g̃₁ + μg̃₂ with g̃₂·d̃ = ½, rescaled to ‖g₁‖ = 1.
    [0.1691, 0.9856]
  """
  n = _num_tasks(num_tasks, "pcd", required=True)
  if np.ndim(tau) == 0:
    taus = np.full(n - 1, _float(tau, "tau", maximum=1.0))
  else:
    taus, _ = _vector(tau, "tau", n, length_offset=1)
    if not ((taus >= 0) & (taus <= 1)).all():
      raise ValueError(f"`tau` must be in [0, 1], got {tau}.")
  beta, eps = _float(beta, "beta", maximum=1.0, below=True), _float(eps, "eps")
  max_iters = _common.check_int(max_iters, "max_iters", minimum=0)

  def weigh(gram, state, task_losses):
    finite = jnp.all(jnp.isfinite(gram))
    count = _increment(state.count)
    squares = jnp.diag(gram)
    ema = beta * state.squared_norm_ema + (1.0 - beta) * squares
    denominators = jnp.sqrt(ema / (1.0 - beta ** count.astype(gram.dtype)) + eps)
    scales = jnp.where(denominators > 0, 1.0 / jnp.where(denominators > 0, denominators, 1.0), 0.0)
    weights = _pcd_weights(jnp.where(finite, gram, 0.0), scales, jnp.asarray(taus, gram.dtype), max_iters)
    new_state = PCDState(jnp.where(finite, count, state.count), jnp.where(finite, ema, state.squared_norm_ema))
    return jnp.where(finite, weights, jnp.nan), new_state

  return _weighted(_Weighting(lambda dtype: PCDState(jnp.zeros((), jnp.int32), jnp.zeros(n, dtype)), weigh), n)


def modo(*, gamma: float = 0.1, rho: float = 0.1, num_tasks: int | None = None) -> Transformation:
  """MoDo: one projected-gradient step per update on MGDA's weights, λ ← Π_Δ(λ − γ(Aλ + ρλ)), d = Jᵀλ.

  Source: Chen, Fernando et al., "Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization
  and Conflict-Avoidance", JMLR 2024 (TorchJD's `MoDoWeighting`, a Gramian weighting with no aggregator of its
  own there: here it is one, d = Jᵀλ). A is J₁J₂ᵀ from two independent mini-batches: pass the second one's
  task gradients as `update(..., independent_task_grads=...)` and the update is ½(J₁ + J₂)ᵀλ (the paper's
  eq. 2.9b); without it A = G = JJᵀ (one batch: the bias the paper's two batches avoid). λ starts at 1/N and
  is kept in the state. The simplex projection is exact (sorting).

  Args:
    gamma: γ > 0, the step size of λ.
    rho: ρ ≥ 0, the ℓ₂ regularisation.
    num_tasks: the number of tasks N (required: λ is kept).

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `SimplexState`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.modo(num_tasks=2, rho=0.0)
    >>> _, state = aggregator.update(jnp.array([[1.0, 0.0], [0.0, 2.0]]), aggregator.init(jnp.zeros(2)))
    >>> print([round(w, 4) for w in state.weights.tolist()])  # Π_Δ(½ − 0.1·(½, 2)) = Π_Δ(0.45, 0.3)
    [0.575, 0.425]
  """
  n = _num_tasks(num_tasks, "modo", required=True)
  gamma, rho = _float(gamma, "gamma", strict=True), _float(rho, "rho")

  def weigh(matrix, state, task_losses):
    weights = _project_simplex(state.weights - gamma * (matrix @ state.weights + rho * state.weights))
    return weights, SimplexState(weights)

  return _weighted(_Weighting(lambda dtype: SimplexState(jnp.full((n,), 1.0 / n, dtype)), weigh), n,
                   independent=True)


def sdmgrad(*, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20, lambda_: float = 0.3,
            pref_vector: ArrayLike | None = None, num_tasks: int | None = None) -> Transformation:
  """SDMGrad: `n_iter` steps of projected SGD with momentum on w ∈ Δ for min ½‖J(w + λw̃)‖², on A normalised by
  the squared mean of √Aᵢᵢ, then the weights (w + λw̃)/(1 + λ); d = Jᵀ(those).

  Source: Xiao et al., "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
  Algorithms", NeurIPS 2023 (TorchJD's `SDMGradWeighting`, a Gramian weighting with no aggregator of its own
  there: here it is one). A is J₁J₂ᵀ from two independent batches with `independent_task_grads=` (update
  ½(J₁ + J₂)ᵀ(weights)), else G = JJᵀ. w starts at 1/N and is kept in the state; `lambda_` keeps TorchJD's
  name (`lambda` is a Python keyword).

  Args:
    lr: the inner step size (> 0).
    momentum: the inner momentum, in [0, 1).
    n_iter: inner steps per update (≥ 1).
    lambda_: λ ≥ 0, the pull towards the preference direction.
    pref_vector: (N,) w̃, default 1/N (the mean gradient).
    num_tasks: the number of tasks N (required: w is kept).

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `SimplexState`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.sdmgrad(num_tasks=2, lambda_=0.0)
    >>> update, _ = aggregator.update(jnp.array([[1.0, 0.0], [0.0, 1.0]]), aggregator.init(jnp.zeros(2)))
    >>> print(update.round(4))  # Symmetric tasks: the minimum-norm point.
    [0.5 0.5]
  """
  vector, n = _vector(pref_vector, "pref_vector", _num_tasks(num_tasks, "sdmgrad"))
  if n is None:
    raise ValueError("The 'sdmgrad' aggregator keeps per-task state: give `num_tasks`.")
  lr = _float(lr, "lr", strict=True)
  momentum = _float(momentum, "momentum", maximum=1.0, below=True)
  n_iter = _common.check_int(n_iter, "n_iter", minimum=1)
  lambda_ = _float(lambda_, "lambda_")

  def weigh(matrix, state, task_losses):
    target = _preference(vector, n, matrix.dtype, 1.0 / n)
    scale = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diag(matrix), 0.0)))
    a = matrix / (scale ** 2 + 1e-8)

    def step(i, carry):
      w, velocity = carry
      gradient = a @ (w + lambda_ * target)
      velocity = jnp.where(i == 0, gradient, momentum * velocity + gradient)
      return _project_simplex(w - lr * velocity), velocity

    w, _ = jax.lax.fori_loop(0, n_iter, step, (state.weights, jnp.zeros_like(state.weights)))
    return (w + lambda_ * target) / (1.0 + lambda_), SimplexState(w)

  return _weighted(_Weighting(lambda dtype: SimplexState(jnp.full((n,), 1.0 / n, dtype)), weigh), n,
                   independent=True)


def cr_mogm(weighting: "str | optax.GradientTransformationExtraArgs" = "mgda", *, alpha: float = 0.9,
            initial_weights: ArrayLike | None = None, weighting_options: Mapping[str, Any] | None = None,
            num_tasks: int | None = None) -> Transformation:
  """CR-MOGM: the weights of another method smoothed by an EMA across updates, λₖ = αλₖ₋₁ + (1 − α)λ̂ₖ, d = Jᵀλₖ.

  Source: Zhou et al., "On the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond",
  NeurIPS 2022 (TorchJD's `CRMOGMWeighting`, which wraps any weighting and has no aggregator of its own: here
  it is one). λ₀ = `initial_weights`, or λ̂₁ (so the first update is the wrapped method's). The wrapped
  method's state is kept inside this one's. TorchJD has no default weighting; here it is MGDA, the method the
  paper's analysis starts from. The paper's Corollary 1 lets α grow towards 1 as the learning rate decays;
  here α is fixed.

  Args:
    weighting: the wrapped method, an aggregator of this module whose update is Jᵀw (not `graddrop`,
      `trimmed_mean` or `excess_mtl`), or its name.
    alpha: α in [0, 1] (0: no smoothing, 1: λ frozen at λ₀).
    initial_weights: (N,) λ₀.
    weighting_options: options of the wrapped method when `weighting` is a name.
    num_tasks: the number of tasks N (required: λ is kept).

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `CRMOGMState`.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.cr_mogm(losses.aggregation.constant((1.0, 0.0)), alpha=0.5,
    ...                                         initial_weights=(0.0, 1.0), num_tasks=2)
    >>> update, state = aggregator.update(jnp.eye(2), aggregator.init(jnp.zeros(2)))
    >>> print(update)  # ½(0, 1) + ½(1, 0)
    [0.5 0.5]
  """
  vector, n = _vector(initial_weights, "initial_weights", _num_tasks(num_tasks, "cr_mogm"))
  if n is None:
    raise ValueError("The 'cr_mogm' aggregator keeps per-task state: give `num_tasks`.")
  alpha = _float(alpha, "alpha", maximum=1.0)
  if isinstance(weighting, str):
    weighting = gradient_aggregator(weighting, num_tasks=n, **(weighting_options or {}))
  elif weighting_options:
    raise ValueError("`weighting_options` apply to a `weighting` given by name.")
  inner = getattr(weighting.update, "weighting", None)
  if inner is None:
    raise ValueError("`weighting` must be an aggregator of losses.aggregation whose update is Jᵀw (not graddrop, "
                     "trimmed_mean, excess_mtl, db_mtl or moco).")

  def init(dtype):
    return CRMOGMState(jnp.zeros((), jnp.int32), _preference(vector, n, dtype, 0.0), inner.init(dtype))

  def weigh(gram, state, task_losses):
    estimate, inner_state = inner.weigh(gram, state.inner, task_losses)
    previous = state.weights if vector is not None else jnp.where(state.count == 0, estimate, state.weights)
    weights = alpha * previous + (1.0 - alpha) * estimate
    return weights, CRMOGMState(_increment(state.count), weights, inner_state)

  return _weighted(_Weighting(init, weigh), n)


def db_mtl(*, beta: float = 0.9, beta_sigma: float = 0.0, num_tasks: int | None = None) -> Transformation:
  """DB-MTL: balance the loss scales by taking the gradients of log Lᵢ, keep an EMA mᵢ of them, then balance
  the gradient magnitudes by scaling every mᵢ to the largest norm, d = Σᵢ (maxⱼ‖mⱼ‖ / ‖mᵢ‖) mᵢ.

  Source: Lin et al., "Dual-Balancing for Multi-Task Learning", 2023 (arXiv:2308.12029), as LibMTL's `DB_MTL`
  computes it (TorchJD has no DB-MTL): the log-loss gradient is gᵢ/(Lᵢ + 1e-8), the EMA is
  mᵢ ← βₜmᵢ + (1 − βₜ)gᵢ/(Lᵢ + 1e-8) with βₜ = β/t^σ from mᵢ = 0 (t the update, from 1; with σ = 0 the first
  update's mᵢ is (1 − β) times its gradient), and ‖mᵢ‖ gets 1e-8 in the denominator. The option names and
  defaults are LibMTL's (`DB_beta`, `DB_beta_sigma`). It reads J itself: the buffers have the parameters'
  shape with a task axis (memory N times the shared parameters). No solver.

  Args:
    beta: β in [0, 1], the EMA's weight of the past.
    beta_sigma: σ ≥ 0, the decay of β over the updates.
    num_tasks: the number of tasks N (required: the buffers have a task axis).

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `DBMTLState`; its `update` needs `task_losses=` (N,).

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.db_mtl(num_tasks=2, beta=0.0)
    >>> jacobian, task_losses = jnp.array([[1.0, 0.0], [0.0, 4.0]]), jnp.array([1.0, 2.0])
    >>> update, _ = aggregator.update(jacobian, aggregator.init(jnp.zeros(2)), task_losses=task_losses)
    >>> print([round(x, 4) for x in update.tolist()])  # m = (1, 0), (0, 2): both scaled to the norm 2.
    [2.0, 2.0]
  """
  n = _num_tasks(num_tasks, "db_mtl", required=True)
  beta, beta_sigma = _float(beta, "beta", maximum=1.0), _float(beta_sigma, "beta_sigma")

  def init(params, dtype):
    return DBMTLState(jnp.zeros((), jnp.int32), _task_axis_zeros(params, n, dtype))

  def combine(rows, state, task_losses, extra_args):
    task_losses = _task_losses(task_losses, n, rows[0].dtype, "db_mtl")
    count = _increment(state.count)
    decay = _decayed(beta, beta_sigma, count, rows[0].dtype)
    buffers = [decay * buffer + (1.0 - decay) * row / (task_losses[:, None] + 1e-8)
               for buffer, row in zip(_rows_of(state.buffer, rows), rows)]
    norms = _row_norms(buffers)
    scales = jnp.max(norms) / (norms + 1e-8)
    return ([jnp.matmul(scales, buffer, precision=_HIGHEST) for buffer in buffers],
            DBMTLState(count, _tree_of(buffers, state.buffer)))

  return _transformation(combine, init, n)


def moco(*, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1, gamma_sigma: float = 0.5,
         rho: float = 0.0, num_tasks: int | None = None) -> Transformation:
  """MoCo: track each task's gradient with a moving average yᵢ, step the weights λ on the min-norm objective of
  the tracked gradients, λ ← softmax(λ − γₜ(YYᵀ + ρI)λ), and return d = Yᵀλ.

  Source: Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent
  Approach", ICLR 2023, as LibMTL's `MoCo` computes it (TorchJD has no MoCo): the tracked quantity is the
  gradient rescaled to its loss, ĝᵢ = Lᵢgᵢ/(‖gᵢ‖ + 1e-8); yᵢ ← yᵢ − βₜ(yᵢ − ĝᵢ) from yᵢ = 0 with
  βₜ = β/t^σ_β; λ starts at 1/N, and the softmax keeps it on the simplex where the paper projects
  (t the update, from 1; γₜ = γ/t^σ_γ). The option names and defaults are LibMTL's (`MoCo_beta`,
  `MoCo_beta_sigma`, `MoCo_gamma`, `MoCo_gamma_sigma`, `MoCo_rho`). It reads J itself: Y has the
  parameters' shape with a task axis (memory N times the shared parameters). No solver.

  Args:
    beta: β in [0, 1], the tracking step.
    beta_sigma: σ_β ≥ 0, its decay over the updates.
    gamma: γ ≥ 0, the step of λ.
    gamma_sigma: σ_γ ≥ 0, its decay over the updates.
    rho: ρ ≥ 0, the ℓ₂ regularisation of λ's objective.
    num_tasks: the number of tasks N (required: Y and λ are kept).

  Returns:
    An `optax.GradientTransformationExtraArgs` with a `MoCoState`; its `update` needs `task_losses=` (N,).

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.aggregation.moco(num_tasks=2, beta=1.0, gamma=0.0)
    >>> jacobian, task_losses = jnp.array([[3.0, 0.0], [0.0, 4.0]]), jnp.array([1.0, 2.0])
    >>> update, _ = aggregator.update(jacobian, aggregator.init(jnp.zeros(2)), task_losses=task_losses)
    >>> print([round(x, 4) for x in update.tolist()])  # Y = (1, 0), (0, 2) and λ = softmax(½, ½) = (½, ½).
    [0.5, 1.0]
  """
  n = _num_tasks(num_tasks, "moco", required=True)
  beta, beta_sigma = _float(beta, "beta", maximum=1.0), _float(beta_sigma, "beta_sigma")
  gamma, gamma_sigma, rho = _float(gamma, "gamma"), _float(gamma_sigma, "gamma_sigma"), _float(rho, "rho")

  def init(params, dtype):
    return MoCoState(jnp.zeros((), jnp.int32), jnp.full((n,), 1.0 / n, dtype), _task_axis_zeros(params, n, dtype))

  def combine(rows, state, task_losses, extra_args):
    dtype = rows[0].dtype
    task_losses = _task_losses(task_losses, n, dtype, "moco")
    count = _increment(state.count)
    norms = _row_norms(rows)
    scales = task_losses / (norms + 1e-8)
    step = _decayed(beta, beta_sigma, count, dtype)
    tracking = [y - step * (y - scales[:, None] * row) for y, row in zip(_rows_of(state.tracking, rows), rows)]
    objective = _gram(tracking) + rho * jnp.eye(n, dtype=dtype)
    weights = jax.nn.softmax(state.weights - _decayed(gamma, gamma_sigma, count, dtype)
                             * jnp.matmul(objective, state.weights, precision=_HIGHEST))
    return ([jnp.matmul(weights, y, precision=_HIGHEST) for y in tracking],
            MoCoState(count, weights, _tree_of(tracking, state.tracking)))

  return _transformation(combine, init, n)


# ---------------------------------------------------------------------------------------------------------------
# By name.

_FACTORIES: dict[str, Callable[..., Any]] = {
    "mean": mean, "sum": sum, "constant": constant, "random": random, "mgda": mgda, "upgrad": upgrad,
    "dualproj": dualproj, "pcgrad": pcgrad, "gradvac": gradvac, "cagrad": cagrad, "nash_mtl": nash_mtl,
    "imtl_g": imtl_g, "aligned_mtl": aligned_mtl, "graddrop": graddrop, "config": config, "krum": krum,
    "trimmed_mean": trimmed_mean, "fairgrad": fairgrad, "excess_mtl": excess_mtl, "pcd": pcd, "modo": modo,
    "sdmgrad": sdmgrad, "cr_mogm": cr_mogm, "gradnorm": gradnorm, "db_mtl": db_mtl, "moco": moco,
}
AGGREGATOR_NAMES = tuple(_FACTORIES)


def gradient_aggregator(name: str, **options: Any) -> Transformation:
  """The aggregator `name` of `losses.aggregation`, one of `AGGREGATOR_NAMES`, built from its options.

  Args:
    name: the method, the name of its function in `losses.aggregation` (whose docstring defines it).
    **options: that function's keyword arguments (TorchJD 0.18's names and defaults). `seed` and `num_tasks`
      are accepted by every method and dropped where it has no use for them (`num_tasks` is always checked
      against the task axis where the method takes it).

  Returns:
    The method's `optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for an unknown `name` or option, a missing required option or an option out of range.
    TypeError: as the method's function.

  Examples:
    >>> import jax.numpy as jnp, losses
    >>> aggregator = losses.gradient_aggregator("mgda", seed=0, num_tasks=2)
    >>> update, _ = aggregator.update(jnp.array([[1.0, 0.0], [0.0, 2.0]]), aggregator.init(jnp.zeros(2)))
    >>> print(update.round(3))
    [0.8 0.4]
  """
  if name not in _FACTORIES:
    raise ValueError(f"Unknown gradient aggregator {name!r}; use one of {AGGREGATOR_NAMES}.")
  factory = _FACTORIES[name]
  parameters = inspect.signature(factory).parameters
  unknown = sorted(set(options) - set(parameters) - {"seed", "num_tasks"})
  if unknown:
    raise ValueError(f"Unknown option(s) {unknown} for the {name!r} aggregator; its options are "
                     f"{sorted(parameters)}.")
  missing = sorted(option for option, parameter in parameters.items()
                   if parameter.default is inspect.Parameter.empty and option not in options)
  if missing:
    raise ValueError(f"The {name!r} aggregator needs the option(s) {missing}.")
  return factory(**{option: value for option, value in options.items() if option in parameters})
