"""The building blocks of the loss-level multi-task weightings: a trainable α, uncertainty weights, DWA.

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
equal to the rule above for N = 2; `losses.scalarization.balanced_weights`
(and `trainable_alpha`, its N = 2 case) parametrises the weights as
w = softmax(z) over free logits z trained by the model's own optimizer, so
they stay on the simplex without clipping or projection. The rule's gradient with respect to z spans many orders of
magnitude along the way to a small balance point (it carries the factors
α(1−α) and (L1+L2)², and Adam's second-moment estimate remembers the large
early values, so α stalls far from α* = 1e-5, say). The logits therefore
receive the rule's gradient divided by the positive scalar
c = 2·(Σᵢ wᵢLᵢ)·Σᵢ wᵢ(1−wᵢ)Lᵢ: the same direction and fixed point, and for
N = 2 exactly tanh(½·log(αL1/((1−α)L2))), bounded by 1 and linear in the
log-ratio near balance, so Adam converges to α* at any scale (tested down
to α* = 1e-5).

The factories that turn these into a training component (`trainable_alpha`,
`balanced_weights`, `uw`, `dwa`, …, and `loss_weighting(name, ...)` over
them) are in `losses.scalarization`, with every other loss-level weighting.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from losses import _common


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
