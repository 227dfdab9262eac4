"""Loss-level multi-task weightings ("scalarizations"): N task losses → one scalar to differentiate.

Every scalarization that TorchJD 0.18 exports (`torchjd.scalarization`), named
as TorchJD names it in snake_case, plus this project's trainable α and its
N-task form:

=================  ==========================================  ==================
factory            total, for task losses L (N,)               TorchJD class
=================  ==========================================  ==================
`constant`         Σᵢ wᵢLᵢ, fixed w                            `Constant`
`sum`, `mean`      Σᵢ Lᵢ, (1/N)·Σᵢ Lᵢ                          `Sum`, `Mean`
`geometric_mean`   (Πᵢ Lᵢ)^(1/N) (GLS)                         `GeometricMean`
`random`           Σᵢ wᵢLᵢ, w = softmax(z), z ~ N(0, I) (RLW)  `Random`
`stch`             μ·log Σᵢ exp(λᵢ(Lᵢ − zᵢ*)/μ)                `STCH`
`pbi`              d₁ + θ·d₂ along a preference direction      `PBI`
`cosmos`           Σᵢ rᵢLᵢ − λ·cos(r, L)                       `COSMOS`
`uw`               Σᵢ ½e^{−sᵢ}Lᵢ + ½sᵢ, trainable s            `UW`
`imtl_l`           Σᵢ e^{sᵢ}Lᵢ − sᵢ, trainable s               `IMTLL`
`dwa`              Σᵢ wᵢLᵢ, w from the last two periods' rates  `DWA`
`famo`             Σᵢ wᵢLᵢ, w ∝ zᵢ/Lᵢ with adapted z            `FAMO`
`trainable_alpha`  α·L₁ + (1−α)·L₂ + balance term, trainable α  (this project)
`balanced_weights` its N-task form, trainable w on the simplex   (this project)
=================  ==========================================  ==================

Each factory's docstring gives the definition, its sources and its numerical
choices; options carry TorchJD's names and defaults (`num_tasks` replaces
TorchJD's `shape`: the task losses are a vector here).

**Interface.** A factory returns a `LossWeighting(init, combine)` of pure
functions: `init() -> (params, state)` and `combine(params, state,
task_losses) -> (total, weights, new_state)`. `params` (a NamedTuple of
arrays, empty for most methods) are trained by the model's own optimizer:
put them in the parameter pytree, as `tasks/multitask.py` does under
"weighting"; `state` (a NamedTuple, empty for stateless methods) is carried
without gradients, in the task state or a user's `lax.scan` carry. `weights`
are ∂total/∂Lᵢ, the effective weight of every task loss in the model's
gradient, for logging. This keeps TorchJD's split between trainable
parameters (`nn.Parameter`) and internal state, without its mutation:
TorchJD's FAMO and DWA need extra calls (`update` after the model's step,
`step` at every epoch's end), which a jitted step that sees one set of losses
would have to thread through itself, so here each `combine` does that update
from the losses it is given (see `dwa` and `famo`). The factories check their
options in Python and hold no hidden state; options that are arrays (the
preference vectors of `cosmos`, `pbi`, `stch`, `constant`) may be traced, so a
jitted step can build a weighting per call, e.g. with preferences re-drawn
from a Dirichlet distribution at every step as COSMOS and PBI intend.

`loss_weighting(name, **options)` looks `name` up in `LOSS_WEIGHTINGS`, which
also keeps this project's former names as aliases ("fixed" → `constant`,
"gls" → `geometric_mean`, "rlw" → `random`, "uncertainty" → `uw`,
"trainable" → `balanced_weights`).
"""

from collections.abc import Callable
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from losses import _common
from losses.multitask import _check_task_losses
from losses.multitask import _check_vector
from losses.multitask import _preconditioned_softmax
from losses.multitask import balanced_weights_loss
from losses.multitask import dwa_weights
from losses.multitask import uncertainty_weighted_loss

PyTree = Any


class LossWeighting(NamedTuple):
  """A way of combining N task losses, as pure functions (see the module docstring).

  Attributes:
    init: `() -> (params, state)`: `params` are trained by the model's
      optimizer (put them in the parameter pytree), `state` is carried
      without gradients.
    combine: `(params, state, task_losses (N,)) -> (total, weights (N,),
      new_state)`; `weights` = ∂total/∂Lᵢ, the effective weights of the task
      losses in the model's gradient, for logging.
  """

  init: Callable[[], tuple[PyTree, PyTree]]
  combine: Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, jax.Array, PyTree]]


class Empty(NamedTuple):
  """The params or state of a weighting that has none."""


class RandomState(NamedTuple):
  key: jax.Array  # The raw PRNG key, split at every call.


class UWParams(NamedTuple):
  log_variances: jax.Array  # (N,) sᵢ = log σᵢ², initially 0.


class IMTLLParams(NamedTuple):
  log_scales: jax.Array  # (N,) sᵢ, initially 0.


class DWAState(NamedTuple):
  loss_sum: jax.Array  # (N,) the sum of the losses of the current period so far.
  steps: jax.Array  # () calls in the current period.
  previous: jax.Array  # (N,) the average losses of the last complete period.
  before_previous: jax.Array  # (N,) those of the period before it.
  periods: jax.Array  # () complete periods, counted up to 2.


class FAMOState(NamedTuple):
  logits: jax.Array  # (N,) ξ, initially 0.
  adam_mu: jax.Array  # (N,) Adam's first moment of the logits' gradient.
  adam_nu: jax.Array  # (N,) its second moment.
  adam_count: jax.Array  # () Adam steps taken.
  previous_log_losses: jax.Array  # (N,) log(L − b + ε) at the previous call.
  calls: jax.Array  # () calls so far, counted up to 2.


class TrainableAlphaParams(NamedTuple):
  logit: jax.Array  # () α = sigmoid(logit), initially 0 (α = ½).


class BalancedWeightsParams(NamedTuple):
  logits: jax.Array  # (N,) w = softmax(logits), initially 0 (wᵢ = 1/N).


TotalFunction = Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, PyTree]]


def _weighting(init: Callable[[], tuple[PyTree, PyTree]], total: TotalFunction) -> LossWeighting:
  """The `LossWeighting` whose `combine` adds to `total`'s `(total, new_state)` the weights ∂total/∂Lᵢ."""

  def combine(params, state, task_losses):
    value, new_state = total(params, state, task_losses)
    params, state, task_losses = jax.lax.stop_gradient((params, state, _common.as_float(task_losses, "task_losses")))
    weights = jax.grad(lambda losses: total(params, state, losses)[0])(task_losses)
    return value, weights, new_state

  return LossWeighting(init=init, combine=combine)


def _stateless(total: Callable[[jax.Array], jax.Array]) -> LossWeighting:
  return _weighting(lambda: (Empty(), Empty()), lambda params, state, task_losses: (total(task_losses), state))


def _task_losses(task_losses: ArrayLike) -> jax.Array:
  return _check_vector(task_losses, "task_losses")


def _preference(weights: ArrayLike | None, name: str = "weights") -> jax.Array | None:
  return None if weights is None else _check_vector(weights, name)


def _like(task_losses: ArrayLike, vector: jax.Array | None, name: str) -> jax.Array:
  """`task_losses` checked to be `(N,)`, with N the length of `vector` if given."""
  if vector is None:
    return _task_losses(task_losses)
  return _check_vector(task_losses, "task_losses", (name, vector))


def _check_num_tasks(num_tasks: int) -> int:
  return _common.check_int(num_tasks, "num_tasks", minimum=1)


def constant(*, weights: ArrayLike) -> LossWeighting:
  """Σᵢ wᵢLᵢ with fixed weights w (TorchJD's `Constant`).

  Args:
    weights: the `(N,)` weights (hand-tuned; any sign).

  Returns:
    The `LossWeighting`, without params or state.

  Examples:
    >>> import jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.constant(weights=jnp.array([0.1, 0.9]))
    >>> params, state = weighting.init()
    >>> total, weights, state = weighting.combine(params, state, jnp.array([2.0, 1.0]))
    >>> print(total.round(4), weights)
    1.1 [0.1 0.9]
  """
  weights = _preference(weights)
  return _stateless(lambda task_losses: jnp.sum(weights * _like(task_losses, weights, "weights")))


def sum() -> LossWeighting:  # TorchJD's name; this module uses jnp.sum, never the builtin.
  """Σᵢ Lᵢ (TorchJD's `Sum`; LibMTL's "EW", equal weighting, which weights every loss by 1).

  Returns:
    The `LossWeighting`, without params or state.

  Examples:
    >>> import jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.sum()
    >>> print(weighting.combine(*weighting.init(), jnp.array([2.0, 1.0]))[:2])
    (Array(3., dtype=float32), Array([1., 1.], dtype=float32))
  """
  return _stateless(lambda task_losses: jnp.sum(_task_losses(task_losses)))


def mean() -> LossWeighting:
  """(1/N)·Σᵢ Lᵢ (TorchJD's `Mean`).

  Returns:
    The `LossWeighting`, without params or state.

  Examples:
    >>> import jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.mean()
    >>> print(weighting.combine(*weighting.init(), jnp.array([2.0, 1.0]))[:2])
    (Array(1.5, dtype=float32), Array([0.5, 0.5], dtype=float32))
  """
  return _stateless(lambda task_losses: jnp.mean(_task_losses(task_losses)))


def geometric_mean() -> LossWeighting:
  """(Πᵢ Lᵢ)^(1/N), the Geometric Loss Strategy (TorchJD's `GeometricMean`).

  Source: Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation
  and Geometric Loss Strategy for Multi-Task Learning", CVPR 2019 workshops.
  Computed as exp(mean log Lᵢ), so the losses must be positive (0 gives a
  total of 0 and infinite weights; negative losses raise where the host holds
  their values, as TorchJD does). Its gradient weights the task losses by
  wᵢ = (Πⱼ Lⱼ)^(1/N)/(N·Lᵢ), which `combine` reports; LibMTL 1.1.5 reports
  Lᵢ/(N·Πⱼ Lⱼ) instead, which is not the weight its own total applies.

  Returns:
    The `LossWeighting`, without params or state.

  Raises:
    ValueError: (in `combine`) for a negative loss whose value the host holds.

  Examples:
    >>> import jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.geometric_mean()
    >>> total, weights, _ = weighting.combine(*weighting.init(), jnp.array([2.0, 8.0]))
    >>> print(total, weights)  # √16; 4/(2·2), 4/(2·8)
    4.0 [1.   0.25]
  """
  def total(task_losses):
    task_losses = _task_losses(task_losses)
    values = _common.host_values(task_losses)
    if values is not None and (values < 0).any():
      raise ValueError(f"geometric_mean needs non-negative `task_losses`, got {values}.")
    return jnp.exp(jnp.mean(jnp.log(task_losses)))
  return _stateless(total)


def random(*, seed: int = 0) -> LossWeighting:
  """Σᵢ wᵢLᵢ with w = softmax(z), z ~ N(0, I) drawn anew at every call (TorchJD's `Random`).

  Source: Lin, Ye, Xu, Shi, Zhang, "Reasonable Effectiveness of Random
  Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022 (RLW,
  Algorithm 2; LibMTL's default distribution "Normal"). TorchJD draws from
  torch's global generator; here the PRNG key lives in the state and is split
  at every call, so the same state gives the same weights.

  Args:
    seed: the seed of the state's key, `jax.random.PRNGKey(seed)`.

  Returns:
    The `LossWeighting`: no params, state `RandomState(key)`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.random(seed=0)
    >>> params, state = weighting.init()
    >>> total, weights, state = weighting.combine(params, state, jnp.array([2.0, 1.0]))
    >>> print(weights.sum().round(4), (weights > 0).all())
    1.0 True
  """
  seed = _common.check_int(seed, "seed")

  def total(params, state, task_losses):
    del params
    task_losses = _task_losses(task_losses)
    key, draw = jax.random.split(state.key)
    weights = jax.nn.softmax(jax.random.normal(draw, task_losses.shape, task_losses.dtype))
    return jnp.sum(weights * task_losses), RandomState(key)

  return _weighting(lambda: (Empty(), RandomState(jax.random.PRNGKey(seed))), total)


def stch(*, mu: float, weights: ArrayLike | None = None, reference: ArrayLike | None = None) -> LossWeighting:
  """Smooth Tchebycheff scalarization, μ·log Σᵢ exp(λᵢ(Lᵢ − zᵢ*)/μ) (TorchJD's `STCH`).

  Source: Lin, Zhang, Yang, Liu, Wang, Zhang, "Smooth Tchebycheff
  Scalarization for Multi-Objective Optimization", ICML 2024. A smooth upper
  bound of the weighted Tchebycheff max, maxᵢ λᵢ(Lᵢ − zᵢ*) ≤ total ≤ that
  max + μ·log N, so it tends to the max as μ → 0; its gradient weights the
  task losses by λᵢ·softmax(λ(L − z*)/μ)ᵢ, mostly the worst weighted task.
  The exponents are shifted by their maximum before the division by μ (the
  paper's Appendix B.1, as TorchJD), so a small μ never overflows.

  LibMTL's "STCH" differs: it trains on Σᵢ log Lᵢ for its first
  `STCH_warmup_epoch` epochs, then applies this formula, times N, to
  log(Lᵢ/nᵢ) with n the average losses of the last warm-up epoch; that is
  this scalarization of the log losses with z* = log n, a schedule left to
  the caller here.

  Args:
    mu: μ > 0 (no default in TorchJD; the paper evaluates 0.01 to 1 and
      LibMTL defaults to 1).
    weights: the `(N,)` preference λ (on the simplex in the paper); None for
      1/N.
    reference: the `(N,)` ideal point z*; None for 0.

  Returns:
    The `LossWeighting`, without params or state.

  Examples:
    >>> import jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.stch(mu=0.01)
    >>> total, weights, _ = weighting.combine(*weighting.init(), jnp.array([2.0, 1.0]))
    >>> print(total.round(4), weights.round(4))  # ≈ max(½·2, ½·1); the gradient picks task 1
    1.0 [0.5 0. ]
  """
  _common.check_number(mu, "mu", minimum=0.0, strict=True)
  weights, reference = _preference(weights), _preference(reference, "reference")

  def total(task_losses):
    task_losses = _like(task_losses, weights, "weights")
    if reference is not None:
      task_losses = task_losses - _check_vector(reference, "reference", ("task_losses", task_losses))
    preference = jnp.full_like(task_losses, 1.0 / task_losses.shape[0]) if weights is None else weights
    weighted = preference * task_losses
    top = jax.lax.stop_gradient(jnp.max(weighted))  # Its gradient would cancel exactly.
    return mu * jax.nn.logsumexp((weighted - top) / mu) + top

  return _stateless(total)


_PBI_EPSILON = 1e-12  # TorchJD's constant under d₂'s square root.


def pbi(*, theta: float, weights: ArrayLike, reference: ArrayLike | None = None) -> LossWeighting:
  """Penalty-based Boundary Intersection, d₁ + θ·d₂ (TorchJD's `PBI`).

  Source: Zhang & Li, "MOEA/D: A Multiobjective Evolutionary Algorithm Based
  on Decomposition", IEEE TEVC 2007. With f = L − z* and the unit preference
  direction ŵ = w/‖w‖, d₁ = f·ŵ is the distance along ŵ and
  d₂ = ‖f − d₁ŵ‖ the distance to the line, penalised by θ. As TorchJD,
  d₂ = √(‖f − d₁ŵ‖² + 1e-12), so the gradient stays finite on the line
  (the total moves by at most 1e-6θ there). The gradient weights
  ŵ + θ(f − d₁ŵ)/d₂ may be negative: PBI pulls L towards the line.

  Args:
    theta: θ ≥ 0 (no default in TorchJD; the paper uses 5).
    weights: the `(N,)` preference w, non-negative.
    reference: the `(N,)` ideal point z*, a lower bound of the losses; None
      for 0.

  Returns:
    The `LossWeighting`, without params or state.

  Examples:
    >>> import jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.pbi(theta=5.0, weights=jnp.array([1.0, 1.0]))
    >>> total, weights, _ = weighting.combine(*weighting.init(), jnp.array([3.0, 1.0]))
    >>> print(total.round(4))  # d₁ = 4/√2, d₂ = 2/√2: 2√2 + 5√2
    9.8995
  """
  _common.check_number(theta, "theta", minimum=0.0)
  weights, reference = _preference(weights), _preference(reference, "reference")

  def total(task_losses):
    shifted = _like(task_losses, weights, "weights")
    if reference is not None:
      shifted = shifted - _check_vector(reference, "reference", ("weights", weights))
    direction = weights / jnp.linalg.norm(weights)
    along = jnp.dot(shifted, direction)
    perpendicular = shifted - along * direction
    return along + theta * jnp.sqrt(jnp.dot(perpendicular, perpendicular) + _PBI_EPSILON)

  return _stateless(total)


_COSINE_EPSILON = 1e-8  # torch.nn.functional.cosine_similarity's default, as in TorchJD.


def cosmos(*, lambda_: float, weights: ArrayLike) -> LossWeighting:
  """Σᵢ rᵢLᵢ − λ·cos(r, L), COSMOS's objective (TorchJD's `COSMOS`).

  Source: Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep
  Multi-Objective Learning", ICDM 2021. The cosine term rewards losses along
  the preference r; λ = 0 is the linear scalarization. The cosine divides by
  max(‖r‖, 1e-8)·max(‖L‖, 1e-8), as torch's `cosine_similarity` in TorchJD. The full method also
  feeds r to the model and draws r ~ Dirichlet at every step; both are left
  to the caller (build the weighting inside the jitted step with the drawn r).

  Args:
    lambda_: λ ≥ 0 (no default in TorchJD; the paper uses 0.01 to 8).
    weights: the `(N,)` preference r.

  Returns:
    The `LossWeighting`, without params or state.

  Examples:
    >>> import jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.cosmos(lambda_=0.5, weights=jnp.array([0.5, 0.5]))
    >>> total, weights, _ = weighting.combine(*weighting.init(), jnp.array([1.0, 1.0]))
    >>> print(total.round(4), weights.round(4))  # r·L − ½·cos 0; on the ray of r the cosine has no gradient
    0.5 [0.5 0.5]
  """
  _common.check_number(lambda_, "lambda_", minimum=0.0)
  weights = _preference(weights)

  def total(task_losses):
    task_losses = _like(task_losses, weights, "weights")
    weighted_sum = jnp.dot(weights, task_losses)
    norms = [jnp.maximum(_common.safe_norm(x), _COSINE_EPSILON) for x in (weights, task_losses)]
    return weighted_sum - lambda_ * weighted_sum / (norms[0] * norms[1])

  return _stateless(total)


def uw(*, num_tasks: int) -> LossWeighting:
  """Uncertainty weighting, Σᵢ ½e^{−sᵢ}Lᵢ + ½sᵢ with trainable sᵢ = log σᵢ² (TorchJD's `UW`).

  Source: Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to
  Weigh Losses for Scene Geometry and Semantics", CVPR 2018; the total is
  `losses.uncertainty_weighted_loss`. sᵢ starts at 0 (TorchJD; LibMTL starts
  at −0.5); its optimum is e^{sᵢ} = Lᵢ, an effective weight 1/(2Lᵢ).

  Args:
    num_tasks: N.

  Returns:
    The `LossWeighting`: params `UWParams(log_variances)`, no state.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.uw(num_tasks=2)
    >>> params, state = weighting.init()
    >>> total, weights, state = weighting.combine(params, state, jnp.array([2.0, 4.0]))
    >>> print(total, weights)  # (2 + 4)/2
    3.0 [0.5 0.5]
    >>> print(jax.grad(lambda p: weighting.combine(p, state, jnp.array([2.0, 4.0]))[0])(params).log_variances)
    [-0.5 -1.5]
  """
  num_tasks = _check_num_tasks(num_tasks)

  def total(params, state, task_losses):
    return uncertainty_weighted_loss(params.log_variances, task_losses), state

  return _weighting(lambda: (UWParams(jnp.zeros(num_tasks)), Empty()), total)


def imtl_l(*, num_tasks: int) -> LossWeighting:
  """IMTL-L, Σᵢ e^{sᵢ}Lᵢ − sᵢ with trainable scales sᵢ (TorchJD's `IMTLL`).

  Source: Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial
  Multi-Task Learning", ICLR 2021, the loss-balancing half (LibMTL's "IMTL"
  applies it before its gradient-level half, `losses.gradient_aggregator
  ("imtl_g")`). The optimum in sᵢ is e^{sᵢ}Lᵢ = 1: the scaled losses are
  equalised, each task's effective weight is 1/Lᵢ. It is 2·UW at s → −s.
  sᵢ starts at 0 (the plain sum); the losses should be positive.

  Args:
    num_tasks: N.

  Returns:
    The `LossWeighting`: params `IMTLLParams(log_scales)`, no state.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.imtl_l(num_tasks=2)
    >>> params, state = weighting.init()
    >>> total, weights, _ = weighting.combine(params, state, jnp.array([2.0, 0.5]))
    >>> print(total, weights)
    2.5 [1. 1.]
    >>> print(jax.grad(lambda p: weighting.combine(p, state, jnp.array([2.0, 0.5]))[0])(params).log_scales)
    [ 1.  -0.5]
  """
  num_tasks = _check_num_tasks(num_tasks)

  def total(params, state, task_losses):
    log_scales = _check_vector(params.log_scales, "log_scales")
    task_losses = _check_vector(task_losses, "task_losses", ("log_scales", log_scales))
    return jnp.sum(jnp.exp(log_scales) * task_losses - log_scales), state

  return _weighting(lambda: (IMTLLParams(jnp.zeros(num_tasks)), Empty()), total)


def dwa(*, num_tasks: int, temperature: float = 2.0, period: int = 100) -> LossWeighting:
  """Dynamic Weight Average, Σᵢ wᵢLᵢ with w = N·softmax(r/T) (TorchJD's `DWA`).

  Source: Liu, Johns & Davison, "End-to-End Multi-Task Learning with
  Attention", CVPR 2019; the weights are `losses.dwa_weights`:
  rᵢ = Lᵢ(t−1)/Lᵢ(t−2), the ratio of the average losses over the two
  previous periods ("epochs"), and wᵢ = 1 for the first two periods. TorchJD
  ends an epoch when its `step()` is called; here a period is `period` calls
  of `combine`, counted in the state.

  Args:
    num_tasks: N.
    temperature: T > 0; larger is closer to equal weights.
    period: calls per period, the paper's epoch.

  Returns:
    The `LossWeighting`: no params, state `DWAState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.dwa(num_tasks=2, period=1)
    >>> params, state = weighting.init()
    >>> for task_losses in ([1.0, 2.0], [1.0, 1.0], [1.0, 1.0]):
    ...   total, weights, state = weighting.combine(params, state, jnp.array(task_losses))
    >>> print(weights.round(4))  # rates (1, ½): task 2's loss fell, task 1's did not
    [1.1244 0.8756]
  """
  num_tasks = _check_num_tasks(num_tasks)
  _common.check_number(temperature, "temperature", minimum=0.0, strict=True)
  period = _common.check_int(period, "period", minimum=1)

  def init():
    zeros, ones, count = jnp.zeros(num_tasks), jnp.ones(num_tasks), jnp.zeros((), jnp.int32)
    return Empty(), DWAState(loss_sum=zeros, steps=count, previous=ones, before_previous=ones, periods=count)

  def total(params, state, task_losses):
    del params
    task_losses = _check_task_losses(task_losses, num_tasks)
    weights = jnp.where(state.periods >= 2,
                        dwa_weights(state.previous, state.before_previous, temperature=temperature), 1.0)
    loss_sum = state.loss_sum + jax.lax.stop_gradient(task_losses)
    steps = state.steps + 1
    done = steps == period
    new_state = DWAState(
        loss_sum=jnp.where(done, 0.0, loss_sum), steps=jnp.where(done, 0, steps),
        previous=jnp.where(done, loss_sum / period, state.previous),
        before_previous=jnp.where(done, state.previous, state.before_previous),
        periods=jnp.minimum(state.periods + done, 2))
    return jnp.sum(weights * task_losses), _same_dtypes(new_state, state)

  return _weighting(init, total)


def _same_dtypes(new: PyTree, old: PyTree) -> PyTree:
  """`new` in the dtypes of `old`, so that a state keeps its types across steps (e.g. a `lax.scan` carry)."""
  return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)


_FAMO_EPSILON = 1e-8  # TorchJD's and LibMTL's offset of the losses before their logarithm.


def famo(*, num_tasks: int, min_losses: ArrayLike | None = None, lr: float = 0.025,
         weight_decay: float = 1e-3) -> LossWeighting:
  """Fast Adaptive Multitask Optimization (TorchJD's `FAMO`).

  Source: Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask
  Optimization", NeurIPS 2023. Logits ξ (state, initially 0) give
  z = softmax(ξ), and the task losses are weighted by
  wᵢ = (zᵢ/Dᵢ)/Σⱼ(zⱼ/Dⱼ) with Dᵢ = Lᵢ − bᵢ + 1e-8, so the model follows
  Σᵢ zᵢ∇log Dᵢ, rescaled. The logits move with the observed decrease of the
  log losses, δᵢ = log Dᵢ(before) − log Dᵢ(after), by one step of Adam
  (torch's rule: β₁ = 0.9, β₂ = 0.999, ε = 1e-8, `weight_decay` γ added to the
  gradient) on (∂z/∂ξ)ᵀδ + γξ; the paper's Algorithm 1 takes a plain
  gradient step instead, while TorchJD, LibMTL and the official code use
  Adam.

  TorchJD and LibMTL take "after" as the losses of the same batch
  re-evaluated after the model's step (an extra forward pass, TorchJD's
  `update`); a `combine` sees one set of losses per step, so here δ compares
  the losses passed at consecutive calls (the previous batch before the step
  with the current batch after it), and the logits are updated at the start
  of the next call, before its weights are computed: the same ordering, with
  δ noisier by the difference between batches. The first call only records
  the losses. The total is Σᵢ sg(wᵢ)·Lᵢ, in the losses' units; TorchJD's
  Σᵢ (zᵢ/c)·log Dᵢ (c = Σⱼ zⱼ/Dⱼ) has the same gradient.

  Args:
    num_tasks: N.
    min_losses: the `(N,)` lower bounds b of the losses; None for 0 (then the
      losses must be positive).
    lr: Adam's learning rate for the logits, ≥ 0 (the paper's 0.025).
    weight_decay: γ ≥ 0 (1e-3, the paper's Algorithm 2 and LibMTL; the
      official code uses 1e-5).

  Returns:
    The `LossWeighting`: no params, state `FAMOState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.famo(num_tasks=2)
    >>> params, state = weighting.init()
    >>> total, weights, state = weighting.combine(params, state, jnp.array([3.0, 1.0]))
    >>> print(weights.round(2))  # z = (½, ½) at first: wᵢ ∝ zᵢ/Lᵢ, a step along ∇(log L₁ + log L₂)
    [0.25 0.75]
  """
  num_tasks = _check_num_tasks(num_tasks)
  _common.check_number(lr, "lr", minimum=0.0)
  _common.check_number(weight_decay, "weight_decay", minimum=0.0)
  min_losses = None if min_losses is None else _check_task_losses(min_losses, num_tasks)

  def init():
    zeros, count = jnp.zeros(num_tasks), jnp.zeros((), jnp.int32)
    return Empty(), FAMOState(logits=zeros, adam_mu=zeros, adam_nu=zeros, adam_count=count,
                              previous_log_losses=zeros, calls=count)

  def total(params, state, task_losses):
    del params
    task_losses = _check_task_losses(task_losses, num_tasks)
    shifted = jax.lax.stop_gradient(task_losses if min_losses is None else task_losses - min_losses) + _FAMO_EPSILON
    log_losses = jnp.log(shifted)
    logits, adam = _famo_logits_step(state, log_losses, lr, weight_decay)
    ratios = jax.nn.softmax(logits) / shifted
    weights = ratios / jnp.sum(ratios)
    new_state = FAMOState(logits=logits, **adam, previous_log_losses=log_losses,
                          calls=jnp.minimum(state.calls + 1, 2))
    return jnp.sum(weights * task_losses), _same_dtypes(new_state, state)

  return _weighting(init, total)


def _famo_logits_step(state: FAMOState, log_losses, learning_rate, weight_decay):
  """FAMO's logits after one Adam step (torch.optim.Adam's rule) on (∂z/∂ξ)ᵀδ + γξ; unchanged at the first call.

  δ = the log losses recorded at the previous call − `log_losses`.
  """
  logits = state.logits
  delta = state.previous_log_losses - log_losses
  z = jax.nn.softmax(logits)
  gradient = z * (delta - jnp.sum(z * delta)) + weight_decay * logits
  count = state.adam_count + 1
  mu = 0.9 * state.adam_mu + 0.1 * gradient
  nu = 0.999 * state.adam_nu + 0.001 * gradient ** 2
  mu_hat = mu / (1.0 - 0.9 ** count.astype(logits.dtype))
  nu_hat = nu / (1.0 - 0.999 ** count.astype(logits.dtype))
  stepped = logits - learning_rate * mu_hat / (jnp.sqrt(nu_hat) + 1e-8)
  first = state.calls == 0
  keep = lambda old, new: jnp.where(first, old, new)
  adam = {"adam_mu": keep(state.adam_mu, mu), "adam_nu": keep(state.adam_nu, nu),
          "adam_count": keep(state.adam_count, count)}
  return keep(logits, stepped), adam


def trainable_alpha() -> LossWeighting:
  """This project's trainable α for two tasks: α·L₁ + (1 − α)·L₂ plus the balancing term.

  The total is `losses.trainable_alpha_loss(α, L₁, L₂)` with α = sigmoid(logit)
  and a trainable logit (initially 0, α = ½): α settles at the balance point
  α* = L₂/(L₁ + L₂), where the weighted losses are equal, and the model then
  follows ∇(log L₁ + log L₂). The logit's gradient is the rule's divided by a
  positive scalar, exactly tanh(½·log(αL₁/((1−α)L₂))), so Adam reaches α* at
  any scale (see `losses.multitask`). The same as `balanced_weights` with
  N = 2, with one logit instead of two.

  Returns:
    The `LossWeighting`: params `TrainableAlphaParams(logit)`, no state;
    `combine` takes the `(2,)` losses (L₁, L₂) and reports (α, 1 − α).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.trainable_alpha()
    >>> params, state = weighting.init()
    >>> loss = lambda p: weighting.combine(p, state, jnp.array([3.0, 1.0]))[0]
    >>> print(loss(params), jax.grad(loss)(params).logit.round(4))  # (1.5 − 0.5)² + 2; tanh(½ log 3)
    3.0 0.5
  """
  def total(params, state, task_losses):
    task_losses = _check_task_losses(task_losses, 2)
    logit = _common.check_rank(_common.as_float(params.logit, "logit"), "logit", 0, "(): a scalar")
    weights = _preconditioned_softmax(jnp.stack([logit, jnp.zeros_like(logit)]), jax.lax.stop_gradient(task_losses))
    return balanced_weights_loss(weights, task_losses), state

  return _weighting(lambda: (TrainableAlphaParams(jnp.zeros(())), Empty()), total)


def balanced_weights(*, num_tasks: int) -> LossWeighting:
  """The N-task trainable α: weights w = softmax(logits) that balance the weighted losses wᵢLᵢ.

  The total is `losses.balanced_weights_loss(w, L)`,
  Σ_{i<j} (wᵢ·sg(Lᵢ) − wⱼ·sg(Lⱼ))² + Σᵢ sg(wᵢ)·Lᵢ, whose first term trains
  only the logits (towards wᵢ ∝ 1/Lᵢ) and second only the model (which then
  follows ∇Σᵢ log Lᵢ). The logits' gradient is divided by
  c = 2·(Σᵢ wᵢLᵢ)·Σᵢ wᵢ(1−wᵢ)Lᵢ > 0 (see `losses.multitask`), so Adam reaches
  the balance point at any scale. The logits start at 0 (wᵢ = 1/N).

  Args:
    num_tasks: N.

  Returns:
    The `LossWeighting`: params `BalancedWeightsParams(logits)`, no state.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from losses import scalarization
    >>> weighting = scalarization.balanced_weights(num_tasks=2)
    >>> params, state = weighting.init()
    >>> total, weights, state = jax.jit(weighting.combine)(params, state, jnp.array([3.0, 1.0]))
    >>> print(weights)  # equal at the start; training the logits moves them to (1/4, 3/4)
    [0.5 0.5]
  """
  num_tasks = _check_num_tasks(num_tasks)

  def total(params, state, task_losses):
    task_losses = _check_task_losses(task_losses, num_tasks)
    weights = _preconditioned_softmax(params.logits, jax.lax.stop_gradient(task_losses))
    return balanced_weights_loss(weights, task_losses), state

  return _weighting(lambda: (BalancedWeightsParams(jnp.zeros(num_tasks)), Empty()), total)


ALIASES = {"fixed": "constant", "gls": "geometric_mean", "rlw": "random", "uncertainty": "uw",
           "trainable": "balanced_weights"}
_FACTORIES = {
    "constant": constant, "sum": sum, "mean": mean, "geometric_mean": geometric_mean, "random": random,
    "stch": stch, "pbi": pbi, "cosmos": cosmos, "uw": uw, "imtl_l": imtl_l, "dwa": dwa, "famo": famo,
    "trainable_alpha": trainable_alpha, "balanced_weights": balanced_weights,
}
LOSS_WEIGHTINGS: dict[str, Callable[..., LossWeighting]] = {
    **_FACTORIES, **{alias: _FACTORIES[name] for alias, name in ALIASES.items()}}
LOSS_WEIGHTING_NAMES = tuple(LOSS_WEIGHTINGS)


def _factory(name: str) -> Callable[..., LossWeighting]:
  if name not in LOSS_WEIGHTINGS:
    raise ValueError(f"Unknown loss weighting {name!r}; use one of {LOSS_WEIGHTING_NAMES}.")
  return LOSS_WEIGHTINGS[name]


def option_names(name: str) -> frozenset[str]:
  """The options that `loss_weighting(name, ...)` accepts: the factory's, and `num_tasks`.

  Raises:
    ValueError: for an unknown `name`.

  Examples:
    >>> from losses import scalarization
    >>> print(sorted(scalarization.option_names("dwa")))
    ['num_tasks', 'period', 'temperature']
  """
  return frozenset(inspect.signature(_factory(name)).parameters) | {"num_tasks"}


_PER_TASK_OPTIONS = {"weights", "reference", "min_losses"}  # (N,) vectors, checked against `num_tasks`.


def loss_weighting(name: str, **options: Any) -> LossWeighting:
  """The weighting `name`, one of `LOSS_WEIGHTING_NAMES`, built by its factory with `options`.

  Args:
    name: a factory's name ("constant", "sum", "mean", "geometric_mean",
      "random", "stch", "pbi", "cosmos", "uw", "imtl_l", "dwa", "famo",
      "trainable_alpha", "balanced_weights") or an alias ("fixed", "gls",
      "rlw", "uncertainty", "trainable").
    **options: the factory's keyword options (see its docstring), and
      `num_tasks`: required by the methods with per-task params or state
      (uw, imtl_l, dwa, famo, balanced_weights); for the others, `combine`
      checks that the task losses have this length.

  Returns:
    The `LossWeighting`.

  Raises:
    ValueError: for an unknown `name` or option, a missing `num_tasks`, an
      option out of range, or `weights`, `reference` or `min_losses` of a
      length other than `num_tasks`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> weighting = losses.loss_weighting("stch", num_tasks=2, mu=0.5)
    >>> total, weights, _ = weighting.combine(*weighting.init(), jnp.array([2.0, 1.0]))
    >>> print(total.round(4))  # ½·log(e² + e¹)
    1.1566
  """
  factory = _factory(name)
  unknown = set(options) - option_names(name)
  if unknown:
    raise ValueError(f"Loss weighting {name!r} has no option {sorted(unknown)}; its options: "
                     f"{sorted(option_names(name))}.")
  num_tasks = options.pop("num_tasks", None)
  if num_tasks is not None:
    num_tasks = _check_num_tasks(num_tasks)
    for option in _PER_TASK_OPTIONS & set(options):
      if options[option] is not None and jnp.shape(options[option]) != (num_tasks,):
        raise ValueError(_common.shape_message(option, jnp.shape(options[option]), f"(N,) = ({num_tasks},)") + ".")
  if "num_tasks" in inspect.signature(factory).parameters:
    if num_tasks is None:
      raise ValueError(f"Loss weighting {name!r} needs `num_tasks`, the length of its per-task params or state.")
    return factory(num_tasks=num_tasks, **options)
  weighting = factory(**options)
  if num_tasks is None:
    return weighting
  return weighting._replace(combine=lambda params, state, task_losses: weighting.combine(
      params, state, _check_task_losses(task_losses, num_tasks)))
