"""PROPS: Proximal Robust On-Policy Sampling (Corrado & Hanna 2023, arXiv:2311.08290).

Two policies. The *target* pi_theta is trained by PPO on a buffer of the last ``b`` rollouts, with the
log-probabilities of all buffered pairs recomputed under pi_theta before the update, so the PPO ratio is
pi_theta / pi_theta_before_update and there is no correction for the behaviour policy (by design). The
*behaviour* pi_phi collects the data: after every ``m`` environment steps it is reset to pi_theta and adapted by

    L(phi) = mean[ max(rho, clip(rho, 1 - eps_P, 1 + eps_P)) ] + lambda * mean_s KL(pi_phi(.|s) || pi_theta(.|s)),
    rho = pi_phi(a|s) / pi_theta(a|s) over the buffered (s, a) that survive the next eviction,

which lowers the probability of actions the buffer already holds too often, so the buffer as a whole looks
more like on-policy data for pi_theta ("sampling error" falls). The learner holds the buffer (a
:class:`~hybridrl.data.rollout.SegmentBuffer` of ``b * n`` steps per env); the on-policy loop
(:func:`hybridrl.loops.on_policy.train_on_policy`) acts with ``acting_policy``, passes blocks of ``m`` steps to
``update`` and calls ``adapt_behavior`` after updating the observation statistics.

Official code: NicholasCorrado/PPOROS @a0c8708, ``PROPS/ppo_props_continuous.py`` and ``ppo_props_discrete.py``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import torch
from torch.distributions import Categorical, Distribution, Independent, Normal

from hybridrl.algos import gradient_step
from hybridrl.algos.actor_critic import ActorCriticConfig
from hybridrl.algos.ppo import PPOConfig, PPOLearner
from hybridrl.data.batches import Segments
from hybridrl.data.rollout import FIELDS, SegmentBuffer
from hybridrl.errors import ConfigError
from hybridrl.losses.props import KL_DIRECTIONS, policy_kl, props_behavior_loss
from hybridrl.nn import Policy, make_policy
from hybridrl.ops import gae, kl_k3


@dataclass(frozen=True)
class PROPSConfig(ActorCriticConfig):
    """PROPS hyperparameters; defaults are PPOROS ``ppo_props_continuous.py`` argparse defaults (its lines 62-107).

    Target (PPO) update, every ``n_steps`` steps per env, on the whole buffer: the fields of
    :class:`ActorCriticConfig`, with PPOROS's defaults lr 1e-4, ent_coef 0.01, target_kl 0.03 and minibatch_size 128
    (PPOROS: 32 minibatches of the full buffer); ``n_epochs`` passes over the buffer; ``normalize_reward`` keeps raw
    rewards in the buffer and rescales them with the current statistics before every update (as PPOROS does). Plus:

    Attributes:
        buffer_batches: target batches kept in the buffer (b >= 1); the buffer holds ``b * n_steps`` steps per env.
        tanh_mean: squash the Gaussian mean with ``tanh`` into the action box (PPOROS's actor ends in ``Tanh``).
    Behaviour (PROPS) update, every ``props_n_steps`` steps per env:
        props: collect with the adapted behaviour policy; False = "PPO-BUFFER" (act with the target policy).
        props_n_steps: m, steps per env between behaviour updates; must divide ``n_steps``.
        props_lr: Adam step size (> 0, not annealed; the optimiser state persists across resets, as in PPOROS).
        props_n_epochs: passes over the buffer (>= 1). props_minibatch_size: samples per step (> 0; PPOROS: 16
            minibatches of the ``b*n - m`` surviving steps = 192 with the defaults).
        props_clip_ratio: eps_PROPS (> 0). props_kl_coef: lambda (>= 0).
        props_kl_direction: "behavior_target" = KL(pi_phi || pi_theta) (PPOROS code) or "target_behavior".
        props_kl_reduction: Gaussian KL over action dimensions, "mean" (PPOROS) or "sum" (the joint KL).
        props_target_kl: stop the behaviour update before a step whose minibatch approx-KL (k3, buffer samples)
            exceeds this (nats); None disables. props_max_grad_norm: gradient-norm clip of the behaviour update.
        props_adv: AW-PROPS, weight each sample by |A| / std(A) (advantages not mean-centred).
    Experiments:
        freeze_target: never update pi_theta nor its observation statistics (the sampling-error experiments with a
            fixed target, PPOROS ``--update-epochs 0``); pi_phi is still adapted.
    """

    lr: float = 1e-4
    minibatch_size: int = 128
    ent_coef: float = 0.01
    target_kl: float | None = 0.03
    buffer_batches: int = 2
    tanh_mean: bool = True
    props: bool = True
    props_n_steps: int = 1024
    props_lr: float = 1e-4
    props_n_epochs: int = 16
    props_minibatch_size: int = 192
    props_clip_ratio: float = 0.3
    props_kl_coef: float = 0.3
    props_kl_direction: str = "behavior_target"
    props_kl_reduction: str = "mean"
    props_target_kl: float | None = 0.05
    props_max_grad_norm: float = 0.5
    props_adv: bool = False
    freeze_target: bool = False

    def __post_init__(self) -> None:
        from hybridrl.algos import check_config

        super().__post_init__()
        check_config(self, buffer_batches=(1, None), props_n_steps=(1, None), props_lr=(1e-12, None),
                     props_n_epochs=(1, None), props_minibatch_size=(1, None), props_clip_ratio=(1e-6, None),
                     props_kl_coef=(0.0, None), props_target_kl=(0.0, None), props_max_grad_norm=(1e-12, None))
        if self.n_steps % self.props_n_steps:
            raise ConfigError(f"PROPS props_n_steps={self.props_n_steps} must divide n_steps={self.n_steps}")
        if self.props_kl_direction not in KL_DIRECTIONS:
            raise ConfigError(f"PROPSConfig.props_kl_direction={self.props_kl_direction!r}; "
                              f"expected one of {KL_DIRECTIONS}")
        if self.props_kl_reduction not in ("mean", "sum"):
            raise ConfigError(f"PROPSConfig.props_kl_reduction={self.props_kl_reduction!r}; expected 'mean' or 'sum'")

    def ppo_config(self) -> PPOConfig:
        """The :class:`PPOConfig` of the target update (the shared fields copied)."""
        names = {f.name for f in dataclasses.fields(PPOConfig)}
        return PPOConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    @property
    def buffer_steps(self) -> int:
        """Steps per env the buffer holds (``buffer_batches * n_steps``)."""
        return self.buffer_batches * self.n_steps


def _rows(dist: Distribution, idx: torch.Tensor) -> Distribution:
    """The distribution of rows ``idx`` of a batched Categorical or diagonal-Gaussian policy distribution."""
    if isinstance(dist, Categorical):
        return Categorical(logits=dist.logits[idx], validate_args=False)
    base = dist.base_dist if isinstance(dist, Independent) else dist
    if not isinstance(base, Normal):
        raise ConfigError(f"PROPS supports categorical and diagonal-Gaussian policies, got {type(dist).__name__}")
    return Independent(Normal(base.loc[idx], base.scale[idx], validate_args=False), 1, validate_args=False)


class PROPSLearner:
    """PROPS learner: ``update(block)`` buffers a block of ``m`` steps and trains pi_theta by PPO every ``n`` steps;
    ``adapt_behavior()`` then adapts pi_phi on the buffer.

    Attributes: ``policy`` (pi_theta), ``critic``, ``behavior_policy`` (pi_phi; it shares pi_theta's observation
    normaliser), ``ppo`` (the :class:`PPOLearner` that owns policy, critic and their optimiser; composition, not
    inheritance), ``buffer`` (:class:`SegmentBuffer`, raw rewards).
    Loop hooks (see :mod:`hybridrl.loops.on_policy`): ``acting_policy``, ``block_steps`` (= ``props_n_steps``),
    ``raw_rewards`` (``update`` takes the reward scale), ``adapt_behavior()``, ``freeze_obs_stats``.
    """

    raw_rewards = True

    def __init__(self, config: PROPSConfig, observation_space: gym.Space, action_space: gym.Space, seed: int = 0,
                 policy: Policy | None = None):
        torch.manual_seed(seed)
        self.config = config
        if policy is None and not isinstance(action_space, gym.spaces.Discrete):
            policy = make_policy(observation_space, action_space, config.hidden, config.activation,
                                 config.normalize_obs, log_std_init=config.log_std_init, tanh_mean=config.tanh_mean)
        self.ppo = PPOLearner(config.ppo_config(), observation_space, action_space, seed=seed, policy=policy)
        self.policy, self.critic = self.ppo.policy, self.ppo.critic
        self.behavior_policy = copy.deepcopy(self.policy)
        self.behavior_policy.obs_norm = self.policy.obs_norm  # pi_phi always sees pi_theta's statistics
        self.behavior_optimizer = torch.optim.Adam(self.behavior_policy.parameters(), lr=config.props_lr, eps=1e-5)
        self.behavior_generator = torch.Generator().manual_seed(seed + 1)
        self.buffer = SegmentBuffer(config.num_envs, config.buffer_steps, observation_space.shape,
                                    action_space.shape, self.policy.discrete)
        self.collected = 0  # steps per env added to the buffer so far
        self.block_steps = config.props_n_steps
        self.freeze_obs_stats = config.freeze_target
        self._reward_transform: tuple[float, float | None] = (1.0, None)

    @property
    def acting_policy(self) -> Policy:
        """The policy that collects: pi_phi, or pi_theta when ``config.props`` is False ("PPO-BUFFER")."""
        return self.behavior_policy if self.config.props else self.policy

    def set_progress(self, fraction: float) -> None:
        """Anneal the target learning rate for training progress ``fraction`` in [0, 1] (PROPS lr is constant)."""
        self.ppo.set_progress(fraction)

    def update(self, block: Segments, reward_scale: float = 1.0, reward_clip: float | None = None
               ) -> dict[str, float]:
        """Append ``block`` (``Segments [num_envs, m]``, raw rewards) to the buffer; every ``n_steps`` buffered steps
        per env (unless ``freeze_target``) run :meth:`update_target` on the whole buffer, its rewards scaled by
        ``reward_scale`` and clipped to ``+-reward_clip`` (the loop's current running statistics, as PPOROS
        re-normalises its buffer). Returns :meth:`update_target`'s metrics, or ``{}`` when no update was due.
        """
        self.buffer.add(**{f: getattr(block, f).numpy() for f in FIELDS})
        self.collected += block.horizon
        self._reward_transform = (reward_scale, reward_clip)
        if self.collected % self.config.n_steps or self.config.freeze_target:
            return {}
        return self.update_target(self.buffer.segments(reward_scale=reward_scale, reward_clip=reward_clip))

    def update_target(self, batch: Segments) -> dict[str, float]:
        """One PPO update of pi_theta on the buffer ``batch`` (``Segments [num_envs, T]``, time-ordered,
        T <= b * n_steps).

        ``batch.behavior_log_prob`` is ignored: log pi_theta of every buffered pair is recomputed first and used as
        the ratio denominator (no importance correction for pi_phi, PPOROS lines 677-682). GAE runs over the whole
        buffer with the current critic. Returns PPO's metrics (:meth:`PPOLearner.update`, ``docs/algorithms/ppo.md``).
        """
        with torch.no_grad():
            logp = self.policy.log_prob(batch.obs, batch.action)  # [B, T]: the policy broadcasts over B, T
        return self.ppo.update(dataclasses.replace(batch, behavior_log_prob=logp))

    def adapt_behavior(self) -> dict[str, float]:
        """Reset pi_phi to pi_theta and adapt it (:meth:`update_behavior`) on the buffered steps that survive the
        next eviction: all while the buffer has room for ``m`` more steps, else all but the oldest ``m``
        (PPOROS ppo_props_continuous.py:292-300). A no-op returning ``{}`` when ``config.props`` is False.
        """
        if not self.config.props:
            return {}
        keep = min(self.buffer.size, self.buffer.capacity - self.config.props_n_steps)
        if keep > 0:
            return self.update_behavior(self.buffer.segments(keep, *self._reward_transform))
        self.reset_behavior()  # b = 1 and m = n: nothing survives the next eviction, so pi_phi = pi_theta
        return {}

    @torch.no_grad()
    def reset_behavior(self) -> None:
        """pi_phi <- pi_theta: copy every parameter and buffer (observation statistics included), exactly."""
        self.behavior_policy.load_state_dict(self.policy.state_dict())

    def _weights(self, batch: Segments) -> torch.Tensor:
        """AW-PROPS weights |A| for the valid steps of ``batch`` (GAE with the current critic; normalised later)."""
        with torch.no_grad():
            values, next_values = self.critic(batch.obs), self.critic(batch.next_obs)  # [B, T]
            adv, _ = gae(batch.reward, values, next_values, batch.terminated, batch.truncated,
                         self.config.gamma, self.config.gae_lambda)
        return adv.reshape(-1)[batch.mask.reshape(-1)].abs()

    def update_behavior(self, batch: Segments) -> dict[str, float]:
        """Reset pi_phi to pi_theta, then adapt it with the PROPS objective on ``batch`` (the buffered steps that
        survive the next eviction; the loop chooses them).

        pi_theta is evaluated once on the batch and each minibatch takes the rows of *its own* samples, so the KL
        term is the full per-state KL between pi_phi and pi_theta at exactly the sampled states (PPOROS's discrete
        code used probabilities of the unsliced buffer and a one-sample KL;
        see docs/algorithms/props.md, implementation detail 1).

        Returns metrics prefixed ``behavior_``: the loss terms and ratio statistics averaged over the minibatch
        steps taken, ``behavior_minibatches``, ``behavior_epochs`` (started before any early stop) and
        ``behavior_kl`` = mean_s KL(pi_phi || pi_theta) after the update (summed over action dimensions).
        """
        cfg = self.config
        self.reset_behavior()
        flat = batch.flatten()
        obs, act, n = flat.obs, flat.action, len(flat)
        weights = self._weights(batch) if cfg.props_adv and n > 0 else None
        with torch.no_grad():  # pi_theta is fixed during the update: evaluate it once on every buffered state
            target_all = self.policy.distribution(obs)
            target_logp_all = target_all.log_prob(act)
        sums: dict[str, float] = {}
        count, epochs, stop = 0, 0, False
        for _ in range(cfg.props_n_epochs if n > 0 else 0):
            epochs += 1
            perm = torch.randperm(n, generator=self.behavior_generator)
            for start in range(0, n, cfg.props_minibatch_size):
                idx = perm[start : start + cfg.props_minibatch_size]
                dist = self.behavior_policy.distribution(obs[idx])
                logp = dist.log_prob(act[idx])
                with torch.no_grad():
                    target, target_logp = _rows(target_all, idx), target_logp_all[idx]
                    kl_now = float(kl_k3(logp - target_logp).mean())
                    if cfg.props_target_kl is not None and kl_now > cfg.props_target_kl:
                        stop = True  # checked before the step, on this minibatch (PPOROS lines 343-352)
                        break
                kl = (policy_kl(dist, target, cfg.props_kl_reduction) if cfg.props_kl_direction == "behavior_target"
                      else policy_kl(target, dist, cfg.props_kl_reduction))
                w = None
                if weights is not None:
                    w = weights[idx] / (weights[idx].std() + 1e-8) if len(idx) > 1 else torch.ones_like(logp)
                loss, metrics = props_behavior_loss(logp, target_logp, kl, cfg.props_clip_ratio, cfg.props_kl_coef, w)
                metrics["grad_norm"] = gradient_step(self.behavior_optimizer, loss, cfg.props_max_grad_norm)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            if stop:
                break
        out = {f"behavior_{k}": v / count for k, v in sums.items()}
        with torch.no_grad():
            final_kl = policy_kl(self.behavior_policy.distribution(obs), target_all, "sum") if n else None
        out.update(behavior_minibatches=float(count), behavior_epochs=float(epochs),
                   behavior_kl=float(final_kl.mean()) if final_kl is not None else 0.0)
        return out

    def state_dict(self) -> dict:
        return {"ppo": self.ppo.state_dict(), "behavior_policy": self.behavior_policy.state_dict(),
                "behavior_optimizer": self.behavior_optimizer.state_dict(),
                "behavior_generator": self.behavior_generator.get_state(), "buffer": self.buffer.state_dict(),
                "collected": self.collected}

    def load_state_dict(self, state: dict) -> None:
        self.ppo.load_state_dict(state["ppo"])
        self.behavior_policy.load_state_dict(state["behavior_policy"])
        self.behavior_optimizer.load_state_dict(state["behavior_optimizer"])
        self.behavior_generator.set_state(state["behavior_generator"])
        self.buffer.load_state_dict(state["buffer"])
        self.collected = int(state["collected"])


from hybridrl.algos import register  # noqa: E402  (registration is the last statement of the file)

register("props", PROPSConfig, PROPSLearner, loop="on_policy", inputs="env",
         summary="PROPS, PPO with an adaptive behaviour policy (Corrado & Hanna 2024)",
         tiny=dict(n_steps=16, num_envs=2, props_n_steps=8, minibatch_size=16, props_minibatch_size=16, n_epochs=2,
                   props_n_epochs=2, hidden=(16, 16)))
