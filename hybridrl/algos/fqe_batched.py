"""Fitted Q Evaluation of K candidate policies trained together (batched over candidates).

Each candidate k keeps its own Q-network Q_k, Polyak target Qbar_k and FQE regression (Le, Voloshin & Yue 2019,
Alg. 3; :mod:`hybridrl.algos.fqe`):

    y_k = r + gamma * (1 - terminated) * E_{a' ~ pi_k(.|s')} Qbar_k(s', a')
    L(theta_1..K) = sum_k E_{(s,a,r,s') ~ D} [ (Q_k(s, a) - y_k)^2 ]          Qbar_k <- (1 - tau) Qbar_k + tau Q_k

The sum has no cross terms, so d L / d theta_k is candidate k's own FQE gradient, and Adam (element-wise) on the
stacked parameters is K independent Adams: the batched fit is K fits of :func:`hybridrl.algos.fqe.fit`.

Implementation details:
    1. The K Q-networks are held as stacked weights ``W_l [K, out, in]``, ``b_l [K, out]`` and run with
       ``torch.baddbmm`` (one batched matrix product per layer for all candidates). Measured on this machine's CPU
       (one thread, K = 10 CartPole Q-networks, batch 256, forward + backward + Adam; ``benchmarks/fqe_batched.py
       --layers``): hidden (64, 64) 3.5 ms per update with baddbmm, 4.6 ms with ``torch.func.stack_module_state`` +
       ``functional_call`` + ``vmap``, 11.4 ms with 10 separate modules; hidden (256, 256) 25.7, 26.2 and 27.3 ms
       (the matrix products dominate there). The batched linear layers are kept.
    2. One minibatch per step is shared by all K candidates. Each candidate's fit has the same expectation as with
       its own minibatches; only the sampling noise becomes correlated between candidates. Every candidate starts
       from the initialisation ``FQELearner(..., seed=seed)`` and sees the minibatch sequence of
       ``fit(..., seed=seed)``, exactly what the sequential path (:func:`hybridrl.ope.evaluate_ope` without
       batching) does for every candidate: with discrete actions (exact target expectation) the batched fit
       reproduces the sequential fits to float rounding; with continuous actions the sampled target actions a' come
       from the global torch RNG in a different order, so the fits differ by that sampling noise (identical for K=1).
    3. Each candidate's target actions come from its own policy; Q_k reads observations through pi_k's ``obs_norm``.
       When all candidates are ``CategoricalPolicy`` networks of one architecture, their logits networks are stacked
       as well and ``pi_k(.|s')`` is computed in one batched pass (softmax of the logits; otherwise one
       ``policy.distribution`` call per candidate and step).
    4. Per-candidate convergence: the held-out check and stop rule of :func:`~hybridrl.algos.fqe.fit` run for each
       candidate. A converged candidate is frozen: its weights at its stop step go into its learner and it is
       dropped from the stacked parameters (and Adam's state), so later steps cost less.
    5. ``max_grad_norm`` clips each candidate's own global gradient norm (as ``clip_grad_norm_`` does in ``fit``).
    6. The returned learners are ordinary :class:`~hybridrl.algos.fqe.FQELearner` objects (online and target
       weights set; their optimiser is fresh, not the fit's Adam state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch

from hybridrl.algos.fqe import (
    FQEConfig,
    FQEFitReport,
    FQELearner,
    check_values,
    default_max_steps,
    fit_report,
    fit_schedule,
    split_episodes,
    stop_check,
    training_bounds,
)
from hybridrl.errors import ConfigError, DivergenceError, ShapeError
from hybridrl.nn import Policy, policy_matches_spaces

__all__ = ["BatchedQ", "fit_batched", "fit_fqe_batched"]


class BatchedQ:
    """K Q-networks of one architecture as stacked parameters (candidate ``k`` = row ``k`` of every tensor).

    ``params``: ``[W_0, b_0, W_1, b_1, ...]`` with ``W_l [K, out, in]``, ``b_l [K, out]`` (``nn.Linear`` layout),
    leaf tensors that require grad; ``target``: the same, without grad.
    """

    def __init__(self, learners: Sequence[FQELearner], activation: str):
        self.params = [p.requires_grad_() for p in _stack_linears([ln.q_net.net for ln in learners])]
        self.target = _stack_linears([ln.q_target.net.net for ln in learners])
        self.act = torch.relu if activation == "relu" else torch.tanh

    @staticmethod
    def forward(params: list[torch.Tensor], x: torch.Tensor, act) -> torch.Tensor:
        """``x [K, N, in] -> [K, N, out]`` through the K MLPs."""
        n_layers = len(params) // 2
        for i in range(n_layers):
            x = torch.baddbmm(params[2 * i + 1].unsqueeze(1), x, params[2 * i].transpose(1, 2))
            if i < n_layers - 1:
                x = act(x)
        return x

    def select(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (new leaf tensors)."""
        idx = torch.as_tensor(keep, dtype=torch.long)
        self.params = [p.detach()[idx].clone().requires_grad_() for p in self.params]
        self.target = [t[idx].clone() for t in self.target]

    @torch.no_grad()
    def write(self, row: int, learner: FQELearner) -> None:
        """Copy candidate ``row``'s online and target weights into ``learner``'s networks."""
        for tensors, net in ((self.params, learner.q_net.net), (self.target, learner.q_target.net.net)):
            lin = [m for m in net if isinstance(m, torch.nn.Linear)]
            for i, m in enumerate(lin):
                m.weight.copy_(tensors[2 * i][row])
                m.bias.copy_(tensors[2 * i + 1][row])


def _check_candidates(dataset, policies: Sequence[Policy]) -> None:
    if len(policies) == 0:
        raise ConfigError("fit_batched needs at least one candidate policy")
    for k, policy in enumerate(policies):
        reason = policy_matches_spaces(policy, dataset.observation_space, dataset.action_space, where="dataset")
        if reason is not None:
            raise ShapeError(f"fit_batched: candidate {k} does not fit the dataset (observations "
                             f"{dataset.observation_space.shape}, actions {dataset.action_space}) and so cannot be "
                             f"batched with the others: {reason}")


def _norm(policy: Policy, obs: torch.Tensor) -> torch.Tensor:
    norm = getattr(policy, "obs_norm", None)
    return norm(obs) if norm is not None else obs


def _stacked_categorical(policies: Sequence[Policy]) -> list[torch.Tensor] | None:
    """The logits networks stacked like :class:`BatchedQ` when every candidate is a ``CategoricalPolicy`` with the
    same architecture (detail 3), else None."""
    from hybridrl.nn import CategoricalPolicy

    if not all(type(p) is CategoricalPolicy and p.kwargs == policies[0].kwargs for p in policies):
        return None
    return _stack_linears([p.logits for p in policies])


def _stack_linears(nets: Sequence[torch.nn.Module]) -> list[torch.Tensor]:
    """``[W_0, b_0, W_1, b_1, ...]`` with ``W_l [K, out, in]``, ``b_l [K, out]``: the ``nn.Linear`` layers of K
    MLPs of one architecture stacked (detached copies)."""
    layers = [[m for m in net.modules() if isinstance(m, torch.nn.Linear)] for net in nets]
    out = []
    for i in range(len(layers[0])):
        out.append(torch.stack([ls[i].weight.detach() for ls in layers]).clone())
        out.append(torch.stack([ls[i].bias.detach() for ls in layers]).clone())
    return out


class _Batch:
    """One update of the active candidates on a shared minibatch (implementation details 2, 3 and 5)."""

    def __init__(self, learners: list[FQELearner], q: BatchedQ, config: FQEConfig):
        self.learners, self.q, self.config = learners, q, config
        self.bounds = learners[0].target_bounds  # the same training rows, so the same clip, for every candidate
        self.discrete = learners[0].discrete
        self.optimizer = torch.optim.Adam(q.params, lr=config.lr)
        self.pi = _stacked_categorical([ln.policy for ln in learners]) if self.discrete else None
        if self.pi is not None:
            self.pi_act = torch.tanh if learners[0].policy.kwargs["activation"] == "tanh" else torch.relu

    def select(self, keep: list[int]) -> None:
        """Drop the candidates not in ``keep`` (rows of the current active set) with their Adam state."""
        old = self.q.params
        state = [self.optimizer.state.get(p, {}) for p in old]
        self.q.select(keep)
        self.learners = [self.learners[i] for i in keep]
        if self.pi is not None:
            self.pi = [t[torch.as_tensor(keep, dtype=torch.long)] for t in self.pi]
        self.optimizer = torch.optim.Adam(self.q.params, lr=self.config.lr)
        idx = torch.as_tensor(keep, dtype=torch.long)
        for p, st in zip(self.q.params, state):
            if st:
                self.optimizer.state[p] = {"step": st["step"].clone(), "exp_avg": st["exp_avg"][idx].clone(),
                                           "exp_avg_sq": st["exp_avg_sq"][idx].clone()}

    def q_values(self, params, obs_n: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``Q_k(s, a)`` for normalised ``obs_n [K, B, d]`` and shared logged actions -> ``[K, B]``."""
        if self.discrete:
            q_all = BatchedQ.forward(params, obs_n, self.q.act)
            idx = action.long().reshape(1, -1, 1).expand(q_all.shape[0], -1, 1)
            return q_all.gather(-1, idx).squeeze(-1)
        a = action.float().unsqueeze(0).expand(obs_n.shape[0], -1, -1)
        return BatchedQ.forward(params, torch.cat([obs_n, a], -1), self.q.act).squeeze(-1)

    @torch.no_grad()
    def next_value(self, next_obs: torch.Tensor, next_n: torch.Tensor) -> torch.Tensor:
        """``E_{a' ~ pi_k} Qbar_k(s', a')`` -> ``[K, B]`` (continuous: mean of ``target_action_samples``)."""
        if self.discrete:
            q_all = BatchedQ.forward(self.q.target, next_n, self.q.act)
            if self.pi is not None:  # pi_k(.|s') = softmax(logits_k(norm_k(s'))), norm_k = the one Q_k reads through
                probs = torch.softmax(BatchedQ.forward(self.pi, next_n, self.pi_act), -1).to(q_all.dtype)
            else:
                probs = torch.stack([ln.policy.distribution(next_obs).probs.to(q_all.dtype) for ln in self.learners])
            return (probs * q_all).sum(-1)
        n, (k, b, d) = self.config.target_action_samples, next_n.shape
        acts = []
        for ln in self.learners:  # candidate order: the global torch RNG is consumed per candidate
            a = ln.policy.distribution(next_obs).sample((n,))
            acts.append(torch.maximum(torch.minimum(a.float(), ln._high), ln._low))
        x = torch.cat([next_n.unsqueeze(1).expand(k, n, b, d), torch.stack(acts)], -1).reshape(k, n * b, -1)
        return BatchedQ.forward(self.q.target, x, self.q.act).reshape(k, n, b).mean(1)

    def update(self, batch) -> np.ndarray:
        """One FQE step for every active candidate; returns their TD losses ``[K]``."""
        cfg, policies = self.config, [ln.policy for ln in self.learners]
        obs_n = torch.stack([_norm(p, batch.obs) for p in policies])
        next_n = torch.stack([_norm(p, batch.next_obs) for p in policies])
        with torch.no_grad():
            target = batch.reward + cfg.gamma * (~batch.terminated).float() * self.next_value(batch.next_obs, next_n)
            if self.bounds is not None:
                target = target.clamp(*self.bounds)
        losses = (self.q_values(self.q.params, obs_n, batch.action) - target).square().mean(-1)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        if cfg.max_grad_norm is not None:
            grads = [p.grad for p in self.q.params]
            norms = torch.stack([g.reshape(g.shape[0], -1).square().sum(1) for g in grads]).sum(0).sqrt()
            coef = (cfg.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(coef.reshape(-1, *([1] * (g.dim() - 1))))
        self.optimizer.step()
        with torch.no_grad():
            for t, p in zip(self.q.target, self.q.params):
                t.lerp_(p, cfg.tau)
        return losses.detach().numpy()


def fit_batched(dataset, policies: Sequence[Policy], config: FQEConfig, max_steps: int | None = None, seed: int = 0,
                tol: float = 0.02, check_every: int | None = None, heldout_fraction: float = 0.1,
                min_steps: int | None = None, on_check: Callable | None = None
                ) -> list[tuple[FQELearner, FQEFitReport]]:
    """Fit FQE for K candidate policies together; one ``(learner, report)`` per candidate, in order.

    Each candidate's fit is :func:`hybridrl.algos.fqe.fit` with the same arguments (same split, initialisation
    ``seed``, minibatch sequence, held-out check, stop rule and report), run with all K Q-networks stacked
    (module docstring). A converged candidate is frozen at its stop step (detail 4); the loop ends when all have
    converged or ``max_steps`` is spent.

    Args:
        dataset: :class:`hybridrl.data.dataset.Dataset`.
        policies: K >= 1 candidate policies, each acting in the dataset's spaces.
        config, max_steps, seed, tol, check_every, heldout_fraction, min_steps: as :func:`~hybridrl.algos.fqe.fit`.
        on_check: optional ``callable(k, step, max_steps, report_row)`` after candidate k's check.
    Returns: ``[(FQELearner, FQEFitReport)] * K``, in the order of ``policies``.
    Raises: ConfigError (bad arguments, no candidates), ShapeError (a candidate whose observation/action spaces
        differ from the dataset's, named by index), DivergenceError (a candidate's TD loss becomes NaN or inf).
    """
    _check_candidates(dataset, policies)
    max_steps, check_every, min_steps = fit_schedule(config, max_steps, tol, check_every, heldout_fraction,
                                                     min_steps, "fqe.fit_batched")
    learners = [FQELearner(config, dataset.observation_space, dataset.action_space, seed=seed, policy=p)
                for p in policies]
    rng = np.random.default_rng(seed)
    train_rows, held, s0, n_held = split_episodes(dataset, rng, heldout_fraction)
    for ln in learners:
        ln.target_bounds = training_bounds(dataset, train_rows, config)
    rho = float(np.exp(-(1.0 - config.gamma) * config.tau))
    K = len(learners)
    history = [[] for _ in range(K)]
    passes, remaining, converged, steps = [0] * K, [float("inf")] * K, [False] * K, [0] * K
    active = list(range(K))  # candidate index of each row of the stacked parameters
    batched = _Batch(learners, BatchedQ(learners, config.activation), config)
    for step in range(1, max_steps + 1):
        batch = dataset.transitions(train_rows[rng.integers(0, len(train_rows), size=config.batch_size)])
        losses = batched.update(batch)
        for row, k in enumerate(active):
            steps[k] = step
            if not np.isfinite(losses[row]):
                raise DivergenceError(f"fit_batched: candidate {k}'s TD loss became {losses[row]} at step {step}; "
                                      "lower the learning rate or check the rewards")
        if step % check_every and step != max_steps:
            continue
        keep = []
        for row, k in enumerate(active):
            batched.q.write(row, learners[k])
            v0, bellman = check_values(learners[k], s0, held)
            h = history[k]
            if h:
                remaining[k], passes[k] = stop_check(h[-1], step, v0, rho, tol, passes[k])
            h.append((step, v0, bellman, float(losses[row])))
            if on_check is not None:
                on_check(k, step, max_steps, h[-1])
            if passes[k] >= 2 and step >= min_steps:
                converged[k] = True  # frozen: its learner holds the weights of this step
            else:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(active):
            batched.select(keep)
            active = [active[r] for r in keep]
    for row, k in enumerate(active):  # write the unconverged ones' final weights (already written at the last check)
        batched.q.write(row, learners[k])
    return [(learners[k], fit_report(converged[k], steps[k] if max_steps else 0, max_steps, remaining[k], history[k],
                                     n_held, check_every, config, tol)) for k in range(K)]


def fit_fqe_batched(dataset, policies: dict[str, Policy], gamma: float, config: FQEConfig | None = None,
                    steps: int | None = None, seed: int = 0, progress: bool = False, early_stop: bool = True,
                    tol: float = 0.02) -> dict[str, FQELearner]:
    """:func:`hybridrl.ope.fit_fqe` for several candidates at once (:func:`fit_batched`): ``{name: learner}``.

    Same arguments as ``fit_fqe`` (``config.gamma`` is replaced by ``gamma``); each learner carries its
    ``fit_report``. One progress bar per candidate goes to stderr when ``progress``.
    Raises: as :func:`fit_batched`.
    """
    from hybridrl.runs.progress import progress_bar

    if steps is not None and steps < 0:
        raise ConfigError(f"fit_fqe_batched: steps must be >= 0, got {steps}")
    config = dataclasses.replace(config or FQEConfig(), gamma=float(gamma))
    budget = default_max_steps(config.gamma, config.tau) if steps is None else int(steps)
    names = list(policies)
    with progress_bar(progress) as bar:
        tasks = [bar.add_task(f"fqe {n} (batched)", total=budget, info="") for n in names]

        def on_check(k, step, total, row):
            bar.update(tasks[k], completed=step, info=f"V(s0) {row[1]:.4g} held-out Bellman {row[2]:.3g}")

        fits = fit_batched(dataset, [policies[n] for n in names], config, budget, seed, tol=tol, on_check=on_check,
                           min_steps=None if early_stop else budget)
        for task, (_, report) in zip(tasks, fits):
            bar.update(task, completed=budget if report.converged or not early_stop else report.steps,
                       info=("converged" if report.converged else "NOT converged") + f" after {report.steps} steps")
    out = {}
    for n, (learner, report) in zip(names, fits):
        learner.fit_report = report
        out[n] = learner
    return out
