"""Marginal importance weights and minimax Q-functions: DualDICE, MWL and MQL on a logged dataset.

All three learn from logged steps ``(s, a, r, s', d)`` drawn uniformly (the distribution ``d^D``) and initial states
``s_0`` of the dataset's episodes, with ``f(s', pi) = E_{a'~pi(.|s')} f(s', a')`` (exact sum for discrete actions, one
sampled action clipped to the action box for continuous ones, as FQE does) and ``d`` the termination flag
(truncation bootstraps):

    DualDICE  (Nachum, Chow, Dai & Li 2019, Sec. 3, f(x) = x^2/2 with the Fenchel-conjugate variable zeta):
        min_nu max_zeta  E_D[(nu(s,a) - gamma (1-d) nu(s',pi)) zeta(s,a) - zeta(s,a)^2 / 2]
                         - (1-gamma) E_{s0}[nu(s0,pi)]
        at the saddle point zeta(s, a) = d^pi_gamma(s, a) / d^D(s, a)
    MWL       (Uehara, Huang & Jiang 2020, Sec. 4, RKHS discriminator, their Lemma on the closed-form max):
        L_w(w, f) = E_D[w(s,a) (gamma (1-d) f(s',pi) - f(s,a))] + (1-gamma) E_{s0}[f(s0,pi)]
        min_w max_{||f||_H <= 1} L_w(w, f)^2 = min_w  c^T K c / (B (B-1))   (c, K: below; same-sample pairs dropped)
    MWL, state marginal (``mwl_state``; Liu, Li, Tang & Zhou 2018, "Breaking the Curse of Horizon", Thm. 4 with the
        RKHS closed form of their Sec. 4; Uehara et al. 2020 Sec. 4 restricted to f(s)): with the per-step ratio
        beta = pi(a|s) / pi_0(a|s) of the logged action (needs behaviour probabilities, logged or estimated),
        L_rho(rho, f) = E_D[rho(s) (gamma (1-d) beta(s,a) f(s') - f(s))] + (1-gamma) E_{s0}[f(s0)]
        is 0 for every f(s) at rho(s) = d^pi_gamma(s) / d^D(s); the step weights are rho(s_t) beta_t
        (= w(s_t, a_t) when the data's actions follow pi_0), used by SM-IS/SM-DR.
    MQL       (Uehara et al. 2020, Sec. 5, RKHS discriminator over weights):
        L_q(w, q) = E_D[w(s,a) (r + gamma (1-d) q(s',pi) - q(s,a))]
        min_q max_{||w||_H <= 1} L_q(w, q)^2 = min_q  e^T K_D e / (B (B-1)),
        e_i = r_i + gamma (1-d_i) q(s'_i,pi) - q(s_i,a_i)
        J = E_{s0}[q(s0, pi)]

For MWL (and ``mwl_state``, with state-only kernel points and ``gamma (1-d_i) beta_i rho_i`` as the middle
coefficient) a batch of B steps gives 3B kernel points with coefficients ``c``: ``(s_i, a_i)`` with ``-w_i``,
``(s'_i, pi)`` with ``gamma (1-d_i) w_i`` and ``(s0_j, pi)`` with ``1 - gamma``. The kernel is Gaussian,
``k = exp(-||x - x'||^2 / (2 h^2))``, on normalised observations; for discrete actions it is multiplied by the inner
product of the action distributions (a logged action is one-hot, ``pi`` is ``pi(.|s)``), the exact RKHS embedding of
``f(s, pi)``; for continuous actions ``x`` is the observation concatenated with the action. The quadratic forms
are U-statistics: pairs built from the same sampled step are left out. (SCOPE-RL keeps them, a V-statistic;
its diagonal adds ``||g_i||^2 / B`` to the loss, which pulls the weights towards 0 and biased MWL's value down by
20% on the chain MDP in our test.) With one-hot observations and a small bandwidth the
kernel is the tabular one.

Function classes: MLPs (``hidden``), or with ``hidden = ()`` linear in the normalised observation (tabular for
one-hot observations), with an output per action for discrete actions; MWL's weight is ``softplus`` of the output,
DualDICE's ``zeta`` is clipped at 0 when used as a weight. Weights are self-normalised
(:func:`hybridrl.ope.marginal.normalise_weights`) and the scale factor is reported.

Convergence: at ``checks`` evenly spaced steps the fit computes its value estimate on the whole dataset (MIS for
DualDICE/MWL, ``E_{s0} q(s0, pi)`` for MQL); the fit is ``converged`` when the last two changes are below
``tol * max(|J|, 0.01 r_max / (1 - gamma))``. Otherwise results say so in words. Learning rates decay linearly to
10% over the budget (Adam), so a converged fit settles instead of fluctuating at a constant step size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hybridrl.data.dataset import Dataset
from hybridrl.errors import ConfigError, DivergenceError, ShapeError
from hybridrl.nn import Policy, mlp
from hybridrl.ope.marginal import normalise_weights
from hybridrl.runs.progress import progress_bar

__all__ = ["METHODS", "WeightConfig", "WeightFit", "fit_weights"]

METHODS = ("dualdice", "mwl", "mql", "mwl_state")


@dataclass(frozen=True)
class WeightConfig:
    """Settings of :func:`fit_weights` (module docstring).

    Attributes: ``hidden`` (MLP widths; ``()`` = linear in the observation), ``activation``, ``lr`` (Adam),
    ``batch_size``, ``steps`` (gradient steps, a fixed budget), ``bandwidth`` (Gaussian kernel h of MWL/MQL, in
    units of the normalised observation), ``normalize_obs`` (dataset mean/std), ``checks`` and ``tol`` (convergence),
    ``nu_lr_ratio`` (DualDICE's nu learns at ``lr * nu_lr_ratio``).
    """

    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    lr: float = 1e-3
    batch_size: int = 256
    steps: int = 2000
    bandwidth: float = 1.0
    normalize_obs: bool = True
    checks: int = 10
    tol: float = 0.03
    nu_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        for name in ("lr", "bandwidth", "tol", "nu_lr_ratio"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"WeightConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("batch_size", "steps", "checks"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"WeightConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class WeightFit:
    """A fitted DualDICE/MWL weight or MQL Q-function, evaluated on the dataset it was fitted on.

    Attributes:
        method: "dualdice", "mwl", "mql" or "mwl_state".
        weights: ``[N]`` self-normalised w(s_t, a_t) of the logged steps (``mwl_state``: rho(s_t) beta_t; None for
            MQL).
        normaliser: the self-normalisation factor (about 1 when the raw weights satisfied the moment; NaN for MQL).
        q, v_next, v0: MQL only: ``q [N]`` = q(s_t, a_t), ``v_next [N]`` = (1 - d_t) q(s_{t+1}, pi), ``v0 [E]``.
        converged: the value estimate settled (module docstring); ``history`` holds ``(step, value)``.
        steps: gradient steps taken.
    """

    method: str
    weights: np.ndarray | None
    normaliser: float
    converged: bool
    history: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    q: np.ndarray | None = None
    v_next: np.ndarray | None = None
    v0: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        """Converged and (weights) the self-normaliser within [0.5, 2]: the raw weights nearly satisfied the moment."""
        return self.converged and (self.weights is None or 0.5 <= self.normaliser <= 2.0)

    def diagnostics(self) -> dict[str, float]:
        d = {"weights_converged": float(self.converged), "weights_ok": float(self.ok),
             "weights_steps": float(self.steps)}
        if self.weights is not None:
            d["weight_normaliser"] = float(self.normaliser)
        return d

    def notes(self) -> list[str]:
        name = {"dualdice": "DualDICE", "mwl": "MWL", "mql": "MQL", "mwl_state": "state-marginal MWL"}[self.method]
        out = []
        if not self.converged:
            last = [v for _, v in self.history[-3:]]
            out.append(f"warning: the {name} fit did not converge in {self.steps} steps (its value estimate moved "
                       f"{', '.join(f'{v:.4g}' for v in last)} over the last checks); do not trust this estimate")
        if self.weights is not None and not 0.5 <= self.normaliser <= 2.0:
            out.append(f"warning: the {name} weights were rescaled by {self.normaliser:.3g} to satisfy "
                       "E[w (1 - gamma (1 - d))] = 1 - gamma (about 1 expected): they are off; do not trust this "
                       "estimate")
        return out


class _Fn(nn.Module):
    """f(s, a): discrete -> one output per action; continuous -> input [s, a]. ``positive``: softplus output."""

    def __init__(self, obs_dim: int, act_dim: int, discrete: bool, cfg: WeightConfig, positive: bool,
                 scale: float = 1.0):
        super().__init__()
        self.discrete, self.positive, self.scale = discrete, positive, float(scale)
        self.net = mlp(obs_dim + (0 if discrete else act_dim), act_dim if discrete else 1, cfg.hidden,
                       cfg.activation, out_gain=0.1 if cfg.hidden else 1.0)
        if not cfg.hidden:  # linear: start at 0 (weight 1 after softplus-shift, value 0)
            nn.init.zeros_(self.net[-1].weight)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return nn.functional.softplus(y + math.log(math.e - 1)) if self.positive else y * self.scale

    def s(self, obs: torch.Tensor) -> torch.Tensor:
        """``f(s)`` of a state-only function (built with ``act_dim=0``, ``discrete=False``)."""
        return self._out(obs).squeeze(1)

    def sa(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return self._out(obs).gather(1, act.long().view(-1, 1)).squeeze(1)
        return self._out(torch.cat([obs, act], 1)).squeeze(1)

    def s_pi(self, obs: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """``f(s, pi)``: ``pi`` is ``[B, A]`` probabilities (discrete) or ``[B, act_dim]`` sampled actions."""
        if self.discrete:
            return (self._out(obs) * pi).sum(1)
        return self.sa(obs, pi)


def _kernel(x: torch.Tensor, p: torch.Tensor | None, h: float) -> torch.Tensor:
    """Gaussian kernel matrix of rows ``x [M, k]``, times ``p p^T`` (action distributions) when given."""
    sq = (x * x).sum(1)
    k = torch.exp(-(sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0) / (2 * h * h))
    return k if p is None else k * (p @ p.T)


class _Data:
    """Tensors of the dataset: normalised obs, actions (one-hot for discrete), pi at s' and s0."""

    def __init__(self, dataset: Dataset, policy: Policy, cfg: WeightConfig):
        mean, var = dataset.obs_stats()
        if not cfg.normalize_obs:
            mean, var = np.zeros_like(mean), np.ones_like(var)

        def norm(x):
            return torch.as_tensor(((x - mean) / np.sqrt(var + 1e-8)).astype(np.float32))

        self.policy = policy
        self.discrete = bool(getattr(policy, "discrete", False))
        starts = np.asarray(dataset.episode_starts)
        self.raw_next = torch.as_tensor(np.asarray(dataset.next_observations, np.float32))
        self.raw_s0 = torch.as_tensor(np.asarray(dataset.observations, np.float32)[starts[:-1]])
        self.obs, self.next_obs = norm(dataset.observations), norm(dataset.next_observations)
        self.s0 = norm(np.asarray(dataset.observations)[starts[:-1]])
        self.r = torch.as_tensor(np.asarray(dataset.rewards, np.float32))
        self.d = torch.as_tensor(np.asarray(dataset.terminations, np.float32))
        if self.discrete:
            self.n_act = int(dataset.action_space.n)
            self.act = torch.as_tensor(np.asarray(dataset.actions, np.int64))
            self.act_repr = nn.functional.one_hot(self.act, self.n_act).float()
            with torch.no_grad():
                self.pi_next = policy.distribution(self.raw_next).probs.float()
                self.pi_s0 = policy.distribution(self.raw_s0).probs.float()
        else:
            self.n_act = int(np.prod(dataset.action_space.shape))
            self.act = torch.as_tensor(np.asarray(dataset.actions, np.float32)).view(len(dataset), -1)
            self.act_repr = self.act
            self.low = torch.as_tensor(np.asarray(dataset.action_space.low, np.float32).reshape(-1))
            self.high = torch.as_tensor(np.asarray(dataset.action_space.high, np.float32).reshape(-1))

    @torch.no_grad()
    def pi(self, which: str, idx: torch.Tensor) -> torch.Tensor:
        """pi at s' (``which="next"``) or s0 for rows ``idx``: probabilities, or one sampled action each."""
        if self.discrete:
            return (self.pi_next if which == "next" else self.pi_s0)[idx]
        raw = (self.raw_next if which == "next" else self.raw_s0)[idx]
        a = self.policy.sample(raw)[0].float().view(len(idx), -1)
        return torch.maximum(torch.minimum(a, self.high), self.low)  # what the env executes (as FQE does)


def _points(data: _Data, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (x, a) if data.discrete else (torch.cat([x, a], 1), None)


def fit_weights(dataset: Dataset, policy: Policy, gamma: float, method: str = "mwl",
                config: WeightConfig | None = None, seed: int = 0, progress: bool = False,
                log_ratio: np.ndarray | None = None) -> WeightFit:
    """Fit DualDICE, MWL or state-marginal MWL weights, or an MQL Q-function, of ``policy`` on ``dataset`` (module
    docstring).

    Args: ``dataset`` (logged steps and episodes), ``policy`` (target pi, only read), ``gamma`` in [0, 1),
    ``method`` in :data:`METHODS`, ``config`` (:class:`WeightConfig`), ``seed``, ``progress`` (bar on stderr),
    ``log_ratio`` (``[N]`` log pi(a_t|s_t) - log pi_0(a_t|s_t) of the logged steps; ``mwl_state`` only).
    Returns: :class:`WeightFit` evaluated on all N logged steps.
    Raises: ConfigError (method, gamma, ``log_ratio`` missing for ``mwl_state``), ShapeError (``log_ratio`` not
    ``[N]`` or not finite), DivergenceError (a non-finite loss).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown weight-learning method {method!r}; expected one of {list(METHODS)}")
    if not 0.0 <= gamma < 1.0:
        raise ConfigError(f"marginal weights need gamma in [0, 1), got {gamma}")
    cfg = config or WeightConfig()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = _Data(dataset, policy, cfg)
    g, h, bsz = float(gamma), float(cfg.bandwidth), int(cfg.batch_size)
    obs_dim, n, e = data.obs.shape[1], len(data.r), len(data.s0)
    beta = None
    if method == "mwl_state":
        if log_ratio is None:
            raise ConfigError("mwl_state (state-marginal weights) needs log_ratio = log pi(a|s) - log pi_0(a|s) of "
                              "the logged steps (behaviour probabilities, logged or estimated)")
        lr_arr = np.asarray(log_ratio, dtype=np.float64)
        if lr_arr.shape != (n,) or not np.isfinite(lr_arr).all():
            raise ShapeError(f"mwl_state: log_ratio must be a finite [N] = ({n},) array; got shape {lr_arr.shape}")
        beta = torch.as_tensor(np.exp(np.minimum(lr_arr, 50.0)), dtype=torch.float32)
    # MQL's q is O(r_max / (1 - gamma)): its output is scaled by that, so the network works at O(1) (Adam moves
    # parameters by ~lr per step whatever the gradient's scale). DualDICE's nu is left unscaled: scaling it by
    # 1/(1 - gamma) made the minimax oscillate on the chain MDP (MIS 0.33 vs 0.51).
    q_scale = max(float(data.r.abs().max()), 1e-8) / (1.0 - g)
    if beta is None:
        main = _Fn(obs_dim, data.n_act, data.discrete, cfg, positive=method == "mwl",
                   scale=q_scale if method == "mql" else 1.0)
    else:  # rho(s): a positive function of the state alone
        main = _Fn(obs_dim, 0, False, cfg, positive=True)
    nets = [main]
    if method == "dualdice":
        nets.append(_Fn(obs_dim, data.n_act, data.discrete, cfg, positive=False))  # nu (unscaled: see below)
    # DualDICE: two timescales, nu 10x slower than zeta (Nachum et al. 2019 use 1e-4 / 1e-3); one rate is unstable
    opts = [torch.optim.Adam(m.parameters(), lr=cfg.lr * (1.0 if k == 0 else cfg.nu_lr_ratio))
            for k, m in enumerate(nets)]
    # learning rates decay linearly to 10% over the budget, so that a fit that has converged stops moving
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0 - 0.9 * k / cfg.steps) for o in opts]
    off = 1.0 - torch.eye(bsz)  # U-statistics: pairs of different samples only
    off3 = off.repeat(3, 3)
    r_scale = 0.01 * max(float(data.r.abs().max()), 1e-8) / (1.0 - g)
    mask = np.ones((1, n), bool)

    @torch.no_grad()
    def evaluate() -> tuple[float, np.ndarray | None]:
        if method == "mql":
            return float(main.s_pi(data.s0, data.pi("s0", torch.arange(e))).mean()), None
        raw = (main.sa(data.obs, data.act) if beta is None else main.s(data.obs)).double().numpy()
        w = np.clip(raw, 0.0, None)[None] * (1.0 if beta is None else beta.double().numpy())
        if not np.isfinite(w).all() or not w.any():
            return float("nan"), w[0]
        w, _ = normalise_weights(w, mask, g, data.d.numpy()[None])
        return float((w[0] * data.r.double().numpy()).mean() / (1.0 - g)), raw

    history: list[tuple[int, float]] = []
    every = max(1, cfg.steps // cfg.checks)
    with progress_bar(progress) as bar:
        task = bar.add_task(method, total=cfg.steps, info="")
        for step in range(1, cfg.steps + 1):
            i = torch.randint(0, n, (bsz,), generator=gen)
            j = torch.randint(0, e, (bsz,), generator=gen)
            pi_next, pi0 = data.pi("next", i), data.pi("s0", j)
            cont = g * (1.0 - data.d[i])
            if method == "mwl":
                w = main.sa(data.obs[i], data.act[i])
                x = torch.cat([data.obs[i], data.next_obs[i], data.s0[j]])
                a = torch.cat([data.act_repr[i], pi_next, pi0])
                c = torch.cat([-w, cont * w, torch.full((bsz,), 1.0 - g)])
                losses = [c @ (_kernel(*_points(data, x, a), h) * off3) @ c / (bsz * (bsz - 1))]
            elif method == "mwl_state":
                rho = main.s(data.obs[i])
                x = torch.cat([data.obs[i], data.next_obs[i], data.s0[j]])
                c = torch.cat([-rho, cont * beta[i] * rho, torch.full((bsz,), 1.0 - g)])
                losses = [c @ (_kernel(x, None, h) * off3) @ c / (bsz * (bsz - 1))]
            elif method == "mql":
                err = data.r[i] + cont * main.s_pi(data.next_obs[i], pi_next) - main.sa(data.obs[i], data.act[i])
                with torch.no_grad():
                    k = _kernel(*_points(data, data.obs[i], data.act_repr[i]), h)
                losses = [err @ (k * off) @ err / (bsz * (bsz - 1))]
            else:
                zeta_net, nu = nets
                zeta = zeta_net.sa(data.obs[i], data.act[i])
                resid = nu.sa(data.obs[i], data.act[i]) - cont * nu.s_pi(data.next_obs[i], pi_next)
                obj = (resid * zeta - 0.5 * zeta ** 2).mean() - (1.0 - g) * nu.s_pi(data.s0[j], pi0).mean()
                losses = [-obj, obj]  # zeta ascends, nu descends
            if not all(torch.isfinite(lo) for lo in losses):
                raise DivergenceError(f"{method}: the loss became non-finite at step {step}; lower lr or raise the "
                                      "kernel bandwidth")
            for opt in opts:
                opt.zero_grad()
            if method == "dualdice":
                gz = torch.autograd.grad(losses[0], list(nets[0].parameters()), retain_graph=True)
                gn = torch.autograd.grad(losses[1], list(nets[1].parameters()))
                for p, gr in zip([*nets[0].parameters(), *nets[1].parameters()], [*gz, *gn]):
                    p.grad = gr
            else:
                losses[0].backward()
            for opt, sched in zip(opts, scheds):
                opt.step()
                sched.step()
            if step % every == 0 or step == cfg.steps:
                history.append((step, evaluate()[0]))
                bar.update(task, completed=step, info=f"value {history[-1][1]:.4g}")
    vals = [v for _, v in history]
    converged = len(vals) >= 3 and all(np.isfinite(vals[-3:])) and all(
        abs(vals[k] - vals[k - 1]) <= cfg.tol * max(abs(vals[-1]), r_scale) for k in (-1, -2))
    if method == "mql":
        with torch.no_grad():
            q = main.sa(data.obs, data.act).double().numpy()
            v_next = ((1.0 - data.d) * main.s_pi(data.next_obs, data.pi("next", torch.arange(n)))).double().numpy()
            v0 = main.s_pi(data.s0, data.pi("s0", torch.arange(e))).double().numpy()
        return WeightFit(method, None, float("nan"), converged, history, cfg.steps, q, v_next, v0)
    raw = evaluate()[1]
    w = np.clip(raw, 0.0, None) * (1.0 if beta is None else beta.double().numpy())
    if not np.isfinite(w).all() or not w.any():
        return WeightFit(method, np.zeros(n), float("nan"), False, history, cfg.steps)
    w, c = normalise_weights(w[None], mask, g, data.d.numpy()[None])
    return WeightFit(method, w[0], c, converged, history, cfg.steps)
