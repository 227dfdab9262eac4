"""losses.aggregation: TorchJD 0.18 and LibMTL cross-checks, the methods' defining properties, Optax composition.

The cross-checks (marked `reference`) run every aggregator that TorchJD has on the same float64 Jacobians:
independent, conflicting (g₂ ≈ −0.8 g₁), linearly dependent (g₃ = g₁ + g₂) and parallel (g₃ = 2g₁) rows,
with N < P and N > P. Where TorchJD solves its problem exactly (closed forms, quadprog) the updates agree to
1e-6 relative (measured: 1e-9 or better). Where it iterates, the comparison says which answer is better:

* MGDA: TorchJD stops Frank-Wolfe early, so its update is not the minimum-norm point; ours is never longer
  and lies within 5e-2 of the largest gradient norm of TorchJD's (measured 4e-2), and ours satisfies the
  optimality conditions to 1e-9 (the property test).
* CAGrad: TorchJD's Clarabel solution is accurate to ~1e-4; ours agrees to 5e-4 relative and its conflict
  objective minᵢ gᵢ·d is never lower (both on the ball's boundary).
* Nash-MTL: TorchJD's sequential convex programme does not always reach wᵢ(Gw)ᵢ = 1 (its residual is above
  1 on some of these matrices); where its residual is below 1e-5 the updates agree to 1e-5 relative, and
  ours has a residual below 1e-9 on every matrix.

The random methods are compared on the same random draws: torch's generator is seeded, the draws TorchJD
will make (the permutations of PCGrad and GradVac, GradDrop's uniforms, the normals of random weighting)
are replayed from the same seed and handed to our implementation's internal function that takes them.
Our own draws are checked for their distribution (random weights, GradDrop's sign choice) or for giving one
of the outcomes that some order can give (PCGrad).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import libmtl_weighting
from conftest import reference_package
import losses
from losses import aggregation

N_TASKS = 4
P = 6


def _families(n: int, p: int, seed: int) -> dict[str, np.ndarray]:
  """Float64 Jacobians (n, p): independent, conflicting, dependent and parallel rows, of varied norms."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, p)) * 10.0 ** rng.uniform(-1, 1, size=(n, 1))
  conflicting = base.copy()
  conflicting[1] = -0.8 * base[0] + 0.1 * rng.normal(size=p)
  families = {"independent": base, "conflicting": conflicting}
  if n >= 3:
    dependent, parallel = base.copy(), base.copy()
    dependent[2] = base[0] + base[1]
    parallel[2] = 2.0 * base[0]
    families.update(dependent=dependent, parallel=parallel)
  return families


REFERENCE_SHAPES = ((3, 8), (5, 12), (6, 4))
REFERENCE_JACOBIANS = [(f"{n}x{p}/{kind}", matrix) for seed, (n, p) in enumerate(REFERENCE_SHAPES)
                       for kind, matrix in _families(n, p, seed).items()]
# One batch of (N_TASKS, P) Jacobians for the property tests: one compilation per method, vmapped over them.
BATCH = np.stack([matrix for seed in range(4) for matrix in _families(N_TASKS, P, 10 + seed).values()])


def _options(name: str, n: int, **options):
  """The options that have no default (for the tests that run every method), `num_tasks`, then `options`."""
  required = {"cagrad": {"c": 0.5}, "krum": {"n_byzantine": 0}, "trimmed_mean": {"trim_number": 1},
              "fairgrad": {"alpha": 2.0}, "constant": {"weights": tuple(np.linspace(0.5, 2.0, n))}}
  return {**required.get(name, {}), "num_tasks": n, **options}


@functools.cache
def _jitted(name: str, frozen_options: tuple):
  """`(jacobians (B, N, P), task_losses (B, N), keys (B, 2)) -> (updates (B, P), states)`: two updates each.

  Each matrix starts from a fresh state whose PRNG key is replaced by its row of `keys`; the second update sees
  the state the first one left (EMA targets, warm starts, GradNorm's weights, the split key). Both run in one
  `lax.scan`, so that a method is compiled once per dtype for all the tests below.
  """
  aggregator = losses.gradient_aggregator(name, **dict(frozen_options))

  def one(jacobian, task_losses, key):
    def step(state, scale):
      return aggregator.update(jacobian, state, task_losses=task_losses * scale)[::-1]
    state = aggregator.init(jnp.zeros(jacobian.shape[1], jacobian.dtype))
    if "key" in state._fields:
      state = state._replace(key=key)
    state, updates = jax.lax.scan(step, state, jnp.array([1.0, 0.9], jacobian.dtype))
    return updates[-1], state

  return jax.jit(jax.vmap(one))


def _aggregate(name: str, jacobians, task_losses=None, keys=None, **options):
  """The second update of `name` (see `_jitted`) for one (N, P) Jacobian or a batch (B, N, P), and the states.

  `keys` default to the key of the option `seed` (0).
  """
  jacobians = jnp.asarray(jacobians)
  single = jacobians.ndim == 2
  if single:
    jacobians = jacobians[None]
  if task_losses is None:
    task_losses = jnp.linspace(1.0, 2.0, jacobians.shape[1], dtype=jacobians.dtype) * jnp.ones(jacobians.shape[:2],
                                                                                                jacobians.dtype)
  if keys is None:
    keys = jnp.stack([jax.random.PRNGKey(options.pop("seed", 0))] * jacobians.shape[0])
  options = _options(name, jacobians.shape[1], **options)
  updates, states = _jitted(name, tuple(sorted(options.items())))(jacobians, jnp.asarray(task_losses), keys)
  if single:
    return np.asarray(updates[0]), jax.tree.map(lambda x: x[0], states)
  return np.asarray(updates), states


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _relative(actual, expected):
  return np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-300)


# ---------------------------------------------------------------------------------------------------------------
# Against TorchJD 0.18.


EXACT = {
    "mean": (lambda T, n, torch: T.Mean(), {}),
    "upgrad": (lambda T, n, torch: T.UPGrad(), {}),
    "upgrad/pref_vector": (lambda T, n, torch: T.UPGrad(pref_vector=torch.arange(1.0, n + 1, dtype=torch.float64)),
                           {"pref_vector": "arange"}),
    "dualproj": (lambda T, n, torch: T.DualProj(), {}),
    "imtl_g": (lambda T, n, torch: T.IMTLG(), {}),
    "aligned_mtl": (lambda T, n, torch: T.AlignedMTL(), {}),
    "aligned_mtl/median": (lambda T, n, torch: T.AlignedMTL(scale_mode="median"), {"scale_mode": "median"}),
    "aligned_mtl/rmse": (lambda T, n, torch: T.AlignedMTL(scale_mode="rmse"), {"scale_mode": "rmse"}),
    "config": (lambda T, n, torch: T.ConFIG(), {}),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", EXACT)
def test_exact_methods_match_torchjd(case, x64):
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  make, options = EXACT[case]
  name = case.split("/")[0]
  for label, matrix in REFERENCE_JACOBIANS:
    n = matrix.shape[0]
    chosen = {k: (tuple(np.arange(1.0, n + 1)) if v == "arange" else v) for k, v in options.items()}
    expected = make(T, n, torch)(torch.from_numpy(matrix)).numpy()
    actual, _ = _aggregate(name, matrix, **chosen)
    assert _relative(actual, expected) < 1e-6, (case, label, _relative(actual, expected))


@pytest.mark.reference
def test_mgda_is_never_longer_than_torchjd_frank_wolfe_and_close_to_it(x64):
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  for label, matrix in REFERENCE_JACOBIANS:
    expected = T.MGDA()(torch.from_numpy(matrix)).numpy()
    actual, _ = _aggregate("mgda", matrix)
    scale = np.linalg.norm(matrix, axis=1).max()
    assert np.linalg.norm(actual) <= np.linalg.norm(expected) + 1e-12 * scale, label
    assert np.linalg.norm(actual - expected) < 5e-2 * scale, label


@pytest.mark.reference
def test_cagrad_matches_torchjd_and_its_conflict_objective_is_never_worse(x64):
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  for c in (0.4, 1.0):
    for label, matrix in REFERENCE_JACOBIANS:
      expected = T.CAGrad(c=c)(torch.from_numpy(matrix)).numpy()
      actual, _ = _aggregate("cagrad", matrix, c=c)
      assert _relative(actual, expected) < 5e-4, (c, label, _relative(actual, expected))
      objective = lambda d, matrix=matrix: np.min(matrix @ d)
      scale = np.linalg.norm(matrix, axis=1).max() ** 2
      assert objective(actual) >= objective(expected) - 1e-10 * scale, (c, label)
      mean = matrix.mean(axis=0)
      np.testing.assert_allclose(np.linalg.norm(actual - mean), c * np.linalg.norm(mean), rtol=1e-9)


def _nash_residual(gram, weights):
  return np.max(np.abs(weights * (gram @ weights) - 1.0))


@pytest.mark.reference
def test_nash_mtl_matches_torchjd_where_torchjd_converges(x64):
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  compared = 0
  for label, matrix in REFERENCE_JACOBIANS:
    n, gram = matrix.shape[0], matrix @ matrix.T
    torch_weights = T.NashMTL(n_tasks=n, max_norm=0.0).weighting(torch.from_numpy(matrix)).numpy()
    expected = T.NashMTL(n_tasks=n)(torch.from_numpy(matrix)).numpy()  # Default max_norm = 1.
    actual, state = _aggregate("nash_mtl", matrix)
    assert _nash_residual(gram, np.asarray(state.weights)) < 1e-9, label
    if _nash_residual(gram, torch_weights) < 1e-5:
      compared += 1
      assert _relative(actual, expected) < 1e-5, (label, _relative(actual, expected))
  assert compared >= 4  # TorchJD converged on 5 of the 12 matrices here.


@pytest.mark.reference
def test_pcgrad_matches_torchjd_on_the_same_permutations(x64):
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  for seed, (label, matrix) in enumerate(REFERENCE_JACOBIANS):
    n = matrix.shape[0]
    torch.manual_seed(seed)
    orders = np.stack([torch.randperm(n).numpy() for _ in range(n)])
    torch.manual_seed(seed)
    expected = T.PCGrad()(torch.from_numpy(matrix)).numpy()
    weights = aggregation._pcgrad_weights(jnp.asarray(matrix @ matrix.T), jnp.asarray(orders))
    assert _relative(matrix.T @ np.asarray(weights), expected) < 1e-6, label


@pytest.mark.reference
def test_gradvac_matches_torchjd_over_steps_on_the_same_permutations(x64):
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  for shape_index, (n, p) in enumerate(REFERENCE_SHAPES):
    for beta in (0.5, 0.1):
      reference = T.GradVac(beta=beta)
      phi = jnp.zeros((n, n))
      for step, matrix in enumerate(_families(n, p, 100 + shape_index).values()):
        torch.manual_seed(step)
        orders = []
        for i in range(n):
          others = [j for j in range(n) if j != i]
          orders.append([others[k] for k in torch.randperm(n - 1).tolist()])
        torch.manual_seed(step)
        expected = reference(torch.from_numpy(matrix)).numpy()
        weights, phi = aggregation._gradvac_weights(jnp.asarray(matrix @ matrix.T), phi, jnp.asarray(orders), beta,
                                                    1e-8)
        assert _relative(matrix.T @ np.asarray(weights), expected) < 1e-6, (n, beta, step)
        np.testing.assert_allclose(phi, reference.gramian_weighting._phi_t.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.reference
def test_graddrop_matches_torchjd_on_the_same_uniforms(x64):
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  square = lambda purity: purity ** 2
  for seed, (label, matrix) in enumerate(REFERENCE_JACOBIANS):
    n, p = matrix.shape
    leak = np.linspace(0.0, 0.5, n)
    for f, with_leak in ((None, False), (square, True)):
      torch.manual_seed(seed)
      uniform = torch.rand(p, dtype=torch.float64).numpy()
      torch.manual_seed(seed)
      kwargs = {"f": square} if f else {}
      if with_leak:
        kwargs["leak"] = torch.from_numpy(leak)
      expected = T.GradDrop(**kwargs)(torch.from_numpy(matrix)).numpy()
      actual = aggregation._graddrop(jnp.asarray(matrix), jnp.asarray(uniform), f or (lambda x: x),
                                     jnp.asarray(leak if with_leak else np.zeros(n)))
      assert _relative(np.asarray(actual), expected) < 1e-12, label


@pytest.mark.reference
def test_random_weighting_matches_torchjd_on_the_same_normals(x64):
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  for seed, (label, matrix) in enumerate(REFERENCE_JACOBIANS):
    torch.manual_seed(seed)
    normals = torch.randn(matrix.shape[0], dtype=torch.float64).numpy()
    torch.manual_seed(seed)
    expected = T.Random()(torch.from_numpy(matrix)).numpy()
    weights = jax.nn.softmax(jnp.asarray(normals))
    assert _relative(matrix.T @ np.asarray(weights), expected) < 1e-12, label
    # The same rule as the aggregator's own draw: softmax of standard normals from the state's key, here of the
    # second update (`_aggregate`), after the first one split the key.
    key, _ = jax.random.split(jax.random.PRNGKey(0))
    _, draw = jax.random.split(key)
    own = jax.nn.softmax(jax.random.normal(draw, (matrix.shape[0],), jnp.float64))
    actual, _ = _aggregate("random", matrix)
    assert _relative(actual, matrix.T @ np.asarray(own)) < 1e-12


# ---------------------------------------------------------------------------------------------------------------
# GradNorm: the paper's formulas, and LibMTL's code where they agree.


def test_gradnorm_follows_the_paper_on_a_hand_computed_case():
  aggregator = losses.gradient_aggregator("gradnorm", num_tasks=2, alpha=1.5, learning_rate=0.1)
  jacobian = jnp.array([[3.0, 0.0], [0.0, 1.0]])  # ‖g₁‖ = 3, ‖g₂‖ = 1.
  state = aggregator.init(jnp.zeros(2))
  update, state = aggregator.update(jacobian, state, task_losses=jnp.array([2.0, 4.0]))
  np.testing.assert_allclose(update, [3.0, 1.0])  # w = 1 at first.
  np.testing.assert_allclose(state.initial_losses, [2.0, 4.0])
  # r = 1: targets Ḡ = 2; ∂/∂w = sign(wᵢ‖gᵢ‖ − 2)·‖gᵢ‖ = (3, −1); w = (1 − 0.3, 1 + 0.1), renormalised to sum 2.
  np.testing.assert_allclose(state.weights, 2 * np.array([0.7, 1.1]) / 1.8, rtol=1e-6)
  weights = np.asarray(state.weights)
  update, state = aggregator.update(jacobian, state, task_losses=jnp.array([1.0, 3.0]))
  np.testing.assert_allclose(update, weights * [3.0, 1.0], rtol=1e-6)
  ratios = np.array([1.0 / 2.0, 3.0 / 4.0])
  inverse_rates = ratios / ratios.mean()
  weighted = weights * [3.0, 1.0]
  targets = weighted.mean() * inverse_rates ** 1.5
  stepped = weights - 0.1 * np.sign(weighted - targets) * [3.0, 1.0]
  np.testing.assert_allclose(state.weights, 2 * stepped / stepped.sum(), rtol=1e-6)
  np.testing.assert_allclose(state.initial_losses, [2.0, 4.0])  # L(0) stays the first losses.


@pytest.mark.reference
def test_gradnorm_matches_libmtl_given_the_same_weights(x64):
  """LibMTL trains s with w = N·softmax(s): the same combination, and its s-gradient is ours through the softmax."""
  del x64
  torch = reference_package("torch")
  gradnorm_module = libmtl_weighting("GradNorm")

  class StandIn(gradnorm_module.GradNorm):
    """The attributes LibMTL's trainer and architecture give the weighting."""

    def __init__(self, jacobian, initial_losses, logits):
      super().__init__()
      self.task_num, self.device, self.rep_grad, self.epoch = jacobian.shape[0], "cpu", False, 1
      # float32, the dtype in which LibMTL collects the per-task gradients.
      self.theta = torch.nn.Parameter(torch.zeros(jacobian.shape[1], dtype=torch.float32))
      self.loss_scale = torch.nn.Parameter(torch.from_numpy(logits.astype(np.float32)))
      self.train_loss_buffer = np.asarray(initial_losses)[:, None]

    def get_share_params(self):
      return [self.theta]

    def zero_grad_share_params(self):
      if self.theta.grad is not None:
        self.theta.grad.zero_()

  rng = np.random.default_rng(3)
  for n, p in ((2, 5), (4, 7)):
    jacobian = rng.normal(size=(n, p)) * [[1.0], [3.0], [0.5], [2.0]][:n]
    initial, current, logits = rng.uniform(1, 3, n), rng.uniform(0.5, 2, n), rng.normal(size=n) * 0.3
    model = StandIn(jacobian, initial, logits)
    task_losses = (torch.from_numpy(current.astype(np.float32))
                   + torch.from_numpy(jacobian.astype(np.float32)) @ model.theta)  # Values `current`, gradients J.
    weights = model.backward(task_losses, alpha=1.5)

    softmax = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(weights, n * softmax, rtol=1e-6)
    norms = np.linalg.norm(jacobian, axis=1)
    _, gradient = aggregation._gradnorm_step(jnp.asarray(norms), jnp.asarray(n * softmax), jnp.asarray(initial),
                                             jnp.asarray(current), 1.5, 0.1)
    through_softmax = n * (np.diag(softmax) - np.outer(softmax, softmax)) @ np.asarray(gradient)
    np.testing.assert_allclose(model.loss_scale.grad.numpy(), through_softmax, rtol=1e-5, atol=1e-7)
    # The model's gradient: Σ wᵢgᵢ (LibMTL holds the per-task gradients in float32).
    aggregator = losses.gradient_aggregator("gradnorm", num_tasks=n)
    state = aggregator.init(jnp.zeros(p))._replace(count=jnp.ones((), jnp.int32), weights=jnp.asarray(n * softmax),
                                                   initial_losses=jnp.asarray(initial))
    update, _ = aggregator.update(jnp.asarray(jacobian), state, task_losses=jnp.asarray(current))
    np.testing.assert_allclose(model.theta.grad.numpy(), update, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The methods' defining properties, float64.


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_upgrad_and_dualproj_updates_conflict_with_no_task(name, x64):
  """⟨d, gᵢ⟩ ≥ 0 for every i, exactly without TorchJD's default regularisation (reg_eps = 1e-4 trades it for
  conditioning: ⟨d, gᵢ⟩ ≥ −reg_eps·trace(G)·vᵢ)."""
  del x64
  updates, _ = _aggregate(name, BATCH, reg_eps=0.0)
  products = np.einsum("bnp,bp->bn", BATCH, updates)
  scale = np.linalg.norm(BATCH, axis=2).max(axis=1, keepdims=True) ** 2
  assert (products >= -1e-10 * scale).all(), products.min()
  assert (products.max(axis=1) > 0).all()


def test_mgda_solution_satisfies_the_optimality_conditions(x64):
  del x64
  weights = jax.jit(jax.vmap(lambda j: aggregation._mgda_weights(j @ j.T, 100)))(jnp.asarray(BATCH))
  weights = np.asarray(weights)
  assert (weights >= 0).all()
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
  updates, _ = _aggregate("mgda", BATCH)
  np.testing.assert_allclose(updates, np.einsum("bn,bnp->bp", weights, BATCH), rtol=1e-9, atol=1e-12)
  for jacobian, alpha, d in zip(BATCH, weights, updates):
    scale = np.linalg.norm(jacobian, axis=1).max() ** 2
    slack = jacobian @ d - d @ d  # gᵢ·d ≥ ‖d‖², with equality where αᵢ > 0 (the KKT conditions).
    assert (slack >= -1e-9 * scale).all()
    assert (np.abs(slack[alpha > 1e-9]) <= 1e-9 * scale).all()


def test_pcgrad_with_two_tasks_is_the_closed_form(x64):
  del x64
  rng = np.random.default_rng(4)
  jacobians = rng.normal(size=(8, 2, 5))
  jacobians[::2, 1] = -0.7 * jacobians[::2, 0] + 0.2 * rng.normal(size=(4, 5))  # Half of them conflict.
  updates, _ = _aggregate("pcgrad", jacobians)
  for (g1, g2), d in zip(jacobians, updates):
    conflict = min(g1 @ g2, 0.0)
    expected = (g1 - conflict / (g2 @ g2) * g2) + (g2 - conflict / (g1 @ g1) * g1)
    np.testing.assert_allclose(d, expected, rtol=1e-12, atol=1e-12)


def _pcgrad_numpy(jacobian, orders):
  projected = []
  for i, order in enumerate(orders):
    g = jacobian[i].copy()
    for j in order:
      if j != i and g @ jacobian[j] < 0:
        g -= (g @ jacobian[j]) / (jacobian[j] @ jacobian[j]) * jacobian[j]
    projected.append(g)
  return np.sum(projected, axis=0)


def test_pcgrad_with_three_tasks_gives_an_outcome_of_some_visiting_order(x64):
  del x64
  jacobian = np.array([[1.0, 0.2, 0.0], [-0.9, 0.6, 0.1], [-0.2, -1.0, 0.5]])
  outcomes = [_pcgrad_numpy(jacobian, orders)
              for orders in itertools.product(itertools.permutations(range(3)), repeat=3)]
  keys = jnp.stack([jax.random.PRNGKey(seed) for seed in range(8)])
  updates, _ = _aggregate("pcgrad", np.stack([jacobian] * 8), keys=keys)
  for update in updates:
    assert min(np.linalg.norm(update - outcome) for outcome in outcomes) < 1e-12
  seen = {tuple(np.round(update, 9)) for update in updates}
  assert len(seen) > 1  # The order is random: several seeds give several outcomes.


def test_imtl_g_and_config_give_equal_projections_on_every_task_direction(x64):
  del x64
  independent = BATCH[::4]  # The independent family of each seed.
  for name in ("imtl_g", "config"):
    updates = _aggregate(name, BATCH)[0][::4]
    projections = np.einsum("bnp,bp->bn", independent, updates) / np.linalg.norm(independent, axis=2)
    np.testing.assert_allclose(projections, projections[:, :1] * np.ones((1, N_TASKS)), rtol=1e-9)
    assert (projections > 0).all()


def test_nash_mtl_solves_the_bargaining_condition_and_clips_the_norm(x64):
  del x64
  updates, states = _aggregate("nash_mtl", BATCH)
  solved = np.asarray(states.weights)  # Before the clipping to max_norm = 1.
  for jacobian, weights, update in zip(BATCH, solved, updates):
    assert _nash_residual(jacobian @ jacobian.T, weights) < 1e-9
    unclipped = weights @ jacobian
    np.testing.assert_allclose(update, unclipped / max(1.0, np.linalg.norm(unclipped)), rtol=1e-9)


def test_cagrad_stays_on_its_ball(x64):
  del x64
  updates, _ = _aggregate("cagrad", BATCH)  # c = 0.5
  means = BATCH.mean(axis=1)
  np.testing.assert_allclose(np.linalg.norm(updates - means, axis=1), 0.5 * np.linalg.norm(means, axis=1), rtol=1e-9)


def test_random_weights_are_softmax_of_standard_normals():
  """With J = I the update is the weights: on the simplex, and their centred logs have variance 1 − 1/N."""
  n, steps = 3, 4000
  aggregator = losses.gradient_aggregator("random", seed=1)

  @jax.jit
  def run(state):
    def step(state, _):
      update, state = aggregator.update(jnp.eye(n), state)
      return state, update
    return jax.lax.scan(step, state, None, length=steps)[1]

  weights = np.asarray(run(aggregator.init(jnp.zeros(n))))
  assert (weights > 0).all()
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
  centred = np.log(weights) - np.log(weights).mean(axis=1, keepdims=True)
  np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=0.06)
  np.testing.assert_allclose(centred.var(axis=0), 1 - 1 / n, rtol=0.08)
  assert len({tuple(w) for w in weights.round(6)}) == steps  # A new draw at every update.


def test_graddrop_keeps_one_sign_per_coordinate_with_probability_the_purity():
  jacobian = jnp.array([[1.0, 2.0, -1.0, 0.5], [-1.0, 1.0, -3.0, 0.5], [2.0, -1.0, 1.0, 0.0]])
  positive = jnp.sum(jnp.maximum(jacobian, 0.0), axis=0)
  negative = jnp.sum(jnp.minimum(jacobian, 0.0), axis=0)
  purity = 0.5 * (1 + jnp.sum(jacobian, axis=0) / jnp.sum(jnp.abs(jacobian), axis=0))
  aggregator = losses.gradient_aggregator("graddrop", seed=2)

  @jax.jit
  def run(state):
    def step(state, _):
      update, state = aggregator.update(jacobian, state)
      return state, update
    return jax.lax.scan(step, state, None, length=3000)[1]

  updates = np.asarray(run(aggregator.init(jnp.zeros(4))))
  kept_positive = np.isclose(updates, positive)
  assert (kept_positive | np.isclose(updates, negative)).all()
  np.testing.assert_allclose(kept_positive.mean(axis=0), purity, atol=0.03)


# ---------------------------------------------------------------------------------------------------------------
# Every method under jit, in float32 and float64; Optax composition; state; options.

RANDOM = ("graddrop", "random")  # Their float32 and float64 draws differ.


@pytest.mark.parametrize("name", losses.AGGREGATOR_NAMES)
def test_every_method_under_jit_in_float32_and_float64(name):
  single, single_state = _aggregate(name, BATCH.astype(np.float32))
  with jax.enable_x64(True):
    double, state = _aggregate(name, BATCH)
    assert double.dtype == np.float64
    floats = [leaf for leaf in jax.tree.leaves(state) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert all(leaf.dtype == jnp.float64 for leaf in floats)
  assert single.dtype == np.float32
  assert jax.tree.structure(single_state) == jax.tree.structure(state)
  if "count" in single_state._fields:
    np.testing.assert_array_equal(single_state.count, 2)
  assert np.isfinite(single).all() and np.isfinite(double).all()
  if name not in RANDOM:
    np.testing.assert_allclose(single, double, rtol=0, atol=2e-3 * np.abs(BATCH).max())


def test_a_pytree_of_parameters_is_aggregated_as_its_flattened_vector():
  aggregator = losses.gradient_aggregator("upgrad")
  params = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
  jacobian = jnp.asarray(BATCH[1], jnp.float32)
  grads = {"kernel": jacobian[:, :4].reshape(N_TASKS, 2, 2), "bias": jacobian[:, 4:]}
  update, _ = jax.jit(aggregator.update)(grads, aggregator.init(params))
  flat = _aggregate("upgrad", BATCH.astype(np.float32))[0][1]  # Stateless: its second update is its first.
  np.testing.assert_allclose(update["kernel"].reshape(-1), flat[:4], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(update["bias"], flat[4:], rtol=1e-5, atol=1e-6)


def test_composes_with_optax_chain_under_jit_and_scan():
  """Two quadratic tasks sharing w: UPGrad then Adam moves w towards the Pareto set; the state is a carry."""
  targets = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  task_losses = lambda w: jnp.sum((w[None] - targets) ** 2, axis=1)
  optimizer = optax.chain(losses.gradient_aggregator("upgrad"), optax.adam(0.05))
  params = jnp.array([2.0, -1.5])
  state = optimizer.init(params)

  @jax.jit
  def train(params, state):
    def step(carry, _):
      params, state = carry
      values, jacobian = task_losses(params), jax.jacrev(task_losses)(params)
      updates, state = optimizer.update(jacobian, state, params, task_losses=values)
      return (optax.apply_updates(params, updates), state), values
    return jax.lax.scan(step, (params, state), None, length=300)

  (params, state), _ = train(params, state)
  assert float(params[0] + params[1]) == pytest.approx(1.0, abs=0.05)  # On the segment between the targets.
  assert 0.0 <= float(params[0]) <= 1.0
  assert isinstance(state[0], optax.EmptyState)  # UPGrad keeps nothing across updates.


def test_gradnorm_gets_task_losses_through_optax_chain():
  optimizer = optax.chain(losses.gradient_aggregator("gradnorm", num_tasks=2), optax.sgd(0.1))
  params = {"w": jnp.zeros(3)}
  state = optimizer.init(params)
  grads = {"w": jnp.array([[1.0, 0.0, 0.0], [0.0, 4.0, 0.0]])}
  update = jax.jit(optimizer.update)
  _, state = update(grads, state, params, task_losses=jnp.array([1.0, 1.0]))
  weights = np.asarray(state[0].weights)
  assert weights[0] > 1.0 > weights[1]  # The task with the larger gradient loses weight.
  np.testing.assert_allclose(weights.sum(), 2.0, rtol=1e-6)
  with pytest.raises(ValueError, match="task_losses"):
    optimizer.update(grads, state, params)


def test_stateful_methods_carry_their_memory():
  _, states = _aggregate("gradvac", BATCH.astype(np.float32))
  phi = np.asarray(states.phi[1])
  assert phi.shape == (N_TASKS, N_TASKS) and np.abs(phi).max() > 0  # The EMA of the cosines moved.
  np.testing.assert_array_equal(np.diag(phi), 0.0)  # A task is never compared with itself.
  _, states = _aggregate("gradnorm", BATCH.astype(np.float32))
  np.testing.assert_allclose(states.initial_losses[1], np.linspace(1.0, 2.0, N_TASKS), rtol=1e-6)
  np.testing.assert_allclose(np.sum(states.weights, axis=1), N_TASKS, rtol=1e-6)


@pytest.mark.parametrize("name", ("pcgrad", "gradvac", "graddrop", "random"))
def test_random_methods_are_deterministic_given_the_seed(name):
  """The seed sets the state's key; the key alone sets the draws, and each update splits it."""
  for seed in range(3):
    state = losses.gradient_aggregator(name, num_tasks=N_TASKS, seed=seed).init(jnp.zeros(P))
    np.testing.assert_array_equal(state.key, jax.random.PRNGKey(seed))
  rng = np.random.default_rng(7)
  conflicting = np.eye(N_TASKS, P) - 0.4 * (np.ones((N_TASKS, P)) - np.eye(N_TASKS, P))  # gᵢ·gⱼ < 0 for i ≠ j.
  # As many matrices as BATCH, so that the programme compiled for it serves.
  jacobians = np.stack([conflicting + 0.05 * rng.normal(size=(N_TASKS, P))] * len(BATCH)).astype(np.float32)
  keys = jnp.stack([jax.random.PRNGKey(seed) for seed in [0, *range(len(BATCH) - 1)]])
  updates, states = _aggregate(name, jacobians, keys=keys)
  np.testing.assert_array_equal(updates[0], updates[1])
  np.testing.assert_array_equal(states.key[0], states.key[1])
  assert len({row.tobytes() for row in updates[1:]}) > len(BATCH) // 2  # Other seeds, other draws.
  assert not (states.key[0] == keys[0]).all()  # Split at every update.


def test_update_leaves_keep_their_dtypes():
  aggregator = losses.gradient_aggregator("upgrad")
  params = {"half": jnp.zeros(3, jnp.bfloat16), "single": jnp.zeros(2)}
  grads = {"half": jnp.asarray(BATCH[0, :, :3], jnp.bfloat16), "single": jnp.asarray(BATCH[0, :, 3:5], jnp.float32)}
  update, _ = jax.jit(aggregator.update)(grads, aggregator.init(params))
  assert update["half"].dtype == jnp.bfloat16 and update["single"].dtype == jnp.float32


def test_bad_names_options_and_inputs_are_clear_errors():
  with pytest.raises(ValueError, match="Unknown gradient aggregator 'summ'"):
    losses.gradient_aggregator("summ")
  with pytest.raises(ValueError, match=r"Unknown option\(s\) \['epsilon'\] for the 'mgda' aggregator"):
    losses.gradient_aggregator("mgda", epsilon=1e-3)
  with pytest.raises(ValueError, match=r"needs the option\(s\) \['c'\]"):
    losses.gradient_aggregator("cagrad")
  with pytest.raises(ValueError, match="give `num_tasks`"):
    losses.gradient_aggregator("nash_mtl")
  with pytest.raises(ValueError, match="`beta` must be in"):
    losses.gradient_aggregator("gradvac", num_tasks=2, beta=2.0)
  with pytest.raises(ValueError, match="`scale_mode`"):
    losses.gradient_aggregator("aligned_mtl", scale_mode="max")
  with pytest.raises(ValueError, match="`pref_vector`"):
    losses.gradient_aggregator("upgrad", num_tasks=3, pref_vector=(1.0, 1.0))
  with pytest.raises(TypeError, match="`max_iters`"):
    losses.gradient_aggregator("upgrad", max_iters=10.5)
  aggregator = losses.gradient_aggregator("upgrad", num_tasks=3)
  state = aggregator.init({"a": jnp.zeros(2), "b": jnp.zeros(1)})
  with pytest.raises(AssertionError, match="task_grads"):
    jax.jit(aggregator.update)({"a": jnp.zeros((3, 2)), "b": jnp.zeros((2, 1))}, state)
  with pytest.raises(TypeError, match="floating-point"):
    aggregator.update({"a": jnp.zeros((3, 2), jnp.int32), "b": jnp.zeros((3, 1))}, state)
  gradnorm = losses.gradient_aggregator("gradnorm", num_tasks=3)
  with pytest.raises(AssertionError, match="task_losses"):
    gradnorm.update(jnp.zeros((3, 2)), gradnorm.init(jnp.zeros(2)), task_losses=jnp.ones(2))


# ---------------------------------------------------------------------------------------------------------------
# The methods TorchJD 0.18 added: against TorchJD, then their defining properties.


def _run(aggregator, jacobians, **extra):
  """The updates and final state of `aggregator` over the (N, P) `jacobians` in turn, from `init` (eager)."""
  state = aggregator.init(jnp.zeros(jacobians[0].shape[1], jnp.asarray(jacobians[0]).dtype))
  updates = []
  for jacobian in jacobians:
    update, state = aggregator.update(jnp.asarray(jacobian), state, **extra)
    updates.append(np.asarray(update))
  return updates, state


def _steps(n: int, p: int, seed: int, count: int = 3) -> list[np.ndarray]:
  """`count` related (N, P) Jacobians, as in training: conflicting rows, slowly changing."""
  rng = np.random.default_rng(seed)
  base = _families(n, p, seed)["conflicting"]
  return [base + 0.3 * rng.normal(size=base.shape) for _ in range(count)]


@pytest.mark.reference
def test_closed_form_additions_match_torchjd(x64):
  """Sum, Constant, Krum (with Multi-Krum) and TrimmedMean: exact rules, equal to rounding."""
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  for label, matrix in REFERENCE_JACOBIANS:
    n = matrix.shape[0]
    weights = np.linspace(-0.5, 2.0, n)
    cases = [(T.Sum(), "sum", {}), (T.Constant(torch.from_numpy(weights)), "constant", {"weights": tuple(weights)}),
             (T.TrimmedMean(trim_number=1), "trimmed_mean", {"trim_number": 1}),
             (T.Krum(n_byzantine=0), "krum", {"n_byzantine": 0})]
    if n >= 5:
      cases += [(T.Krum(n_byzantine=1, n_selected=2), "krum", {"n_byzantine": 1, "n_selected": 2}),
                (T.TrimmedMean(trim_number=2), "trimmed_mean", {"trim_number": 2})]
    for reference, name, options in cases:
      expected = reference(torch.from_numpy(matrix)).numpy()
      actual, _ = _run(losses.gradient_aggregator(name, **options), [matrix])
      assert _relative(actual[0], expected) < 1e-12, (name, options, label)


def _fair_residual(gram, weights, alpha):
  return np.max(np.abs((gram @ weights) * weights ** (1.0 / alpha) - 1.0))


@pytest.mark.reference
def test_fairgrad_matches_torchjd_where_its_least_squares_converges(x64):
  """TorchJD's scipy least squares stops at `max_nfev` = 100·N or its tolerances; where its residual of
  (Gw)ᵢwᵢ^(1/α) = 1 is below 1e-6 the updates agree to 1e-5, and ours is below 1e-9 wherever G is regular."""
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  compared = 0
  for alpha in (0.5, 1.0, 2.0):
    for label, matrix in REFERENCE_JACOBIANS:
      gram = matrix @ matrix.T
      expected = T.FairGrad(alpha=alpha)(torch.from_numpy(matrix)).numpy()
      torch_weights = T.FairGradWeighting(alpha=alpha)(torch.from_numpy(gram)).numpy()
      actual, _ = _run(losses.aggregation.fairgrad(alpha), [matrix])
      weights = np.asarray(aggregation._fair_solve(jnp.asarray(gram), jnp.ones(len(gram)), 20, alpha))
      np.testing.assert_allclose(matrix.T @ weights, actual[0], rtol=1e-9, atol=1e-12)
      if np.linalg.matrix_rank(gram) == len(gram):
        assert _fair_residual(gram, weights, alpha) < 1e-9, (alpha, label)
      if _fair_residual(gram, torch_weights, alpha) < 1e-6:
        compared += 1
        assert _relative(actual[0], expected) < 1e-5, (alpha, label, _relative(actual[0], expected))
  assert compared >= 12


@pytest.mark.reference
@pytest.mark.parametrize("n_warmup_steps", [0, 2])
def test_excess_mtl_matches_torchjd_over_steps(n_warmup_steps, x64):
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  for seed, (n, p) in enumerate(REFERENCE_SHAPES):
    steps = _steps(n, p, seed, count=4)
    reference = T.ExcessMTL(robust_step_size=0.5, n_warmup_steps=n_warmup_steps)
    expected = [reference(torch.from_numpy(matrix)).numpy() for matrix in steps]
    actual, state = _run(losses.aggregation.excess_mtl(robust_step_size=0.5, n_warmup_steps=n_warmup_steps,
                                                       num_tasks=n), steps)
    for step, (a, e) in enumerate(zip(actual, expected)):
      assert _relative(a, e) < 1e-9, (n, step, _relative(a, e))
    np.testing.assert_allclose(state.weights, reference.weighting._weights.numpy(), rtol=1e-9)


@pytest.mark.reference
def test_pcd_matches_torchjd_over_steps(x64):
  """TorchJD's dual active set and our orthant QP solve the same dual exactly: the updates agree to 1e-7,
  including dependent rows and infeasible constraints (anti-parallel secondaries)."""
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  infeasible = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, -2.0, 0.0]])
  for seed, (n, p) in enumerate(REFERENCE_SHAPES):
    families = list(_families(n, p, 20 + seed).values())
    for tau in (0.02, 0.3, tuple(np.linspace(0.1, 0.5, n - 1))):
      reference = T.PCD(tau=torch.tensor(tau) if isinstance(tau, tuple) else tau, beta=0.9)
      expected = [reference(torch.from_numpy(matrix)).numpy() for matrix in families]
      actual, state = _run(losses.aggregation.pcd(tau=tau, beta=0.9, num_tasks=n), families)
      for label, a, e in zip(("independent", "conflicting", "dependent", "parallel"), actual, expected):
        scale = np.linalg.norm(e) + 1e-300
        assert np.linalg.norm(a - e) / scale < 1e-7, (n, tau, label, np.linalg.norm(a - e) / scale)
      np.testing.assert_allclose(state.squared_norm_ema, reference.gramian_weighting._sq_norm_ema.numpy(), rtol=1e-12)
  expected = T.PCD(tau=0.1)(torch.from_numpy(infeasible)).numpy()
  actual, _ = _run(losses.aggregation.pcd(tau=0.1, num_tasks=3), [infeasible])
  np.testing.assert_allclose(actual[0], expected, rtol=1e-9)
  np.testing.assert_allclose(actual[0], infeasible[0], rtol=1e-9)  # Dropped constraints: d = g₁.


@pytest.mark.reference
def test_modo_and_sdmgrad_match_torchjd_weightings_over_steps(x64):
  """One batch (A = G) and two independent batches (A = J₁J₂ᵀ, update ½(J₁ + J₂)ᵀw)."""
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  for seed, (n, p) in enumerate(REFERENCE_SHAPES):
    first, second = _steps(n, p, seed, count=3), _steps(n, p, seed + 50, count=3)
    preference = tuple(np.linspace(1.0, 2.0, n) / np.linspace(1.0, 2.0, n).sum())
    for make, ours in (
        (lambda: T.MoDoWeighting(gamma=0.05, rho=0.1), losses.aggregation.modo(gamma=0.05, num_tasks=n)),
        (lambda preference=preference: T.SDMGradWeighting(pref_vector=torch.tensor(preference)),
         losses.aggregation.sdmgrad(pref_vector=preference, num_tasks=n))):
      reference = make()
      expected = [m.T @ reference(torch.from_numpy(m @ m.T)).numpy() for m in first]
      actual, _ = _run(ours, first)
      for a, e in zip(actual, expected):
        assert _relative(a, e) < 1e-9, (n, type(reference).__name__)
      reference = make()
      expected = [0.5 * (a + b).T @ reference(torch.from_numpy(a @ b.T)).numpy() for a, b in zip(first, second)]
      state = ours.init(jnp.zeros(p))
      for a, b, e in zip(first, second, expected):
        update, state = ours.update(jnp.asarray(a), state, independent_task_grads=jnp.asarray(b))
        assert _relative(np.asarray(update), e) < 1e-9, (n, type(reference).__name__, "two batches")


@pytest.mark.reference
def test_cr_mogm_matches_torchjd_around_upgrad_and_mgda(x64):
  """Around UPGrad (exact on both sides) the updates agree to 1e-6; around MGDA, TorchJD's Frank-Wolfe stops
  early, so the smoothed updates are as close as the plain ones (5e-2 of the largest gradient norm)."""
  del x64
  T = reference_package("torchjd").aggregation
  torch = reference_package("torch")
  for seed, (n, p) in enumerate(REFERENCE_SHAPES):
    steps = _steps(n, p, seed, count=3)
    scale = max(np.linalg.norm(m, axis=1).max() for m in steps)
    for inner, weighting, tolerance in (("upgrad", T.UPGradWeighting, 1e-6), ("mgda", T.MGDAWeighting, 5e-2)):
      for initial in (None, tuple(np.full(n, 1.0 / n))):
        reference = T.GramianWeightedAggregator(T.CRMOGMWeighting(
            weighting(), alpha=0.6, initial_weights=None if initial is None else torch.tensor(initial)))
        expected = [reference(torch.from_numpy(m)).numpy() for m in steps]
        actual, _ = _run(losses.aggregation.cr_mogm(inner, alpha=0.6, initial_weights=initial, num_tasks=n), steps)
        for a, e in zip(actual, expected):
          error = _relative(a, e) if inner == "upgrad" else np.linalg.norm(a - e) / scale
          assert error < tolerance, (n, inner, initial, error)


def test_sum_constant_krum_and_trimmed_mean_follow_their_rules(x64):
  del x64
  np.testing.assert_allclose(_aggregate("sum", BATCH)[0], BATCH.sum(axis=1), rtol=1e-12)
  weights = np.linspace(0.5, 2.0, N_TASKS)
  np.testing.assert_allclose(_aggregate("constant", BATCH)[0], np.einsum("n,bnp->bp", weights, BATCH), rtol=1e-12)
  trimmed = np.sort(BATCH, axis=1)[:, 1:-1].mean(axis=1)  # trim_number = 1: each coordinate's extremes dropped.
  np.testing.assert_allclose(_aggregate("trimmed_mean", BATCH)[0], trimmed, rtol=1e-12)
  for jacobian, update in zip(BATCH, _aggregate("krum", BATCH)[0]):  # n_byzantine = 0: N − 2 nearest others.
    distances = np.linalg.norm(jacobian[:, None] - jacobian[None], axis=2)
    scores = np.sort(distances, axis=1)[:, 1:N_TASKS - 1].sum(axis=1)
    np.testing.assert_allclose(update, jacobian[np.argmin(scores)], rtol=1e-12)
  outlier = np.vstack([np.eye(3, 4), 0.1 * np.ones((1, 4)), [[50.0, -50.0, 50.0, 0.0]]])
  update, _ = _run(losses.aggregation.krum(1, n_selected=2), [outlier])
  assert np.abs(update[0]).max() < 1.0  # Multi-Krum averages two inliers, never the outlier.


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_fairgrad_weights_are_alpha_fair(alpha, x64):
  """(Gw)ᵢ = wᵢ^(−1/α), w > 0, on the independent and conflicting Jacobians of BATCH."""
  del x64
  regular = np.concatenate([BATCH[0::4], BATCH[1::4]])
  grams = np.einsum("bnp,bmp->bnm", regular, regular)
  solve = jax.jit(jax.vmap(lambda g: aggregation._fair_solve(g, jnp.ones(N_TASKS, g.dtype), 20, alpha)))
  for gram, weights in zip(grams, np.asarray(solve(jnp.asarray(grams)))):
    assert (weights > 0).all()
    assert _fair_residual(gram, weights, alpha) < 1e-9


def test_excess_mtl_follows_its_exponentiated_gradient_steps(x64):
  del x64
  first, second = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[2.0, 0.0], [1.0, 1.0]])
  (_, update), state = _run(losses.aggregation.excess_mtl(num_tasks=2), [first, second])
  sums = first ** 2 + second ** 2
  excess_0 = (first ** 2 / np.sqrt(first ** 2 + 1e-7)).sum(axis=1)
  weights = np.exp(np.log(0.5) + excess_0)
  weights /= weights.sum()
  excess_1 = (second ** 2 / np.sqrt(sums + 1e-7)).sum(axis=1) / (excess_0 + 1e-7)
  weights = weights * np.exp(excess_1)
  weights /= weights.sum()
  np.testing.assert_allclose(state.weights, weights, rtol=1e-12)
  np.testing.assert_allclose(update, weights @ second, rtol=1e-12)
  np.testing.assert_allclose(state.squared_grad_sum, sums, rtol=1e-12)


def test_pcd_solves_its_constrained_problem(x64):
  """With unit scales, d̃ = g₁ + Σⱼμⱼgⱼ: μ ≥ 0, gⱼ·d̃ ≥ τ‖gⱼ‖², complementary slackness; d is d̃ at ‖g₁‖."""
  del x64
  tau = 0.3
  grams = jnp.asarray(np.einsum("bnp,bmp->bnm", BATCH, BATCH))
  solve = jax.jit(jax.vmap(lambda g: aggregation._pcd_weights(g, jnp.ones(N_TASKS, g.dtype),
                                                              jnp.full(N_TASKS - 1, tau, g.dtype), 100)))
  for jacobian, weights in zip(BATCH, np.asarray(solve(grams))):
    multipliers = weights / weights[0]
    direction = multipliers @ jacobian
    scale = np.linalg.norm(jacobian, axis=1).max() ** 2
    slack = jacobian[1:] @ direction - tau * np.sum(jacobian[1:] ** 2, axis=1)
    assert (multipliers >= 0).all() and (slack >= -1e-9 * scale).all()
    assert (np.abs(multipliers[1:] * slack) <= 1e-9 * scale * (1 + multipliers[1:])).all()
    np.testing.assert_allclose(np.linalg.norm(weights @ jacobian), np.linalg.norm(jacobian[0]), rtol=1e-9)


def test_modo_and_sdmgrad_converge_to_the_minimum_norm_weights(x64):
  """On a fixed Gramian, MoDo's steps (ρ = 0) and SDMGrad's inner steps (λ = 0) are projected gradient on
  ½wᵀGw over the simplex: both reach MGDA's weights."""
  del x64
  jacobian = BATCH[1]  # Conflicting rows.
  target = np.asarray(aggregation._mgda_weights(jnp.asarray(jacobian @ jacobian.T), 100)) @ jacobian
  modo = losses.aggregation.modo(gamma=0.5 / np.linalg.norm(jacobian @ jacobian.T, 2), rho=0.0, num_tasks=N_TASKS)

  @jax.jit
  def run(state):
    return jax.lax.scan(lambda s, _: modo.update(jnp.asarray(jacobian), s)[::-1], state, None, length=3000)[1]

  np.testing.assert_allclose(run(modo.init(jnp.zeros(P)))[-1], target, atol=1e-6 * np.abs(jacobian).max())
  sdmgrad = losses.aggregation.sdmgrad(lr=0.5, momentum=0.0, n_iter=3000, lambda_=0.0, num_tasks=N_TASKS)
  update, _ = sdmgrad.update(jnp.asarray(jacobian), sdmgrad.init(jnp.zeros(P)))
  np.testing.assert_allclose(update, target, atol=1e-6 * np.abs(jacobian).max())


def test_cr_mogm_is_the_ema_of_the_wrapped_weights(x64):
  del x64
  first, second = BATCH[0], BATCH[1]
  mgda_weights = [np.asarray(aggregation._mgda_weights(jnp.asarray(j @ j.T), 100)) for j in (first, second)]
  updates, state = _run(losses.aggregation.cr_mogm("mgda", alpha=0.7, num_tasks=N_TASKS), [first, second])
  smoothed = 0.7 * mgda_weights[0] + 0.3 * mgda_weights[1]  # λ₁ = λ̂₁, then the EMA.
  np.testing.assert_allclose(updates[0], mgda_weights[0] @ first, rtol=1e-9)
  np.testing.assert_allclose(state.weights, smoothed, rtol=1e-9)
  np.testing.assert_allclose(updates[1], smoothed @ second, rtol=1e-9)
  with pytest.raises(ValueError, match="whose update is Jᵀw"):
    losses.aggregation.cr_mogm(losses.aggregation.graddrop(), num_tasks=2)


# ---------------------------------------------------------------------------------------------------------------
# From LibMTL beyond TorchJD: DB-MTL and MoCo. LibMTL's last release on PyPI (1.1.5) predates both, so the
# reference is their update rule as LibMTL's repository states it, written out below in float64 NumPy.


def _libmtl_db_mtl(jacobians, task_losses, beta, beta_sigma):
  buffer = np.zeros_like(jacobians[0])
  for t, (jacobian, values) in enumerate(zip(jacobians, task_losses), start=1):
    log_grads = jacobian / (values[:, None] + 1e-8)  # ∇ log(Lᵢ + 1e-8).
    buffer = log_grads + beta / t ** beta_sigma * (buffer - log_grads)
    norms = np.linalg.norm(buffer, axis=1)
    update = sum(norms.max() / (norms[i] + 1e-8) * buffer[i] for i in range(len(norms)))
  return update, buffer


def _libmtl_moco(jacobians, task_losses, beta, beta_sigma, gamma, gamma_sigma, rho):
  n = jacobians[0].shape[0]
  tracking, weights = np.zeros_like(jacobians[0]), np.full(n, 1.0 / n)
  for t, (jacobian, values) in enumerate(zip(jacobians, task_losses), start=1):
    rescaled = jacobian / (np.linalg.norm(jacobian, axis=1, keepdims=True) + 1e-8) * values[:, None]
    tracking = tracking - beta / t ** beta_sigma * (tracking - rescaled)
    logits = weights - gamma / t ** gamma_sigma * (tracking @ tracking.T + rho * np.eye(n)) @ weights
    weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  return tracking.T @ weights, weights, tracking


def _over_steps(aggregator, seed: int):
  """Three related (N, P) Jacobians (`_steps`) with falling task losses through `aggregator`, one update each:
  the Jacobians, the losses, the last update and the final state."""
  jacobians = _steps(N_TASKS, P, seed=seed)
  task_losses = [np.linspace(0.5, 3.0, N_TASKS) * (1.0 - 0.2 * step) for step in range(len(jacobians))]
  state = aggregator.init(jnp.zeros(P))
  for jacobian, values in zip(jacobians, task_losses):
    update, state = aggregator.update(jnp.asarray(jacobian), state, task_losses=jnp.asarray(values))
  return jacobians, task_losses, np.asarray(update), state


@pytest.mark.parametrize("options", [{}, {"beta": 0.5, "beta_sigma": 0.5}])
def test_db_mtl_follows_libmtl_update_rule_over_steps(options, x64):
  del x64
  jacobians, task_losses, update, state = _over_steps(losses.aggregation.db_mtl(num_tasks=N_TASKS, **options), 3)
  expected, buffer = _libmtl_db_mtl(jacobians, task_losses, options.get("beta", 0.9), options.get("beta_sigma", 0.0))
  np.testing.assert_allclose(update, expected, rtol=1e-12)
  np.testing.assert_allclose(state.buffer, buffer, rtol=1e-12)


def test_db_mtl_is_blind_to_the_scale_of_each_loss(x64):
  """Task i's loss times cᵢ scales its gradient by cᵢ too: the log-loss gradients, so the update, stay the same."""
  del x64
  jacobians, task_losses = _steps(N_TASKS, P, seed=5), np.linspace(0.5, 3.0, N_TASKS)
  scales = np.array([0.1, 1.0, 10.0, 1e3])
  plain, _ = _run(losses.aggregation.db_mtl(num_tasks=N_TASKS), jacobians, task_losses=jnp.asarray(task_losses))
  rescaled, _ = _run(losses.aggregation.db_mtl(num_tasks=N_TASKS), [scales[:, None] * j for j in jacobians],
                     task_losses=jnp.asarray(scales * task_losses))
  np.testing.assert_allclose(rescaled[-1], plain[-1], rtol=1e-6)  # To the 1e-8 added to each loss.


@pytest.mark.parametrize("options", [{}, {"beta": 0.9, "gamma": 0.5, "gamma_sigma": 0.0, "rho": 0.1}])
def test_moco_follows_libmtl_update_rule_over_steps(options, x64):
  del x64
  jacobians, task_losses, update, state = _over_steps(losses.aggregation.moco(num_tasks=N_TASKS, **options), 4)
  defaults = dict(beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0)
  expected, weights, tracking = _libmtl_moco(jacobians, task_losses, **{**defaults, **options})
  np.testing.assert_allclose(update, expected, rtol=1e-12)
  np.testing.assert_allclose(state.weights, weights, rtol=1e-12)
  np.testing.assert_allclose(state.tracking, tracking, rtol=1e-12)
  assert (weights > 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_moco_tracks_the_loss_scaled_unit_gradients(x64):
  """With the same Jacobian at every update, y converges to ĝᵢ = Lᵢgᵢ/‖gᵢ‖ (its step βₜ = β/√t sums to ∞)."""
  del x64
  jacobian, values = BATCH[1], np.linspace(1.0, 2.0, N_TASKS)
  aggregator = losses.aggregation.moco(num_tasks=N_TASKS)

  @jax.jit
  def run(state):
    step = lambda s, _: (aggregator.update(jnp.asarray(jacobian), s, task_losses=jnp.asarray(values))[1], None)
    return jax.lax.scan(step, state, None, length=2000)[0]

  state = run(aggregator.init(jnp.zeros(P)))
  target = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True) * values[:, None]
  np.testing.assert_allclose(state.tracking, target, atol=1e-6 * np.abs(target).max())
