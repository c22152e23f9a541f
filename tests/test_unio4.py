"""Uni-O4's offline stage: the ensemble BC loss by hand, the OPE gate, and learning on the contextual bandit."""

from __future__ import annotations

import pytest
import torch

from hybridrl.algos.unio4 import UniO4Config, UniO4Learner
from hybridrl.errors import ShapeError
from hybridrl.loops.offline import train_offline
from hybridrl.losses.offline_reg import ensemble_bc_loss
from tests.test_offline_family_learning import ACT, OBS, bandit_dataset, expected_reward


def test_ensemble_bc_loss_by_hand():
    # Member 0: log-probs (-1, -2); member 1: (-3, -0.5); alpha 0.2.
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]], requires_grad=True)
    loss, m = ensemble_bc_loss(logp, 0.2)
    # member 0: mean(1 - 0.2(-1 + 3), 2 - 0.2(-2 + 0.5)) = mean(0.6, 2.3) = 1.45
    # member 1: mean(3 - 0.2(-3 + 1), 0.5 - 0.2(-0.5 + 2)) = mean(3.4, 0.2) = 1.8
    assert float(loss.detach()) == pytest.approx(1.45 + 1.8)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.full((2, 2), -1.2 / 2))  # (1 + alpha) / B, the max is detached
    assert m["bc_loss"] == pytest.approx((1 + 2 + 3 + 0.5) / 4)
    assert m["disagreement"] == pytest.approx(((-3 + 1) + (-0.5 + 2) + (-1 + 3) + (-2 + 0.5)) / 4)
    single, _ = ensemble_bc_loss(torch.tensor([[-1.0, -2.0]]), 0.2)
    assert float(single) == pytest.approx(1.5)  # K = 1: plain BC
    with pytest.raises(ShapeError):
        ensemble_bc_loss(torch.zeros(3), 0.1)


def test_update_is_accepted_only_when_the_check_improves():
    torch.manual_seed(0)
    cfg = UniO4Config(hidden=(16, 16), n_policies=2, bc_steps=1, check_every=1, check_states=64, batch_size=32,
                      reward_scale=1.0)
    learner = UniO4Learner(cfg, OBS, ACT, seed=0)
    data = bandit_dataset(256)
    learner.prepare(data)
    batch = data.transitions().index(torch.arange(32))
    learner.update(batch)  # phase 1 ends: both cloned members accepted with their first scores
    first = learner.best_score.clone()
    assert torch.isfinite(first).all()
    for _ in range(5):
        before = [{k: v.clone() for k, v in b.state_dict().items()} for b in learner.behaviors]
        best_before = learner.best_score.clone()
        m = learner.update(batch)
        assert m["phase"] == 2.0
        scores = learner.check_scores()
        for i in range(2):
            accepted = bool(scores[i] > best_before[i])
            same = all(torch.equal(v, before[i][k]) for k, v in learner.behaviors[i].state_dict().items())
            assert same != accepted
            if accepted:
                assert learner.best_score[i] == scores[i]
        assert (learner.best_score >= best_before).all()
    assert learner.policy is learner.behaviors[int(torch.argmax(learner.best_score))]


@pytest.mark.slow
def test_unio4_improves_on_cloning_the_bandit_data():
    """BC phase 300 steps clones uniform random actions (about -0.333); 300 OPE-gated BPPO steps move towards a = s_0.
    Measured (seed 0): -0.324 after BC, -0.027 after BPPO (the bandit optimum is 0)."""
    torch.set_num_threads(1)
    data = bandit_dataset()
    cfg = UniO4Config(hidden=(32, 32), n_policies=2, bc_steps=300, bc_lr=1e-3, bppo_lr=3e-4, check_every=20,
                      check_states=256, batch_size=64, reward_scale=1.0)
    cloned = expected_reward(train_offline("unio4", data, cfg, steps=300, seed=0, progress=False).policy)
    learner = train_offline("unio4", data, cfg, steps=600, seed=0, progress=False)
    improved = expected_reward(learner.policy)
    assert cloned < -0.25 and improved > cloned + 0.2, (cloned, improved)
