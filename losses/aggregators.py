"""Combining the per-task gradients of a multi-task model into one update, as Optax transformations.

This is the gradient-level half of the multi-task family: `losses.multitask`
weights the task *losses* before one backward pass; an aggregator receives the
gradient of every task loss (the Jacobian) and chooses the update direction
itself. `gradient_aggregator(name, **options)` is an
`optax.GradientTransformationExtraArgs` whose `update` maps per-task gradients
(the parameter pytree with a leading task axis N on every leaf, e.g. from
`jax.jacrev` of the N task losses) to one update pytree without that axis:

    optimizer = optax.chain(losses.gradient_aggregator("upgrad"), optax.adam(1e-3))
    updates, state = optimizer.update(task_grads, state, params, task_losses=task_losses)

Write J for the N × P matrix whose rows gᵢ are the flattened task gradients,
G = JJᵀ for its Gramian and d for the update. Except for GradDrop, d = Jᵀw
for weights w computed from G alone (N × N), so the work that grows with the
number of parameters P is one Gramian and one weighted sum per leaf.

* "mean": w = 1/N.
* "mgda" (Désidéri 2012; Sener & Koltun, NeurIPS 2018): d is the minimum-norm
  point of the convex hull of the gᵢ, w = argmin_{w ∈ Δ} wᵀGw.
* "pcgrad" (Yu et al., NeurIPS 2020): each gᵢ, visiting the others in a random
  order, loses its component along every original gⱼ it conflicts with,
  gᵢ ← gᵢ − min(0, gᵢ·gⱼ)/‖gⱼ‖² gⱼ; d is the sum of the projected gᵢ.
* "gradvac" (Wang et al., ICLR 2021): like PCGrad, but whenever the cosine
  φᵢⱼ = cos(gᵢ, gⱼ) is below its EMA target φ̂ᵢⱼ, gᵢ gains the multiple of gⱼ
  that raises the cosine to φ̂ᵢⱼ; φ̂ ← (1 − β)φ̂ + βφ (state); d is the sum.
* "cagrad" (Liu et al., NeurIPS 2021): d = g₀ + ρ·g_w/‖g_w‖ with g₀ the mean
  gradient, ρ = c‖g₀‖ and w = argmin_{w ∈ Δ} g_w·g₀ + ρ‖g_w‖, the dual of
  max_d minᵢ gᵢ·d s.t. ‖d − g₀‖ ≤ ρ.
* "nash_mtl" (Navon et al., ICML 2022): the Nash bargaining solution, w > 0 with
  wᵢ(Gw)ᵢ = 1 for every i, rescaled so that ‖d‖ ≤ `max_norm`.
* "imtl_g" (Liu et al., ICLR 2021, in the form of Quinton & Rey 2024 that
  allows dependent rows): w ∝ G⁺·diag(G)^½, so that d has the same projection
  d·gᵢ/‖gᵢ‖ on every task's direction.
* "aligned_mtl" (Senushkin et al., CVPR 2023): w = B·p with
  B = √λ_min·V Λ^(-½) Vᵀ from the eigendecomposition G = VΛVᵀ (nonzero
  eigenvalues only): the gradients' principal components are equalised.
* "upgrad" (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective
  Optimization"): every pᵢgᵢ is projected onto the dual cone {x: Jx ≥ 0} and
  the projections are summed; the projection of Jᵀu is Jᵀv with
  v = argmin_{v ≥ u} vᵀGv.
* "dualproj" (Lopez-Paz & Ranzato, NeurIPS 2017, as in Quinton & Rey): the
  projection of Jᵀp onto that cone, the same problem with u = p.
* "graddrop" (Chen et al., NeurIPS 2020): per coordinate, the positive-sign
  purity P = ½(1 + Σᵢgᵢ/Σᵢ|gᵢ|) and a uniform draw U keep the positive
  components where f(P) > U and the negative ones where f(P) < U.
* "config" (Liu et al., ICLR 2025, "ConFIG"): with the unit rows uᵢ = gᵢ/‖gᵢ‖,
  the direction x = U⁺p (so uᵢ·x = pᵢ) and d = (Σᵢ gᵢ·x̂)·x̂, x̂ = x/‖x‖.
* "random" (Lin et al., TMLR 2022, random gradient weighting): w = softmax(z),
  z ~ N(0, I), drawn anew at every update.
* "gradnorm" (Chen et al., ICML 2018): trainable weights wᵢ (state) combine the
  gradients; each update then moves them by one step of size
  `learning_rate` on Σᵢ|wᵢ‖gᵢ‖ − Ḡ·rᵢ^α| (targets held constant, Ḡ the mean
  of wᵢ‖gᵢ‖, rᵢ the inverse training rate Lᵢ(t)/Lᵢ(0) over its mean) and
  renormalises them to sum to N. It needs the task losses:
  `update(..., task_losses=...)`; Lᵢ(0) are the losses of the first update.

Sources. Every method that TorchJD 0.18 provides (all but GradNorm) follows
TorchJD's definition, option names, defaults, normalisations and tie-breaking
rules, and is cross-checked against it in tests/test_aggregators.py; GradNorm
follows the paper, cross-checked against LibMTL 1.1.5 where they agree. The
differences:

* "mgda": TorchJD runs Frank-Wolfe (Sener & Koltun's Algorithm 2) for at most
  100 iterations, stopping once the step is below 1e-3, so its answer is
  approximate (its update is up to 4e-2 of the largest gradient norm away
  from the minimum-norm point, and never shorter than ours);
  here the QP is solved to rounding, so the options are this solver's
  (`max_iters`), not Frank-Wolfe's `epsilon`.
* "nash_mtl": TorchJD (after the official code) linearises the problem and
  calls ECOS up to `optim_niter` = 20 times; here the bargaining condition
  Gw = 1/w is solved by Newton's method (see below), so `optim_niter` counts
  Newton steps. TorchJD's `n_tasks` is `num_tasks`, as everywhere in this
  library.
* "config": TorchJD takes the pseudo-inverse of the N × P unit-row matrix;
  here it is computed from the Gramian, U⁺ = Uᵀ(UUᵀ)⁺, whose eigenvalues below
  N·eps·λ_max (singular values below √(N·eps)·σ_max, not TorchJD's
  max(N, P)·eps·σ_max) count as zero. The two agree for independent rows and
  for exactly dependent ones.
* "gradnorm": the paper trains wᵢ directly and renormalises them (followed
  here); LibMTL parametrises w = N·softmax(s) and trains s with the model's
  optimizer, takes Lᵢ(0) as the mean loss of the first epoch and keeps w = 1
  during that epoch. The paper takes the norms at the last shared layer; this
  aggregator, like LibMTL, uses the gradients it receives: pass it the
  gradients of the shared parameters only. Weights are clipped at 0 before
  renormalising (a step the paper leaves unspecified).
* "upgrad", "dualproj" and "cagrad" keep TorchJD's scale-dependent guards: G is
  divided by its trace, and if the trace is below `norm_eps` (= 1e-4, i.e.
  ‖J‖_F < 0.01) UPGrad/DualProj return the plain `pref_vector` combination and
  CAGrad returns a zero update. Set `norm_eps=0` to disable them.

Numerical choices. Everything runs under `jax.jit` (and `vmap`, `scan`, ...)
with a fixed number of iterations; nothing calls back to the host, and no
QP library is used at run time.

* The QPs on the simplex (MGDA, CAGrad's inner problem) and on the orthant
  (UPGrad, DualProj: v = u + λ, λ ≥ 0) are solved in two phases on the
  trace-normalised Gramian: `max_iters` (default 100) steps of projected
  gradient with Nesterov acceleration and adaptive restart (projection onto
  the simplex by sorting), then 3N + 4 steps of the primal active-set method
  (Nocedal & Wright, Algorithm 16.3), each an exact solve of the equality
  constrained problem on the current face, with a ridge of 1e-13 (float64) or
  1e-6 (float32) times each diagonal entry of the Gramian so that faces of
  linearly dependent rows stay solvable. The active-set phase ends at the
  exact solution once it has the right face. On 1000 random problems (N = 6,
  P from 3 to 100, gradient norms spanning three decades, conflicting and
  dependent rows, 0 in the hull) the float64 UPGrad updates match quadprog
  to 5e-10 relative and the MGDA solutions satisfy their optimality
  conditions (gᵢ·d ≥ ‖d‖², with equality on the support) to 1e-14 of
  trace(G); the tests check 1e-6 against TorchJD and 1e-9 of the largest
  squared gradient norm.
* CAGrad's objective g_w·g₀ + ρ‖g_w‖ is non-smooth; it equals
  min_{t>0} g_w·g₀ + ρ(‖g_w‖²/(2t) + t/2), jointly convex in (w, t), so the
  optimal t = ‖g_{w(t)}‖ is found by 40 bisection steps on log t in
  [1e-9, 1] (the normalised rows have norms ≤ 1), each solving the simplex QP
  in w warm-started from the previous one. TorchJD's Clarabel solution is
  within 5e-4 relative (float64), and ours is never worse on the problem's
  objective minᵢ gᵢ·d. Near Pareto-stationary points, where the optimal ‖g_w‖
  is close to `norm_eps`, float32 may fall on the other side of that guard
  and return the zero update.
* Nash-MTL solves Gw = 1/w as the minimiser of the self-concordant
  ½wᵀGw − Σᵢ log wᵢ by Newton's method, with iterates kept positive; G is
  scaled to unit Frobenius norm and the previous weights (state), rescaled to
  the best multiple along their ray, are the warm start. Each step takes the
  best of 30 halvings of the largest positive step, and the full Newton step
  once the decrement is below 0.1. 20 steps reach
  maxᵢ|wᵢ(Gw)ᵢ − 1| < 1e-9 on every tested problem (including dependent
  rows), where TorchJD's solution often stops far from it (residuals above 1
  on 7 of the 12 test matrices); where TorchJD converges, the updates agree
  to 1e-5.
* Pseudo-inverses (IMTL-G, ConFIG) and eigendecompositions (Aligned-MTL) use
  the same relative thresholds as TorchJD: N·eps·σ_max.
* Gradients are combined in at least float32 (bfloat16 leaves are upcast) and
  each update leaf is returned in its parameter's dtype; matrix products use
  `Precision.HIGHEST`, so accelerators do not fall back to reduced-precision
  matmuls. In float32 the QP-based updates are within 1e-7 of the largest
  gradient norm of the float64 ones on typical problems (the median over the
  1000 problems above) and within 6e-4 on the worst, ill-conditioned ones.

State. `init(params)` returns an `AggregatorState` (a NamedTuple of arrays,
so it checkpoints with Orbax): `count` (updates so far), `key` (the PRNG key
of the random methods, from the `seed` option, split at every update as
optax's own random transformations do) and `memory`, a dict of the method's
arrays: GradVac's EMA targets "phi" (N, N), Nash-MTL's previous "weights"
(N,), GradNorm's "weights" and "initial_losses" (N,). These need the number of
tasks at `init`, so they take the option `num_tasks`; the other methods accept
it and then check the task axis against it.

Examples:
  >>> import jax, jax.numpy as jnp, optax
  >>> import losses
  >>> aggregator = losses.gradient_aggregator("upgrad")
  >>> params = {"w": jnp.zeros(2)}
  >>> task_grads = {"w": jnp.array([[1.0, 0.0], [-0.5, 1.0]])}  # Conflicting: g₁·g₂ < 0.
  >>> update, _ = jax.jit(aggregator.update)(task_grads, aggregator.init(params))
  >>> print((task_grads["w"] @ update["w"] >= 0).all())  # No task's loss increases to first order.
  True
"""

from collections.abc import Mapping
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

AGGREGATOR_NAMES = ("mean", "mgda", "pcgrad", "gradvac", "cagrad", "nash_mtl", "imtl_g", "aligned_mtl", "upgrad",
                    "dualproj", "graddrop", "config", "random", "gradnorm")

_HIGHEST = jax.lax.Precision.HIGHEST
_REQUIRED = object()
_CAGRAD_BISECTIONS = 40
_CAGRAD_LOG_RANGE = (math.log(1e-9), 0.0)

# Each method's options and their defaults (TorchJD 0.18's where it has the method); `_REQUIRED` has no default.
_OPTIONS: dict[str, dict[str, Any]] = {
    "mean": {},
    "mgda": {"max_iters": 100},
    "pcgrad": {},
    "gradvac": {"beta": 0.5, "eps": 1e-8},
    "cagrad": {"c": _REQUIRED, "norm_eps": 1e-4, "max_iters": 100},
    "nash_mtl": {"max_norm": 1.0, "update_weights_every": 1, "optim_niter": 20},
    "imtl_g": {},
    "aligned_mtl": {"pref_vector": None, "scale_mode": "min"},
    "upgrad": {"pref_vector": None, "norm_eps": 1e-4, "reg_eps": 1e-4, "max_iters": 100},
    "dualproj": {"pref_vector": None, "norm_eps": 1e-4, "reg_eps": 1e-4, "max_iters": 100},
    "graddrop": {"f": None, "leak": None},
    "config": {"pref_vector": None},
    "random": {},
    "gradnorm": {"alpha": 1.5, "learning_rate": 0.025},
}
_STATEFUL = ("gradvac", "nash_mtl", "gradnorm")  # Their state has a task axis: they need `num_tasks` at `init`.


class AggregatorState(NamedTuple):
  """The state of a `gradient_aggregator`: arrays only, so that it checkpoints with Orbax.

  Attributes:
    count: int32 scalar, the number of updates so far.
    key: the uint32 `(2,)` PRNG key of the random methods, split at every update.
    memory: the method's own arrays (see the module docstring), empty for the stateless methods.
  """

  count: jax.Array
  key: jax.Array
  memory: dict[str, jax.Array]


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
# The weightings: `(gram, memory, key, task_losses) -> (weights, memory)`.


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


def _nash_solve(gram, start, iterations):
  """w > 0 with wᵢ(Gw)ᵢ = 1: Newton steps on the convex ½wᵀGw − Σ log wᵢ, from `start` rescaled along its ray.

  Each step is the Newton direction with the best of 30 halvings of the largest step that stays positive
  (capped at 1), so the iterates stay positive, every step decreases the objective, and the last steps are
  full Newton steps (quadratic convergence).
  """
  n = gram.shape[0]
  scale = jnp.sqrt(jnp.sum(gram ** 2))
  safe_scale = jnp.where(scale > 0, scale, 1.0)
  q = gram / safe_scale
  x = start * jnp.sqrt(safe_scale)
  x = jnp.where(jnp.all(jnp.isfinite(x) & (x > 0)), x, jnp.ones_like(x))
  curvature = x @ q @ x
  x = jnp.where(curvature > 0, x * jnp.sqrt(n / jnp.where(curvature > 0, curvature, 1.0)), x)  # Optimal on the ray.
  objective = lambda x: 0.5 * jnp.einsum("...i,ij,...j->...", x, q, x) - jnp.sum(jnp.log(x), axis=-1)
  halvings = 0.5 ** jnp.arange(30, dtype=gram.dtype)

  def newton(_, x):
    gradient = q @ x - 1.0 / x
    step = jnp.linalg.solve(q + jnp.diag(1.0 / x ** 2), gradient)
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
  return jnp.where(scale > 0, x / jnp.sqrt(safe_scale), start)


def _nash_weights(gram, previous, count, max_norm, update_weights_every, optim_niter):
  solved = jax.lax.cond(count % update_weights_every == 0, lambda: _nash_solve(gram, previous, optim_niter),
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


# ---------------------------------------------------------------------------------------------------------------
# The transformation.


def _check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
  if name not in _OPTIONS:
    raise ValueError(f"Unknown gradient aggregator {name!r}; use one of {AGGREGATOR_NAMES}.")
  allowed = {**_OPTIONS[name], "seed": 0, "num_tasks": None}
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"Unknown option(s) {unknown} for the {name!r} aggregator; its options are {sorted(allowed)}.")
  chosen = {**allowed, **options}
  missing = sorted(option for option, value in chosen.items() if value is _REQUIRED)
  if missing:
    raise ValueError(f"The {name!r} aggregator needs the option(s) {missing}.")
  if chosen["num_tasks"] is not None:
    chosen["num_tasks"] = _common.check_int(chosen["num_tasks"], "num_tasks", minimum=1)
  elif name in _STATEFUL:
    raise ValueError(f"The {name!r} aggregator keeps per-task state: give `num_tasks`.")
  chosen["seed"] = _common.check_int(chosen["seed"], "seed")
  for option in ("max_iters", "optim_niter"):
    if option in chosen:
      chosen[option] = _common.check_int(chosen[option], option, minimum=0)
  if "update_weights_every" in chosen:
    chosen["update_weights_every"] = _common.check_int(chosen["update_weights_every"], "update_weights_every",
                                                       minimum=1)
  for option in ("c", "norm_eps", "reg_eps", "eps", "max_norm", "alpha", "learning_rate"):
    if option in chosen:
      _common.check_number(chosen[option], option, minimum=0.0, static=True)
      chosen[option] = float(chosen[option])
  if "beta" in chosen:
    _common.check_number(chosen["beta"], "beta", minimum=0.0, static=True)
    if not chosen["beta"] <= 1.0:
      raise ValueError(f"`beta` must be in [0, 1], got {chosen['beta']}.")
  if chosen.get("scale_mode", "min") not in ("min", "median", "rmse"):
    raise ValueError(f"`scale_mode` must be 'min', 'median' or 'rmse', got {chosen['scale_mode']!r}.")
  if chosen.get("f") is not None and not callable(chosen["f"]):
    raise TypeError(f"`f` must be a callable applied to the purity array, got {chosen['f']!r}.")
  for option in ("pref_vector", "leak"):
    if chosen.get(option) is not None:
      vector = np.asarray(chosen[option], np.float64)
      if vector.ndim != 1 or vector.size == 0:
        raise ValueError(_common.shape_message(option, vector.shape, "(N,) with N >= 1"))
      if chosen["num_tasks"] is not None and vector.size != chosen["num_tasks"]:
        raise ValueError(_common.shape_message(option, vector.shape, f"(N,) = ({chosen['num_tasks']},) like "
                                               "`num_tasks`"))
      chosen[option] = vector
  return chosen


def _float_dtype(leaves) -> Any:
  floats = [leaf for leaf in leaves if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)]
  dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
  return jnp.promote_types(dtype, jnp.float32)


def _check_task_grads(task_grads: PyTree, num_tasks: int | None):
  leaves, treedef = jax.tree.flatten(task_grads)
  if not leaves:
    raise ValueError("`task_grads` has no leaves.")
  leaves = [jnp.asarray(leaf) for leaf in leaves]
  for leaf in leaves:
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(f"`task_grads` must hold floating-point arrays, got a leaf of dtype {leaf.dtype}.")
  expected = "(N, ...) on every leaf: the task axis first" + (f", N = {num_tasks}" if num_tasks else "")
  n = num_tasks if num_tasks is not None else (leaves[0].shape[0] if leaves[0].ndim else 0)
  for leaf in leaves:
    if leaf.ndim == 0 or leaf.shape[0] != n or n == 0:
      raise AssertionError(_common.shape_message("task_grads", leaf.shape, expected))
  return leaves, treedef, n


def gradient_aggregator(name: str, **options: Any) -> "optax.GradientTransformationExtraArgs":
  """The gradient aggregator `name`, one of `AGGREGATOR_NAMES`, as an Optax transformation.

  Args:
    name: the method (see the module docstring for each one's definition).
    **options: the method's options, named and defaulted as in TorchJD 0.18 where it has the method:
      "mgda": `max_iters` = 100 (accelerated projected gradient steps before the exact active-set phase);
      "gradvac": `beta` = 0.5 (EMA rate of the cosine targets), `eps` = 1e-8;
      "cagrad": `c` (required: the radius ρ = c‖g₀‖), `norm_eps` = 1e-4, `max_iters` = 100;
      "nash_mtl": `max_norm` = 1.0 (0 disables the clipping of ‖d‖), `update_weights_every` = 1,
      `optim_niter` = 20 (Newton steps);
      "aligned_mtl": `pref_vector` = None (1/N), `scale_mode` = "min" ("median": the lower median of the
      nonzero eigenvalues, "rmse": their mean);
      "upgrad", "dualproj": `pref_vector` = None (1/N), `norm_eps` = 1e-4, `reg_eps` = 1e-4 (added to the
      diagonal of the normalised Gramian), `max_iters` = 100;
      "graddrop": `f` = None (the identity; a monotone function of the purity array), `leak` = None
      (zeros; (N,) fractions of each gradient let through);
      "config": `pref_vector` = None (ones);
      "gradnorm": `alpha` = 1.5, `learning_rate` = 0.025 (the step size of the weights; the paper gives
      none);
      every method: `seed` = 0 (the PRNG key of pcgrad, gradvac, graddrop and random), `num_tasks`
      (required by gradvac, nash_mtl and gradnorm, whose state has a task axis; otherwise checked against
      the task axis if given).

  Returns:
    An `optax.GradientTransformationExtraArgs`: `init(params) -> AggregatorState` and
    `update(task_grads, state, params=None, *, task_losses=None, **extra_args) -> (updates, state)`, where
    `task_grads` is `params` with a leading task axis N on every leaf and `updates` is shaped like `params`
    (each leaf in its `task_grads` leaf's dtype), the aggregated gradient, to be followed by an optimizer such
    as `optax.adam`. `task_losses` ((N,)) is needed by "gradnorm" and ignored by the others, as are other
    extra arguments that `optax.chain` passes on.

  Raises:
    ValueError: for an unknown `name` or option, a missing required option or an option out of range.
    TypeError: for a non-integer count or a non-callable `f`.
    AssertionError: (at trace time) for `task_grads` whose leaves do not share the task axis N (or do not
      match `num_tasks` or the length of `pref_vector`/`leak`), or `task_losses` not of shape (N,).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import losses
    >>> params = {"w": jnp.zeros(2)}
    >>> optimizer = optax.chain(losses.gradient_aggregator("mgda"), optax.sgd(1.0))
    >>> state = optimizer.init(params)
    >>> task_grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    >>> updates, state = jax.jit(optimizer.update)(task_grads, state, params)
    >>> print(updates["w"].round(3))  # −(min-norm point of the segment [(1, 0), (0, 2)]) = −(0.8, 0.4)
    [-0.8 -0.4]
    >>> gradnorm = losses.gradient_aggregator("gradnorm", num_tasks=2)
    >>> chained = optax.chain(gradnorm, optax.sgd(1.0))
    >>> state = chained.init(params)
    >>> updates, state = chained.update(task_grads, state, params, task_losses=jnp.array([2.0, 1.0]))
    >>> print(state[0].memory["weights"].round(2))  # (1 + 0.025, 1 − 0.025·2), renormalised to sum to 2
    [1.04 0.96]
  """
  import optax  # pylint: disable=g-import-not-at-top  # `import losses` must not load optax.

  chosen = _check_options(name, options)
  num_tasks = chosen["num_tasks"]
  for option in ("pref_vector", "leak"):
    if chosen.get(option) is not None:
      num_tasks = num_tasks or chosen[option].size

  def init(params: PyTree) -> AggregatorState:
    dtype = _float_dtype(jax.tree.leaves(params))
    memory = {}
    if name == "gradvac":
      memory = {"phi": jnp.zeros((num_tasks, num_tasks), dtype)}
    elif name == "nash_mtl":
      memory = {"weights": jnp.ones(num_tasks, dtype)}
    elif name == "gradnorm":
      memory = {"weights": jnp.ones(num_tasks, dtype), "initial_losses": jnp.ones(num_tasks, dtype)}
    return AggregatorState(count=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(chosen["seed"]), memory=memory)

  def update(task_grads: PyTree, state: AggregatorState, params: PyTree | None = None, *,
             task_losses: ArrayLike | None = None, **extra_args) -> tuple[PyTree, AggregatorState]:
    del params, extra_args
    leaves, treedef, n = _check_task_grads(task_grads, num_tasks)
    dtype = _float_dtype(leaves)
    rows = [leaf.reshape(n, -1).astype(dtype) for leaf in leaves]
    key, subkey = jax.random.split(state.key)
    memory = {k: v.astype(dtype) for k, v in state.memory.items()}
    count = state.count

    if name == "graddrop":
      matrix = jnp.concatenate(rows, axis=1)
      leak = jnp.zeros(n, dtype) if chosen["leak"] is None else jnp.asarray(chosen["leak"], dtype)
      f = chosen["f"] or (lambda purity: purity)
      vector = _graddrop(matrix, jax.random.uniform(subkey, (matrix.shape[1],), dtype), f, leak)
      splits = np.cumsum([row.shape[1] for row in rows])[:-1]
      outputs = jnp.split(vector, splits)
    else:
      gram = sum(jnp.matmul(row, row.T, precision=_HIGHEST) for row in rows)
      weights, memory = _weights(gram, memory, subkey, task_losses, count, n)
      outputs = [jnp.matmul(weights, row, precision=_HIGHEST) for row in rows]

    updates = [out.reshape(leaf.shape[1:]).astype(leaf.dtype) for out, leaf in zip(outputs, leaves)]
    new_memory = {k: memory[k].astype(v.dtype) for k, v in state.memory.items()}
    new_count = jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count)
    return jax.tree.unflatten(treedef, updates), AggregatorState(count=new_count, key=key, memory=new_memory)

  def preference(n, dtype, default):
    vector = chosen["pref_vector"]
    return jnp.full((n,), default, dtype) if vector is None else jnp.asarray(vector, dtype)

  def _weights(gram, memory, key, task_losses, count, n):
    dtype = gram.dtype
    if name == "mean":
      return _mean_weights(gram), memory
    if name == "mgda":
      return _mgda_weights(gram, chosen["max_iters"]), memory
    if name == "pcgrad":
      orders = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, n))
      return _pcgrad_weights(gram, orders), memory
    if name == "gradvac":
      orders = _others_orders(key, n)
      weights, phi = _gradvac_weights(gram, memory["phi"], orders, chosen["beta"], chosen["eps"])
      return weights, {"phi": phi}
    if name == "cagrad":
      return _cagrad_weights(gram, chosen["c"], chosen["norm_eps"], chosen["max_iters"]), memory
    if name == "nash_mtl":
      weights, solved = _nash_weights(gram, memory["weights"], count, chosen["max_norm"],
                                      chosen["update_weights_every"], chosen["optim_niter"])
      return weights, {"weights": solved}
    if name == "imtl_g":
      return _imtl_g_weights(gram), memory
    if name == "aligned_mtl":
      return _aligned_mtl_weights(gram, preference(n, dtype, 1.0 / n), chosen["scale_mode"]), memory
    if name in ("upgrad", "dualproj"):
      solver = _upgrad_weights if name == "upgrad" else _dualproj_weights
      return solver(gram, preference(n, dtype, 1.0 / n), chosen["norm_eps"], chosen["reg_eps"],
                    chosen["max_iters"]), memory
    if name == "config":
      return _config_weights(gram, preference(n, dtype, 1.0)), memory
    if name == "random":
      return _random_weights(key, n, dtype), memory
    # gradnorm
    if task_losses is None:
      raise ValueError("The 'gradnorm' aggregator needs `task_losses`: update(task_grads, state, params, "
                       "task_losses=...).")
    task_losses = _common.as_float(task_losses, "task_losses").astype(dtype)
    _common.chex().assert_shape(task_losses, (n,), custom_message=_common.shape_message(
        "task_losses", task_losses.shape, f"(N,) = ({n},)"))
    task_losses = jax.lax.stop_gradient(task_losses)
    initial = jnp.where(count == 0, task_losses, memory["initial_losses"])
    weights = memory["weights"]
    new_weights, _ = _gradnorm_step(jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)), weights, initial, task_losses,
                                    chosen["alpha"], chosen["learning_rate"])
    return weights, {"weights": new_weights, "initial_losses": initial}

  return optax.GradientTransformationExtraArgs(init, update)


def _others_orders(key: jax.Array, n: int) -> jax.Array:
  """For each task i, a random order of the other N − 1 tasks, (N, N − 1) (GradVac's visiting orders)."""
  def one(k, i):
    order = jax.random.permutation(k, n - 1)
    return order + (order >= i)
  return jax.vmap(one)(jax.random.split(key, n), jnp.arange(n))

