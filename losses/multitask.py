"""Weighting the losses of several task heads: a trainable α and the published peers.

A model with one input and heads of different output shapes (a per-pixel map
and a class vector, say) is trained on one scalar. Each head reduces its own
output shape to a loss first; the functions here combine the task losses.

**Trainable α** (`trainable_alpha_loss`). The rule circulating as a Keras
custom layer, written with sg = stop_gradient:

    alpha_loss = (α·sg(L1) − (1 − α)·sg(L2))²   trains only α,
    model_loss = sg(α)·L1 + (1 − sg(α))·L2       trains only the model,
    total      = alpha_loss + model_loss.

α settles where the weighted losses are equal, α* = L2/(L1 + L2); the model
then follows ∇L1·L2/(L1+L2) + ∇L2·L1/(L1+L2) ∝ ∇(log L1 + log L2): a
scale-invariant objective that favours the task whose loss is already
lower. Without sg(α) in model_loss the model would push α to 0 or 1.
The curvature of alpha_loss in α is 2(L1 + L2)², so plain SGD on α diverges
for large losses and a clipped α moved by Adam cannot approach a balance
point near 0 or 1. `balanced_weights_loss` is the N-task form (weights on
the simplex, the sum over pairs of squared differences of weighted losses),
equal to the rule above for N = 2; `loss_weighting("trainable", ...)`
parametrises the weights as w = softmax(z) over free logits z trained by the
model's own optimizer, so they stay on the simplex without clipping or
projection. The rule's gradient with respect to z spans many orders of
magnitude along the way to a small balance point (it carries the factors
α(1−α) and (L1+L2)², and Adam's second-moment estimate remembers the large
early values, so α stalls far from α* = 1e-5, say). The logits therefore
receive the rule's gradient divided by the positive scalar
c = 2·(Σᵢ wᵢLᵢ)·Σᵢ wᵢ(1−wᵢ)Lᵢ: the same direction and fixed point, and for
N = 2 exactly tanh(½·log(αL1/((1−α)L2))), bounded by 1 and linear in the
log-ratio near balance, so Adam converges to α* at any scale (tested down
to α* = 1e-5).

**Peers**, behind the same interface (`loss_weighting(name, ...)`):

* "fixed": constant weights (e.g. (1 − α, α) hand-tuned);
* "uncertainty": homoscedastic uncertainty weighting (Kendall, Gal,
  Cipolla, CVPR 2018), Σᵢ Lᵢ/(2e^{sᵢ}) + sᵢ/2 with trainable sᵢ = log σᵢ²;
* "dwa": Dynamic Weight Average (Liu, Johns, Davison, CVPR 2019),
  wᵢ = N·softmax(rᵢ/T) with rᵢ = Lᵢ(t−1)/Lᵢ(t−2) the ratio of the average
  losses over the two previous periods ("epochs") of `period` steps;
  wᵢ = 1 for the first two periods;
* "rlw": Random Loss Weighting (Lin, Ye, Xu, Shi, Zhang, "Reasonable
  Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning",
  TMLR 2022), wᵢ = softmax(z)ᵢ with z ~ N(0, I) drawn anew at every step, as
  LibMTL's default ("Normal"); the PRNG key lives in the state (option `seed`)
  and is split at every step;
* "gls": Geometric Loss Strategy (Chennupati et al., "MultiNet++", CVPR 2019
  workshops), the total (Πᵢ Lᵢ)^(1/N) (computed as exp(mean log Lᵢ), so the
  losses must be positive), whose gradient weights the task losses by
  (Πⱼ Lⱼ)^(1/N)/(N·Lᵢ): the reported weights. LibMTL 1.1.5 reports
  Lᵢ/(N·Πⱼ Lⱼ) instead, which is not the weight its own total applies;
* "famo": Fast Adaptive Multitask Optimization (Liu, Liu, Jin, Stone, Liu,
  NeurIPS 2023). Logits ξ (state, initially 0) give z = softmax(ξ), and the
  task losses are weighted by wᵢ = (zᵢ/Dᵢ)/Σⱼ(zⱼ/Dⱼ) with Dᵢ = Lᵢ + 1e-8, so
  the model follows Σᵢ zᵢ∇log Lᵢ, rescaled. The logits then move with the
  observed decrease of the log losses, δᵢ = log Dᵢ(before) − log Dᵢ(after),
  along −(∂z/∂ξ)ᵀδ plus a weight decay γ·ξ. Where the sources differ: the
  paper's Algorithm 1 takes a plain gradient step of size β on the logits,
  while LibMTL (which added FAMO after 1.1.5) and the official code use Adam
  (torch defaults β₁ = 0.9, β₂ = 0.999, ε = 1e-8) with learning rate
  `famo_lr` = 0.025 and `famo_weight_decay` γ = 1e-3 added to the gradient;
  this follows LibMTL (Adam, its defaults, the 1e-8 offset, lower bounds
  Lᵢ* = 0). Both take "after" as the losses of the same batch re-evaluated
  after the model's step (an extra forward pass); a `combine` sees one set of
  losses per step, so here δ compares the losses passed at consecutive calls
  (the previous batch before the step with the current batch after it), and
  the logits are updated at the start of the next call, before its weights
  are computed. That is the same ordering as LibMTL, with δ noisier by the
  difference between batches. The first call only records the losses. The
  returned total is Σᵢ sg(wᵢ)·Lᵢ, whose gradient equals LibMTL's
  Σᵢ zᵢ log Dᵢ / c.

GradNorm (Chen et al., ICML 2018) needs the gradient norm of every task loss
with respect to the shared layer, which a loss-level interface does not see;
it is `losses.gradient_aggregator("gradnorm")`, with the other methods that
combine the task gradients themselves (`losses.aggregators`).
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from losses import _common

PyTree = Any

LOSS_WEIGHTING_NAMES = ("fixed", "trainable", "uncertainty", "dwa", "rlw", "gls", "famo")


def _as_scalar_loss(loss: ArrayLike, name: str) -> jax.Array:
  """A scalar loss, or the batch mean of a per-example `(B,)` loss (0 for an empty batch)."""
  loss = _common.as_float(loss, name)
  _common.check_rank(loss, name, {0, 1}, "() or (B,): a scalar or a per-example loss")
  return _common.reduce_masked(loss, None, "mean")


def _check_vector(x: ArrayLike, name: str, like: tuple[str, jax.Array] | None = None) -> jax.Array:
  """A float `(N,)` array, of the length of `like` if given."""
  x = _common.as_float(x, name)
  expected = "(N,)" if like is None else f"(N,) = ({like[1].shape[0]},)"
  _common.check_rank(x, name, 1, expected, like)
  if like is not None:
    _common.chex().assert_shape(x, like[1].shape, custom_message=_common.shape_message(name, x.shape, expected, like))
  return x


def _check_task_losses(task_losses: ArrayLike, num_tasks: int) -> jax.Array:
  task_losses = _common.as_float(task_losses, "task_losses")
  _common.chex().assert_shape(task_losses, (num_tasks,),
                    custom_message=_common.shape_message("task_losses", task_losses.shape, f"(N,) = ({num_tasks},)"))
  return task_losses


def trainable_alpha_loss(alpha: ArrayLike, loss_1: ArrayLike, loss_2: ArrayLike) -> jax.Array:
  """The trainable-α rule for two tasks, (1 − α)·L2 + α·L1 plus the balancing term.

  Args:
    alpha: scalar weight of `loss_1`, in [0, 1] (keep it there by a
      parametrisation, e.g. α = sigmoid(z)).
    loss_1, loss_2: scalars, or per-example `(B,)` losses, which are averaged
      over the batch first (each head has already reduced its own output
      shape; the two B may differ). An empty `(0,)` loss averages to 0 with
      a zero gradient.

  Returns:
    The scalar (α·sg(L1) − (1−α)·sg(L2))² + sg(α)·L1 + (1 − sg(α))·L2, whose
    gradients are ∂/∂α = 2(αL1 − (1−α)L2)(L1 + L2), ∂/∂L1 = α and
    ∂/∂L2 = 1 − α.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import losses
    >>> alpha, loss_1, loss_2 = jnp.array(0.5), jnp.array(3.0), jnp.array(1.0)
    >>> print(losses.trainable_alpha_loss(alpha, loss_1, loss_2))  # (1.5 − 0.5)² + 1.5 + 0.5
    3.0
    >>> print(jax.grad(losses.trainable_alpha_loss)(alpha, loss_1, loss_2))  # 2·(1.5 − 0.5)·4: α falls to 1/4
    8.0
  """
  alpha = _common.check_rank(_common.as_float(alpha, "alpha"), "alpha", 0, "(): a scalar")
  task_losses = jnp.stack([_as_scalar_loss(loss_1, "loss_1"), _as_scalar_loss(loss_2, "loss_2")])
  return balanced_weights_loss(jnp.stack([alpha, 1.0 - alpha]), task_losses)


def balanced_weights_loss(weights: ArrayLike, task_losses: ArrayLike) -> jax.Array:
  """The N-task trainable-weight rule: Σ_{i<j} (wᵢ·sg(Lᵢ) − wⱼ·sg(Lⱼ))² + Σᵢ sg(wᵢ)·Lᵢ.

  Args:
    weights: `(N,)` weights on the simplex (e.g. a softmax); trained only by
      the first term, which is 0 when all weighted losses are equal, i.e.
      at wᵢ ∝ 1/Lᵢ.
    task_losses: `(N,)` scalar losses; trained only by the second term.

  For N = 2 with weights (α, 1 − α) this is exactly `trainable_alpha_loss`.

  Returns:
    The scalar total.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> weights = jnp.array([0.25, 0.75])
    >>> print(losses.balanced_weights_loss(weights, jnp.array([3.0, 1.0])))  # balanced: 0.25·3 = 0.75·1
    1.5
  """
  weights = _check_vector(weights, "weights")
  task_losses = _check_vector(task_losses, "task_losses", ("weights", weights))
  weighted = weights * jax.lax.stop_gradient(task_losses)
  differences = weighted[:, None] - weighted[None, :]
  balance = 0.5 * jnp.sum(differences ** 2)  # Each pair appears twice in the full matrix.
  return balance + jnp.sum(jax.lax.stop_gradient(weights) * task_losses)


def uncertainty_weighted_loss(log_variances: ArrayLike, task_losses: ArrayLike) -> jax.Array:
  """Σᵢ Lᵢ/(2e^{sᵢ}) + sᵢ/2 (Kendall, Gal & Cipolla, CVPR 2018), sᵢ = log σᵢ² trainable.

  The optimum in sᵢ is e^{sᵢ} = Lᵢ, i.e. every task's effective weight is
  1/(2Lᵢ).

  Args:
    log_variances: `(N,)` trainable sᵢ.
    task_losses: `(N,)` scalar losses.

  Returns:
    The scalar total.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> print(losses.uncertainty_weighted_loss(jnp.zeros(2), jnp.array([2.0, 4.0])))  # (2 + 4)/2
    3.0
  """
  log_variances = _check_vector(log_variances, "log_variances")
  task_losses = _check_vector(task_losses, "task_losses", ("log_variances", log_variances))
  return jnp.sum(0.5 * jnp.exp(-log_variances) * task_losses + 0.5 * log_variances)


def dwa_weights(
    previous_losses: ArrayLike, before_previous_losses: ArrayLike, *, temperature: float = 2.0) -> jax.Array:
  """Dynamic Weight Average (Liu et al., CVPR 2019): N·softmax(rᵢ/T), rᵢ = Lᵢ(t−1)/Lᵢ(t−2).

  Args:
    previous_losses: `(N,)` average task losses over the last period.
    before_previous_losses: `(N,)` averages over the period before it.
    temperature: T; larger is closer to equal weights.

  Returns:
    `(N,)` weights summing to N, larger for the tasks whose loss fell least.

  Examples:
    >>> import jax.numpy as jnp
    >>> import losses
    >>> print(losses.dwa_weights(jnp.array([1.0, 1.0]), jnp.array([1.0, 2.0])).round(4))  # task 2 fell faster
    [1.1244 0.8756]
  """
  previous_losses = _check_vector(previous_losses, "previous_losses")
  before_previous_losses = _check_vector(
      before_previous_losses, "before_previous_losses", ("previous_losses", previous_losses))
  _common.check_number(temperature, "temperature", minimum=0.0, strict=True)
  ratios = previous_losses / before_previous_losses
  return previous_losses.shape[0] * jax.nn.softmax(ratios / temperature)


@jax.custom_vjp
def _preconditioned_softmax(logits: ArrayLike, task_losses: ArrayLike) -> jax.Array:
  """softmax(logits), with the logits' gradient divided by c (see the module docstring)."""
  return jax.nn.softmax(logits)


def _preconditioned_softmax_forward(logits, task_losses):
  weights = jax.nn.softmax(logits)
  return weights, (weights, task_losses)


def _preconditioned_softmax_backward(residuals, cotangent):
  weights, task_losses = residuals
  logits_gradient = weights * (cotangent - jnp.sum(weights * cotangent))
  scale = 2.0 * jnp.sum(weights * task_losses) * jnp.sum(weights * (1.0 - weights) * task_losses)
  tiny = jnp.finfo(scale.dtype).tiny
  return logits_gradient / jnp.maximum(scale, tiny), jnp.zeros_like(task_losses)


_preconditioned_softmax.defvjp(_preconditioned_softmax_forward, _preconditioned_softmax_backward)


class LossWeighting(NamedTuple):
  """A named way of combining N task losses, as pure functions.

  Attributes:
    init: `() -> (params, state)`: `params` are trained by the model's
      optimizer (put them in the parameter pytree), `state` is carried
      without gradients.
    combine: `(params, state, task_losses (N,)) -> (total, weights (N,),
      new_state)`; `weights` are the effective weights of the task losses
      in the model's gradient, for logging.
  """

  init: Callable[[], tuple[PyTree, PyTree]]
  combine: Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, jax.Array, PyTree]]


def loss_weighting(
    name: str,
    *,
    num_tasks: int,
    fixed_weights: Sequence[float] = (),
    dwa_period: int = 100,
    dwa_temperature: float = 2.0,
    famo_lr: float = 0.025,
    famo_weight_decay: float = 1e-3,
    seed: int = 0,
) -> LossWeighting:
  """The weighting `name`, one of `losses.multitask.LOSS_WEIGHTING_NAMES` (see the module docstring).

  Args:
    name: the method: "fixed", "trainable", "uncertainty", "dwa", "rlw", "gls" or "famo".
    num_tasks: N.
    fixed_weights: the N weights of "fixed".
    dwa_period: steps per DWA period (its "epoch").
    dwa_temperature: DWA's T > 0.
    famo_lr: the Adam learning rate of FAMO's logits (LibMTL's `FAMO_w_lr`).
    famo_weight_decay: FAMO's γ ≥ 0, the decay added to the logits' gradient (LibMTL's `FAMO_w_gamma`).
    seed: the seed of the PRNG key that "rlw" keeps in its state.

  Returns:
    The `LossWeighting`: `init() -> (params, state)` and
    `combine(params, state, task_losses) -> (total, weights, new_state)`.

  Raises:
    ValueError: for an unknown `name`, `num_tasks` < 1, `dwa_period` < 1,
      `dwa_temperature` ≤ 0, `famo_lr` ≤ 0, `famo_weight_decay` < 0 or
      `fixed_weights` of the wrong length.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import losses
    >>> weighting = losses.loss_weighting("trainable", num_tasks=2)
    >>> params, state = weighting.init()
    >>> total, weights, state = jax.jit(weighting.combine)(params, state, jnp.array([3.0, 1.0]))
    >>> print(weights)  # equal at the start; training the logits moves them to (1/4, 3/4)
    [0.5 0.5]
    >>> famo = losses.loss_weighting("famo", num_tasks=2)
    >>> params, state = famo.init()
    >>> total, weights, state = famo.combine(params, state, jnp.array([3.0, 1.0]))
    >>> print(weights.round(2))  # z = (1/2, 1/2) at first: wᵢ ∝ zᵢ/Lᵢ, a step along ∇(log L₁ + log L₂)
    [0.25 0.75]
  """
  num_tasks = _common.check_int(num_tasks, "num_tasks", minimum=1)
  if name == "fixed":
    if len(fixed_weights) != num_tasks:
      raise ValueError(f"'fixed' weighting needs {num_tasks} `fixed_weights`, got {tuple(fixed_weights)}.")
    fixed = jnp.asarray(fixed_weights, float)  # float32, or float64 under jax_enable_x64.
    return LossWeighting(
        init=lambda: ({}, {}),
        combine=lambda params, state, task_losses: (
            jnp.sum(fixed * _check_task_losses(task_losses, num_tasks)), fixed, state))

  if name == "trainable":
    def combine_trainable(params, state, task_losses):
      task_losses = _check_task_losses(task_losses, num_tasks)
      weights = _preconditioned_softmax(params["logits"], jax.lax.stop_gradient(task_losses))
      return balanced_weights_loss(weights, task_losses), weights, state
    return LossWeighting(init=lambda: ({"logits": jnp.zeros(num_tasks)}, {}), combine=combine_trainable)

  if name == "uncertainty":
    def combine_uncertainty(params, state, task_losses):
      total = uncertainty_weighted_loss(params["log_variances"], task_losses)
      return total, 0.5 * jnp.exp(-params["log_variances"]), state
    return LossWeighting(init=lambda: ({"log_variances": jnp.zeros(num_tasks)}, {}), combine=combine_uncertainty)

  if name == "dwa":
    dwa_period = _common.check_int(dwa_period, "dwa_period", minimum=1)
    _common.check_number(dwa_temperature, "dwa_temperature", minimum=0.0, strict=True)

    def init_dwa():
      history = {"running_sum": jnp.zeros(num_tasks), "steps": jnp.zeros((), jnp.int32),
                 "previous": jnp.ones(num_tasks), "before_previous": jnp.ones(num_tasks),
                 "periods": jnp.zeros((), jnp.int32)}
      return {}, history

    def combine_dwa(params, state, task_losses):
      del params
      task_losses = _check_task_losses(task_losses, num_tasks)
      weights = jnp.where(state["periods"] >= 2,
                          dwa_weights(state["previous"], state["before_previous"], temperature=dwa_temperature),
                          jnp.ones(num_tasks))
      running_sum = state["running_sum"] + jax.lax.stop_gradient(task_losses)
      steps = state["steps"] + 1
      period_done = steps == dwa_period
      new_state = {
          "running_sum": jnp.where(period_done, 0.0, running_sum),
          "steps": jnp.where(period_done, 0, steps),
          "previous": jnp.where(period_done, running_sum / dwa_period, state["previous"]),
          "before_previous": jnp.where(period_done, state["previous"], state["before_previous"]),
          "periods": state["periods"] + period_done,
      }
      return jnp.sum(weights * task_losses), weights, new_state
    return LossWeighting(init=init_dwa, combine=combine_dwa)

  if name == "rlw":
    seed = _common.check_int(seed, "seed")

    def combine_rlw(params, state, task_losses):
      del params
      task_losses = _check_task_losses(task_losses, num_tasks)
      key, draw = jax.random.split(state["key"])
      weights = jax.nn.softmax(jax.random.normal(draw, (num_tasks,), task_losses.dtype))
      return jnp.sum(weights * task_losses), weights, {"key": key}
    return LossWeighting(init=lambda: ({}, {"key": jax.random.PRNGKey(seed)}), combine=combine_rlw)

  if name == "gls":
    def combine_gls(params, state, task_losses):
      del params
      task_losses = _check_task_losses(task_losses, num_tasks)
      total = jnp.exp(jnp.mean(jnp.log(task_losses)))
      weights = jax.lax.stop_gradient(total / (num_tasks * task_losses))
      return total, weights, state
    return LossWeighting(init=lambda: ({}, {}), combine=combine_gls)

  if name == "famo":
    _common.check_number(famo_lr, "famo_lr", minimum=0.0, strict=True)
    _common.check_number(famo_weight_decay, "famo_weight_decay", minimum=0.0)

    def init_famo():
      zeros = jnp.zeros(num_tasks)
      return {}, {"logits": zeros, "adam_mu": zeros, "adam_nu": zeros, "adam_count": jnp.zeros((), jnp.int32),
                  "previous_log_losses": zeros, "calls": jnp.zeros((), jnp.int32)}

    def combine_famo(params, state, task_losses):
      del params
      task_losses = _check_task_losses(task_losses, num_tasks)
      log_losses = jnp.log(jax.lax.stop_gradient(task_losses) + _FAMO_OFFSET)
      logits, adam = _famo_logits_step(state, log_losses, famo_lr, famo_weight_decay)
      z = jax.nn.softmax(logits)
      ratios = z / (jax.lax.stop_gradient(task_losses) + _FAMO_OFFSET)
      weights = ratios / jnp.sum(ratios)
      new_state = {"logits": logits, **adam, "previous_log_losses": log_losses,
                   "calls": jnp.minimum(state["calls"] + 1, 2)}
      new_state = {k: v.astype(state[k].dtype) for k, v in new_state.items()}
      return jnp.sum(weights * task_losses), weights, new_state
    return LossWeighting(init=init_famo, combine=combine_famo)

  raise ValueError(f"Unknown loss weighting {name!r}; use one of {LOSS_WEIGHTING_NAMES}.")


_FAMO_OFFSET = 1e-8  # LibMTL's shift of the losses before their logarithm (its lower bounds Lᵢ* are 0).


def _famo_logits_step(state, log_losses, learning_rate, weight_decay):
  """FAMO's logits after one Adam step (torch.optim.Adam's rule) on (∂z/∂ξ)ᵀδ + γξ; unchanged at the first call.

  δ = the log losses recorded at the previous call − `log_losses`.
  """
  logits = state["logits"]
  delta = state["previous_log_losses"] - log_losses
  z = jax.nn.softmax(logits)
  gradient = z * (delta - jnp.sum(z * delta)) + weight_decay * logits
  count = state["adam_count"] + 1
  mu = 0.9 * state["adam_mu"] + 0.1 * gradient
  nu = 0.999 * state["adam_nu"] + 0.001 * gradient ** 2
  mu_hat = mu / (1.0 - 0.9 ** count.astype(logits.dtype))
  nu_hat = nu / (1.0 - 0.999 ** count.astype(logits.dtype))
  stepped = logits - learning_rate * mu_hat / (jnp.sqrt(nu_hat) + 1e-8)
  first = state["calls"] == 0
  keep = lambda old, new: jnp.where(first, old, new)
  adam = {"adam_mu": keep(state["adam_mu"], mu), "adam_nu": keep(state["adam_nu"], nu),
          "adam_count": keep(state["adam_count"], count)}
  return keep(logits, stepped), adam
