"""Fitted Q Evaluation (Le, Voloshin & Yue 2019, "Batch Policy Learning under Constraints", Alg. 3).

Estimates the action-value function of a fixed target policy pi from off-policy transitions by
repeated regression onto a bootstrapped target computed with a slowly moving (Polyak) target network:

    y = r + gamma * (1 - terminated) * E_{a' ~ pi(.|s')} Qbar(s', a')
    L(theta) = E_{(s,a,r,s') ~ D} [ (Q_theta(s, a) - y)^2 ]            Qbar <- (1 - tau) Qbar + tau Q_theta

Discrete actions: the expectation is the exact sum ``sum_a' pi(a'|s') Qbar(s', a')``. Continuous actions:
the mean over ``target_action_samples`` samples ``a' ~ pi(.|s')`` in each regression target (default 1: an unbiased
target, so the regression has the same fixed point; measured on Hopper: a similar path to 10 samples at 2.3x less
cost per step) and over ``n_action_samples`` samples when the fitted critic is queried (``value``), clipped to the
action bounds (what the environment would execute). Truncated transitions bootstrap (only termination stops the
bootstrap), so FQE estimates the infinite-horizon value of pi, not the value of an episode cut at a time limit.

Implementation details:
    1. The Q-network reads observations through the target policy's ``obs_norm`` (shared, never updated).
    2. The target policy is only read (under ``torch.no_grad``); its parameters are not in the optimiser.
    3. The target network shares the normaliser and is built with the same architecture, then hard-copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from hybridrl.algos import gradient_step
from hybridrl.data.batches import Transitions
from hybridrl.errors import ConfigError
from hybridrl.losses import td_loss
from hybridrl.nn import Policy, QNet, policy_matches_spaces
from hybridrl.nn.critics import TargetNetwork


@dataclass(frozen=True)
class FQEConfig:
    """FQE hyperparameters.

    Attributes:
        lr: Adam learning rate of the Q-network (> 0).
        batch_size: transitions per gradient step (used by the loop / :func:`hybridrl.ope.fit_fqe`).
        hidden: hidden layer widths of the Q-network MLP.
        activation: "relu" or "tanh".
        gamma: discount in [0, 1].
        tau: Polyak rate of the target network in (0, 1] (1 = hard copy every step).
        n_action_samples: samples a ~ pi(.|s) averaged by :meth:`FQELearner.value` (V(s) = E_pi Q(s, .)) with
            continuous actions (>= 1).
        target_action_samples: samples a' ~ pi(.|s') averaged in each regression target (>= 1; continuous).
        max_grad_norm: global gradient-norm clip; None disables.
        clip_targets: clip each regression target to :func:`value_bounds` of the training rewards (set by
            :func:`fit`; gamma < 1). The fixed point of FQE's empirical Bellman operator lies in that box, so the
            projection keeps it (a projection onto a box is non-expansive: the operator stays a gamma-contraction)
            and only stops extrapolation to actions or states the data does not cover from pushing targets past
            values no policy can have (measured on CartPole: docs/algorithms/ope.md, detail 27).
    """

    lr: float = 3e-4
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    gamma: float = 0.99
    tau: float = 0.05  # measured: 0.005 needs 10x the steps for gamma = 0.99 (docs/algorithms/ope.md, detail 15)
    n_action_samples: int = 10
    target_action_samples: int = 1
    max_grad_norm: float | None = None
    clip_targets: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("lr", self.lr > 0, "> 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"), ("tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
            ("n_action_samples", self.n_action_samples >= 1, ">= 1"),
            ("target_action_samples", self.target_action_samples >= 1, ">= 1"),
            ("activation", self.activation in ("relu", "tanh"), "'relu' or 'tanh'"),
            ("max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0, "> 0 or None"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"FQEConfig.{name} = {getattr(self, name)!r}; expected {expected}")


class FQELearner:
    """FQE learner for a fixed target policy ``policy`` (required).

    ``update(Transitions) -> {"q_loss", "q_mean", "target_mean"}``; :meth:`q` and :meth:`value` query the
    fitted critic. ``self.policy`` is the evaluated policy (never modified).

    Raises:
        ConfigError: if ``policy`` is None or does not fit the spaces.
    """

    def __init__(self, config: FQEConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        if policy is None:
            raise ConfigError("FQELearner needs the target policy to evaluate: pass policy=<Policy>")
        reason = policy_matches_spaces(policy, observation_space, action_space)
        if reason is not None:
            raise ConfigError(f"FQELearner: the target policy does not fit the data spaces: {reason}")
        torch.manual_seed(seed)
        self.config, self.policy = config, policy
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        obs_dim = observation_space.shape[0]
        act_dim = int(action_space.n) if self.discrete else action_space.shape[0]
        args = (obs_dim, act_dim, self.discrete, config.hidden, config.activation)
        self.q_net = QNet(*args, obs_norm=policy.obs_norm)
        self.q_target = TargetNetwork(QNet(*args, obs_norm=policy.obs_norm), self.q_net)
        if not self.discrete:
            self._low = torch.as_tensor(action_space.low, dtype=torch.float32)
            self._high = torch.as_tensor(action_space.high, dtype=torch.float32)
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=config.lr)
        self.target_bounds: tuple[float, float] | None = None  # (low, high) clip of y; set by fit()

    @torch.no_grad()
    def _expected_q(self, net: QNet, obs: torch.Tensor, n: int) -> torch.Tensor:
        """``E_{a ~ pi(.|s)} net(s, a)`` for ``obs [B, obs_dim]`` -> ``[B]`` float32 (continuous: mean of ``n``
        samples)."""
        if self.discrete:
            q_all = net.all_actions(obs)
            return (self.policy.distribution(obs).probs.to(q_all.dtype) * q_all).sum(-1)
        actions = self.policy.distribution(obs).sample((n,))  # [n, B, act_dim]
        actions = torch.maximum(torch.minimum(actions.float(), self._high), self._low)
        return net(obs.expand(n, *obs.shape), actions).mean(0)  # Q: [n, B] -> [B]

    def update(self, batch: Transitions) -> dict[str, float]:
        """One regression step of Q(s, a) towards y = r + gamma (1 - terminated) E_pi Qbar(s', .), then
        ``Qbar <- (1 - tau) Qbar + tau Q``; y is clipped to ``target_bounds`` when set.

        Args:
            batch: ``B`` logged transitions: ``obs``/``next_obs [B, obs_dim]``, ``action [B, |A|]`` float32
                (continuous) or int64 ``[B]`` (discrete), ``reward [B]``, ``terminated [B]`` bool (truncated steps
                bootstrap).
        Returns:
            ``q_loss`` (mean squared TD error), ``q_mean`` (mean Q(s, a)) and ``target_mean`` (mean y).
        Source: Le, Voloshin & Yue (2019) arXiv:1903.08738, Algorithm 3 (FQE).
        """
        cfg = self.config
        with torch.no_grad():
            v_next = self._expected_q(self.q_target.net, batch.next_obs, self.config.target_action_samples)
            target = batch.reward + cfg.gamma * (~batch.terminated).float() * v_next
            if self.target_bounds is not None:
                target = target.clamp(*self.target_bounds)
        loss, metrics = td_loss(self.q_net(batch.obs, batch.action), target)
        gradient_step(self.optimizer, loss, cfg.max_grad_norm)
        self.q_target.update(cfg.tau)
        metrics["target_mean"] = float(target.mean())
        return metrics

    @torch.no_grad()
    def q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Fitted ``Q(s, a)`` for raw ``obs [B, obs_dim]`` and ``action [B, *act_shape]`` -> ``[B]`` float32."""
        return self.q_net(torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(action))

    @torch.no_grad()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``V(s) = E_{a ~ pi(.|s)} Q(s, a)`` for raw ``obs [B, obs_dim]`` -> ``[B]`` (continuous: sample mean)."""
        return self._expected_q(self.q_net, torch.as_tensor(obs, dtype=torch.float32), self.config.n_action_samples)

    def state_dict(self) -> dict:
        return {"q": self.q_net.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.q_net.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])



# ----------------------------------------------------------------------------------------- fitting with a stop rule
def value_bounds(rewards: np.ndarray, gamma: float) -> tuple[float, float] | None:
    """Values any policy can have when every reward lies in ``[r_min, r_max]``:
    ``[min(r_min, 0), max(r_max, 0)] / (1 - gamma)`` (None for gamma = 1 or no rewards). ``rewards``: ``[N]``."""
    r = np.asarray(rewards, dtype=np.float64)
    if gamma >= 1.0 or r.size == 0:
        return None
    return min(float(r.min()), 0.0) / (1.0 - gamma), max(float(r.max()), 0.0) / (1.0 - gamma)


def training_bounds(dataset, rows: np.ndarray, config: FQEConfig) -> tuple[float, float] | None:
    """The target clip of a fit on ``rows`` of ``dataset`` (:func:`value_bounds`), or None when ``clip_targets``
    is off."""
    return value_bounds(np.asarray(dataset.rewards)[rows], config.gamma) if config.clip_targets else None


def default_max_steps(gamma: float, tau: float) -> int:
    """Step budget that fits the discount horizon: ``ceil(5 / ((1 - gamma) tau))`` clipped to [2,000, 200,000].

    With a Polyak target, one Bellman backup takes about 1/tau steps and the error contracts by gamma per backup, so
    reaching e^-5 (0.7%) of the initial error takes about 5 / ((1 - gamma) tau) steps: 10,000 at gamma 0.99 and the
    default tau 0.05 (100,000 at tau 0.005). The early stop usually ends the fit sooner.
    """
    if gamma >= 1.0:
        return 200_000
    return int(min(200_000, max(2_000, np.ceil(5.0 / ((1.0 - gamma) * tau) - 1e-6))))


@dataclass
class FQEFitReport:
    """What :func:`fit` saw. ``history`` rows: ``(step, v0_mean, heldout_bellman_mse, train_q_loss)``.

    Attributes:
        converged: the stop rule held (see :func:`fit`); False means the budget ran out first.
        steps, max_steps: gradient steps taken / allowed.
        remaining_error: the last extrapolated distance of mean Vhat(s_0) from its limit, in reward units.
        v0_mean: mean Vhat(s_0) over the dataset's initial states at the end.
        heldout_bellman_mse: last mean squared Bellman residual ``(Q(s,a) - r - gamma (1-d) V(s'))^2`` on held-out
            episodes (noise-inclusive: it does not reach 0), and ``heldout_bellman_min`` its minimum over checks.
        heldout_episodes: episodes kept out of the regression (0: the check used training data).
        warnings: human-readable warnings (not converged, held-out error rising).
    """

    converged: bool
    steps: int
    max_steps: int
    remaining_error: float
    v0_mean: float
    heldout_bellman_mse: float
    heldout_bellman_min: float
    heldout_episodes: int
    history: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def diagnostics(self) -> dict[str, float]:
        return {"fqe_converged": float(self.converged), "fqe_steps": float(self.steps),
                "fqe_max_steps": float(self.max_steps), "fqe_remaining_error": float(self.remaining_error),
                "fqe_heldout_bellman_mse": float(self.heldout_bellman_mse)}


def fit(dataset, policy: Policy, config: FQEConfig, max_steps: int | None = None, seed: int = 0, tol: float = 0.02,
        check_every: int | None = None, heldout_fraction: float = 0.1, min_steps: int | None = None,
        on_check=None) -> tuple[FQELearner, FQEFitReport]:
    """Fit FQE on ``dataset`` with a held-out Bellman-error check and an early stop.

    Episodes are split at random (``heldout_fraction``, at least one when there are two or more) into a training part,
    whose transitions are sampled uniformly in batches of ``config.batch_size``, and a held-out part. Every
    ``check_every`` steps (default ``max(200, round(0.5 / tau))``) the fit records mean Vhat(s_0) over all initial
    states and the held-out mean squared Bellman residual. Stop rule: with a Polyak target the value approaches its
    limit roughly geometrically at rate ``rho = exp(-(1 - gamma) tau)`` per step, so a change D over K steps leaves
    about ``|D| rho^K / (1 - rho^K)`` to go; the fit stops (converged) when that extrapolated remaining error is below
    ``tol * max(|Vhat|, 1)`` at two consecutive checks after ``min_steps`` (default 2 checks). This extrapolation is a
    heuristic: a fit that is still far from its limit but moving slowly can pass it; ``history`` shows the path.

    Args:
        dataset: :class:`hybridrl.data.dataset.Dataset`.
        policy: the evaluated policy.
        config: hyperparameters (``gamma`` included).
        max_steps: budget; default :func:`default_max_steps` (``gamma``, ``tau``).
        seed: network init, split and batch sampling.
        on_check: optional ``callable(step, max_steps, report_row)`` (progress display).
    Returns: ``(learner, FQEFitReport)``; ``report.warnings`` says "did not converge" when the budget ran out.
    Raises: ConfigError (bad arguments), DivergenceError when the TD loss becomes NaN or inf.
    """
    from hybridrl.errors import DivergenceError

    max_steps, check_every, min_steps = fit_schedule(config, max_steps, tol, check_every, heldout_fraction,
                                                     min_steps, "fqe.fit")
    learner = FQELearner(config, dataset.observation_space, dataset.action_space, seed=seed, policy=policy)
    rng = np.random.default_rng(seed)
    train_rows, held, s0, n_held = split_episodes(dataset, rng, heldout_fraction)
    learner.target_bounds = training_bounds(dataset, train_rows, config)
    rho = float(np.exp(-(1.0 - config.gamma) * config.tau))
    history, passes, remaining, converged, step, q_loss = [], 0, float("inf"), False, 0, float("nan")
    for step in range(1, max_steps + 1):
        batch = dataset.transitions(train_rows[rng.integers(0, len(train_rows), size=config.batch_size)])
        q_loss = learner.update(batch)["q_loss"]
        if not np.isfinite(q_loss):
            raise DivergenceError(f"fit_fqe: TD loss became {q_loss} at step {step}; lower the learning rate or "
                                  "check the rewards")
        if step % check_every and step != max_steps:
            continue
        v0, bellman = check_values(learner, s0, held)
        if history:
            remaining, passes = stop_check(history[-1], step, v0, rho, tol, passes)
        history.append((step, v0, bellman, float(q_loss)))
        if on_check is not None:
            on_check(step, max_steps, history[-1])
        if passes >= 2 and step >= min_steps:
            converged = True
            break
    return learner, fit_report(converged, step if max_steps else 0, max_steps, remaining, history, n_held,
                               check_every, config, tol)


def stop_check(last: tuple, step: int, v0: float, rho: float, tol: float, passes: int) -> tuple[float, int]:
    """:func:`fit`'s stop rule at one check: ``(remaining, passes)`` from the previous check ``last = (step, v0,
    ...)``: the extrapolated remaining change ``|dV| rho^k / (1 - rho^k)`` over the ``k`` steps since, and the count of
    consecutive checks with it below ``tol * max(|v0|, 1)`` (reset to 0 otherwise)."""
    k = step - last[0]
    remaining = abs(v0 - last[1]) * rho**k / max(1.0 - rho**k, 1e-12)
    return remaining, passes + 1 if remaining < tol * max(abs(v0), 1.0) else 0


def fit_schedule(config: FQEConfig, max_steps: int | None, tol: float, check_every: int | None,
                 heldout_fraction: float, min_steps: int | None, where: str) -> tuple[int, int, int]:
    """``(max_steps, check_every, min_steps)`` of a fit with :func:`fit`'s defaults; ConfigError names ``where``."""
    max_steps = default_max_steps(config.gamma, config.tau) if max_steps is None else int(max_steps)
    if max_steps < 0 or not 0.0 <= heldout_fraction < 1.0 or not tol > 0:
        raise ConfigError(f"{where}: need max_steps >= 0, 0 <= heldout_fraction < 1, tol > 0; got {max_steps}, "
                          f"{heldout_fraction}, {tol}")
    check_every = int(check_every or max(200, round(0.5 / config.tau)))
    return max_steps, check_every, 2 * check_every if min_steps is None else int(min_steps)


def split_episodes(dataset, rng: np.random.Generator, heldout_fraction: float):
    """:func:`fit`'s split: ``(train_rows [M] int, held-out Transitions (<= 20,000 rows), s0 [E, obs_dim], n_held)``.

    Episodes are permuted with ``rng`` (one ``permutation`` call); with fewer than two episodes, or
    ``heldout_fraction`` 0, the check uses the first 20,000 training rows.
    """
    starts = np.asarray(dataset.episode_starts)
    n_ep = len(starts) - 1
    n_held = int(round(heldout_fraction * n_ep)) if n_ep >= 2 else 0
    n_held = min(max(n_held, 1 if (heldout_fraction > 0 and n_ep >= 2) else 0), n_ep - 1) if n_ep >= 2 else 0
    perm = rng.permutation(n_ep)
    held_ep, train_ep = np.sort(perm[:n_held]), np.sort(perm[n_held:])

    def rows(eps):
        return np.concatenate([np.arange(starts[e], starts[e + 1]) for e in eps]) if len(eps) else np.zeros(0, int)

    train_rows = rows(train_ep)
    held_rows = rows(held_ep)[:20_000] if n_held else train_rows[:20_000]
    s0 = torch.as_tensor(np.asarray(dataset.observations, dtype=np.float32)[starts[:-1]])
    return train_rows, dataset.transitions(held_rows), s0, n_held


@torch.no_grad()
def check_values(learner: FQELearner, s0: torch.Tensor, held: Transitions) -> tuple[float, float]:
    """``(mean Vhat(s_0), held-out mean squared Bellman residual)`` of a learner (:func:`fit`'s check)."""
    gamma = learner.config.gamma
    v0 = float(learner.value(s0).mean())
    y = held.reward + gamma * (~held.terminated).float() * learner.value(held.next_obs)
    return v0, float(((learner.q(held.obs, held.action) - y) ** 2).mean())


def fit_report(converged: bool, steps: int, max_steps: int, remaining: float, history: list, n_held: int,
               check_every: int, config: FQEConfig, tol: float) -> FQEFitReport:
    """The :class:`FQEFitReport` of a fit that ran ``steps`` steps, with its warnings (shared by the batched fit)."""
    last = history[-1] if history else (0, float("nan"), float("nan"), float("nan"))
    b_min = min((h[2] for h in history), default=float("nan"))
    report = FQEFitReport(converged, steps, max_steps, remaining, last[1], last[2], b_min,
                          n_held, history)
    if not converged and len(history) < 2:
        report.warnings.append(f"FQE did not converge: {report.steps} steps are too few for the convergence check "
                               f"(every {check_every} steps); the DM/DR values are unreliable; the default budget "
                               f"for gamma {config.gamma}, tau {config.tau} is "
                               f"{default_max_steps(config.gamma, config.tau)}")
    elif not converged:
        report.warnings.append(
            f"FQE did not converge in {report.steps} steps (extrapolated remaining change of Vhat(s0) "
            f"{remaining:.3g} vs tolerance {tol * max(abs(last[1]), 1.0):.3g}): the DM/DR values are unreliable; "
            f"raise the step budget (default for gamma {config.gamma}, tau {config.tau}: "
            f"{default_max_steps(config.gamma, config.tau)})")
    if history and np.isfinite(b_min) and last[2] > 1.5 * b_min + 1e-12:
        report.warnings.append(f"FQE held-out Bellman error rose from its minimum {b_min:.3g} to {last[2]:.3g} "
                               "(over-fitting or instability)")
    return report


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("fqe", FQEConfig, FQELearner, loop="ope", inputs="dataset+policy",
         summary="fitted Q evaluation of a fixed policy (Le et al. 2019), used by `hybridrl ope`",
         tiny=dict(hidden=(32, 32)))
