"""PPO's update against a hand-written CleanRL-style loop; the shared minibatch loop; fine-tuning's auxiliary losses."""

from __future__ import annotations

import copy
import functools

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, Normal

from hybridrl.algos.actor_critic import minibatch_epochs
from hybridrl.algos.ppo import PPOConfig, PPOLearner
from hybridrl.data.batches import Segments, Transitions
from hybridrl.errors import ConfigError, ShapeError
from hybridrl.loops.finetune import FinetuneConfig, OfflineBC, ReferenceKL, finetune
from hybridrl.losses import kl_to_reference_loss
from hybridrl.ops import gae

OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
BOX = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def _segments(b=2, t=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    term = torch.rand(b, t, generator=g) < 0.1
    return Segments(obs=torch.randn(b, t, 3, generator=g), action=torch.rand(b, t, 2, generator=g) * 2 - 1,
                    reward=torch.randn(b, t, generator=g), next_obs=torch.randn(b, t, 3, generator=g),
                    terminated=term, truncated=(torch.rand(b, t, generator=g) < 0.05) & ~term,
                    behavior_log_prob=-torch.rand(b, t, generator=g) - 1.0)


def _offline(n=100, seed=9):
    g = torch.Generator().manual_seed(seed)
    return Transitions(obs=torch.randn(n, 3, generator=g), action=torch.rand(n, 2, generator=g) * 2 - 1,
                       reward=torch.zeros(n), next_obs=torch.randn(n, 3, generator=g),
                       terminated=torch.zeros(n, dtype=torch.bool), truncated=torch.zeros(n, dtype=torch.bool))


def _cleanrl_update(policy, critic, optimizer, generator, batch, cfg, offline=None, bc_coef=0.0):
    """CleanRL ppo_continuous_action.py's update written out (with the optional offline BC term of fine-tuning)."""
    with torch.no_grad():
        values, next_values = critic(batch.obs), critic(batch.next_obs)
        adv, ret = gae(batch.reward, values, next_values, batch.terminated, batch.truncated, cfg.gamma,
                       cfg.gae_lambda)
    b_obs, b_act = batch.obs.reshape(-1, 3), batch.action.reshape(-1, 2)
    b_logp, b_adv, b_ret, b_val = (x.reshape(-1) for x in (batch.behavior_log_prob, adv, ret, values))
    n = len(b_obs)
    for _ in range(cfg.n_epochs):
        perm = torch.randperm(n, generator=generator)
        kls = []
        for start in range(0, n, cfg.minibatch_size):
            mb = perm[start : start + cfg.minibatch_size]
            dist = policy.distribution(b_obs[mb])
            logratio = dist.log_prob(b_act[mb]) - b_logp[mb]
            ratio = logratio.exp()
            kls.append(float(((ratio - 1) - logratio).detach().mean()))
            mb_adv = (b_adv[mb] - b_adv[mb].mean()) / (b_adv[mb].std() + 1e-8)
            pg_loss = torch.max(-mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - cfg.clip_ratio, 1 + cfg.clip_ratio))
            new_v = critic(b_obs[mb])
            v_clipped = b_val[mb] + torch.clamp(new_v - b_val[mb], -cfg.value_clip, cfg.value_clip)
            v_loss = 0.5 * torch.max((new_v - b_ret[mb]) ** 2, (v_clipped - b_ret[mb]) ** 2).mean()
            loss = pg_loss.mean() + cfg.vf_coef * v_loss - cfg.ent_coef * dist.entropy().mean()
            if offline is not None:
                idx = torch.randint(len(offline), (len(mb),), generator=generator)
                loss = loss + bc_coef * -policy.log_prob(offline.obs[idx], offline.action[idx]).mean()
            optimizer.zero_grad()
            loss.backward()
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
        if cfg.target_kl is not None and np.mean(kls) > cfg.target_kl:
            break


@pytest.mark.parametrize("extra", [{}, {"target_kl": 0.001, "lr": 1e-2, "n_epochs": 5}, {"ent_coef": 0.01}])
@pytest.mark.parametrize("bc", [False, True])
def test_ppo_update_matches_a_cleanrl_style_loop(extra, bc):
    cfg = PPOConfig(**{"n_steps": 32, "num_envs": 2, "minibatch_size": 16, "n_epochs": 3, "hidden": (16,), **extra})
    learner = PPOLearner(cfg, OBS, BOX, seed=3)
    policy, critic = copy.deepcopy(learner.policy), copy.deepcopy(learner.critic)
    critic._obs_norm = [policy.obs_norm]
    optimizer = torch.optim.Adam([*policy.parameters(), *critic.parameters()], lr=cfg.lr, eps=1e-5)
    generator = torch.Generator().manual_seed(3)
    offline = _offline() if bc else None
    aux = [OfflineBC(offline, 0.5, 0.8)] if bc else []
    for i in range(2):
        batch = _segments(seed=i)
        learner.update(batch, aux_losses=[functools.partial(a, learner) for a in aux])
        _cleanrl_update(policy, critic, optimizer, generator, batch, cfg, offline, 0.5 * 0.8**i)
        for a in aux:
            a.end_update()
    for name, p in learner.policy.state_dict().items():
        assert torch.allclose(p, policy.state_dict()[name], atol=1e-5), name
    for name, p in learner.critic.state_dict().items():
        assert torch.allclose(p, critic.state_dict()[name], atol=1e-5), name


def test_minibatch_epochs_counts_steps_stops_on_kl_and_drops_the_partial_minibatch():
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    seen = []

    def loss_fn(mb):
        seen.append(len(mb["x"]))
        return (w * mb["x"]).sum(), {"approx_kl": 1.0, "size": float(len(mb["x"]))}

    data = {"x": torch.ones(10)}
    means, epochs = minibatch_epochs(data, 3, 4, torch.Generator().manual_seed(0), loss_fn, opt)
    assert epochs == 3 and seen == [4, 4, 2] * 3 and means["size"] == pytest.approx(10 / 3)
    seen.clear()
    _, epochs = minibatch_epochs(data, 3, 4, torch.Generator().manual_seed(0), loss_fn, opt, target_kl=0.5,
                                 drop_last=True)
    assert epochs == 1 and seen == [4, 4]  # stopped after the first epoch; the partial minibatch dropped


def test_kl_to_reference_loss_by_hand():
    m1, s1, m2, s2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 1.0]]), 0.5
    loss, metrics = kl_to_reference_loss(Independent(Normal(m1, s1), 1),
                                         Independent(Normal(m2, torch.full_like(s1, s2)), 1))
    expected = (torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5).sum()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6) and metrics["kl_ref"] == pytest.approx(float(loss))
    p, q = torch.tensor([[0.2, 0.8], [0.5, 0.5]]), torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    loss, _ = kl_to_reference_loss(Categorical(probs=p), Categorical(probs=q))
    assert float(loss) == pytest.approx(float((p * (p / q).log()).sum(1).mean()), rel=1e-6)
    with pytest.raises(ShapeError):
        kl_to_reference_loss(Categorical(probs=p), Categorical(probs=q[:1]))


def test_reference_kl_is_zero_at_the_start_and_grows():
    learner = PPOLearner(PPOConfig(n_steps=32, num_envs=2, minibatch_size=16, hidden=(16,), lr=1e-2), OBS, BOX)
    aux = ReferenceKL(learner.policy, 2.0)
    mb = {"obs": torch.randn(8, 3)}
    loss, m = aux(learner, mb)
    assert float(loss.detach()) == 0.0 and m["kl_ref"] == 0.0
    learner.update(_segments(), aux_losses=[functools.partial(aux, learner)])
    loss, m = aux(learner, mb)
    assert m["kl_ref"] > 0 and float(loss) == pytest.approx(2.0 * m["kl_ref"])


def test_offline_bc_schedule_and_state():
    bc = OfflineBC(_offline(), 0.1, 0.9)
    for _ in range(3):
        bc.end_update()
    assert bc.coef == pytest.approx(0.1 * 0.9**3)
    clone = OfflineBC(_offline(), 0.1, 0.9)
    clone.load_state_dict(bc.state_dict())
    assert clone.coef == bc.coef
    learner = PPOLearner(PPOConfig(n_steps=32, num_envs=2, minibatch_size=16, hidden=(16,)), OBS, BOX)
    state = learner.generator.get_state()
    loss, m = OfflineBC(_offline(), 0.0)(learner, {"obs": torch.zeros(4, 3)})
    assert float(loss) == 0.0 and m == {} and torch.equal(state, learner.generator.get_state())  # no draw when off


def test_finetune_config_checks():
    with pytest.raises(ConfigError, match="bc_decay"):
        FinetuneConfig(bc_decay=0.0)
    with pytest.raises(ConfigError, match="bc_coef > 0"):
        finetune("Pendulum-v1", None, PPOLearner(PPOConfig(), gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-2, 2, (1,))
                                                 ).policy, 10, config=FinetuneConfig(), mix_offline=True)


def test_finetune_checkpoints_the_bc_schedule_and_resumes_it(tmp_path):
    from hybridrl.data.collect import collect
    from hybridrl.runs import RunDir, latest_checkpoint, load_checkpoint

    data = collect("Pendulum-v1", None, 200, seed=0, progress=False)
    start = PPOLearner(PPOConfig(hidden=(8,)), data.observation_space, data.action_space).policy
    cfg = FinetuneConfig(n_steps=16, minibatch_size=16, n_epochs=1, hidden=(8,), bc_coef=0.5, bc_decay=0.5,
                         kl_coef=0.1, kl_decay=0.5)
    run = RunDir.create(tmp_path / "ft")
    finetune("Pendulum-v1", data, start, 32, config=cfg, run=run, mix_offline=True, checkpoint_every=16,
             progress=False)
    step, state = load_checkpoint(latest_checkpoint(run))
    assert step == 32 and state["loop"]["aux_losses"] == [{"coef": 0.5 * 0.5**2}, {"coef": 0.1 * 0.5**2}]
    finetune("Pendulum-v1", data, start, 64, config=cfg, run=run, mix_offline=True, checkpoint_every=16,
             resume=True, progress=False)
    step, state = load_checkpoint(latest_checkpoint(run))
    assert step == 64 and state["loop"]["aux_losses"][0]["coef"] == pytest.approx(0.5 * 0.5**4)
    assert state["loop"]["aux_losses"][1]["coef"] == pytest.approx(0.1 * 0.5**4)


def test_kl_to_reference_loss_without_closed_form_is_a_config_error():
    from torch.distributions import Categorical, Normal

    from hybridrl.errors import ConfigError

    with pytest.raises(ConfigError, match="no closed-form KL"):
        kl_to_reference_loss(Normal(torch.zeros(3), torch.ones(3)), Categorical(logits=torch.zeros(3, 2)))
