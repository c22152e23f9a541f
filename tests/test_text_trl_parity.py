"""Parity with TRL 1.16's GRPO loss (runs only when trl is installed; trl is a test-only extra, not a dependency).

TRL's ``GRPOTrainer._compute_loss`` is called unbound on a namespace carrying the trainer attributes it reads (no model
forward: the per-token log-probs are handed in), then compared with :func:`hybridrl.text.losses.clipped_pg_loss`.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")

from hybridrl.text import losses as L  # noqa: E402


class _Acc:
    sync_gradients = True
    num_processes = 1

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trl_loss(logp, old, adv, mask, *, loss_type, level, beta=0.0, ref=None, eps=(0.2, 0.28)):
    ns = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None), loss_type=loss_type, epsilon_low=eps[0],
        epsilon_high=eps[1], use_vllm=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=_Acc())
    ns.args.steps_per_generation = 1
    n = mask.shape[0]
    inputs = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1),
              "completion_ids": torch.zeros_like(mask, dtype=torch.long), "completion_mask": mask.float(),
              "advantages": adv, "old_per_token_logps": old, "num_items_in_batch": mask.sum().float()}
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    return trl_grpo.GRPOTrainer._compute_loss(ns, None, inputs)


@pytest.mark.slow  # importing trl takes ~10 s
@pytest.mark.parametrize("loss_type,aggregation,level", [("grpo", "seq-mean-token-mean", "token"),
                                                         ("dapo", "token-mean", "token"),
                                                         ("grpo", "seq-mean-token-mean", "sequence")])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_and_gradient_match_trl(loss_type, aggregation, level, beta):
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    old = -torch.rand(4, 4, generator=g) - 0.2
    base = old + 0.3 * torch.randn(4, 4, generator=g)
    ref = old + 0.2 * torch.randn(4, 4, generator=g)
    adv = torch.tensor([1.2, -0.7, 0.3, -1.5])
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    trl_loss = _trl_loss(a, old, adv, mask, loss_type=loss_type, level=level, beta=beta, ref=ref)
    ours, _ = L.clipped_pg_loss(b, old, adv, mask, aggregation=aggregation, clip_low=0.2, clip_high=0.28,
                                level=level, ref_logp=ref if beta else None, kl_coef=beta)
    assert float(ours.detach()) == pytest.approx(float(trl_loss.detach()), rel=1e-5, abs=1e-7)
    trl_loss.backward()
    ours.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
