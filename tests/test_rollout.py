"""Rollout buffers (hybridrl.data.rollout): PROPS's SegmentBuffer and replayed PG's RolloutQueue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridrl.data.batches import Segments
from hybridrl.data.rollout import RolloutQueue, SegmentBuffer
from hybridrl.errors import ShapeError


def _block(b, m, label):
    x = np.full((b, m), label, np.float32) + np.arange(m, dtype=np.float32) / 10
    return dict(obs=x[..., None], next_obs=x[..., None] + 0.05, action=np.full((b, m), label, np.int64), reward=x,
                terminated=np.zeros((b, m), bool), truncated=np.zeros((b, m), bool), behavior_log_prob=x)


def test_segment_buffer_keeps_the_newest_steps_in_time_order():
    buf = SegmentBuffer(2, 6, (1,), (), discrete=True)
    for label in range(4):
        buf.add(**_block(2, 2, label))
    assert buf.size == 6
    assert buf.data["action"][0].tolist() == [1, 1, 2, 2, 3, 3]
    assert np.all(np.diff(buf.data["obs"][1, :, 0]) > 0)  # oldest first, consecutive steps
    seg = buf.segments(last=4, reward_scale=10.0, reward_clip=25.0)
    assert seg.action[0].tolist() == [2, 2, 3, 3] and seg.reward[0].tolist() == pytest.approx([20, 21, 25, 25])
    clone = SegmentBuffer(2, 6, (1,), (), discrete=True)
    clone.load_state_dict(buf.state_dict())
    assert all(np.array_equal(v, clone.data[k]) for k, v in buf.data.items())
    with pytest.raises(ShapeError):
        buf.add(**_block(2, 7, 0))
    with pytest.raises(ShapeError):
        buf.add(**{**_block(2, 2, 0), "obs": np.zeros((2, 2, 3), np.float32)})


def test_segment_buffer_cuts_an_episode_that_the_next_block_does_not_continue():
    """After a resume the envs restart: the last buffered step of an unfinished episode becomes a truncation."""
    buf = SegmentBuffer(2, 8, (1,), (), discrete=True)
    first = _block(2, 2, 0)
    first["terminated"][1, -1] = True  # env 1's episode ended: nothing to cut there
    buf.add(**first)
    cont = _block(2, 2, 1)
    cont["obs"][0, 0] = first["next_obs"][0, -1]  # env 0 continues its episode ...
    cont["obs"][1, 0] = 99.0
    buf.add(**cont)
    assert not buf.data["truncated"][0, 1] and not buf.data["truncated"][1, 1]
    buf.add(**_block(2, 2, 2))  # ... and then both restart (block obs != stored next_obs)
    assert buf.data["truncated"][:, 3].tolist() == [True, True]
    assert not buf.data["truncated"][:, 5].any()


def _segments(seed):
    g = torch.Generator().manual_seed(seed)
    return Segments(obs=torch.randn(1, 3, 2, generator=g), action=torch.randn(1, 3, 1, generator=g),
                    reward=torch.randn(1, 3, generator=g), next_obs=torch.randn(1, 3, 2, generator=g),
                    terminated=torch.zeros(1, 3, dtype=torch.bool), truncated=torch.zeros(1, 3, dtype=torch.bool),
                    behavior_log_prob=torch.zeros(1, 3))


def test_rollout_queue_keeps_private_copies_of_the_last_k():
    queue = RolloutQueue(2)
    batches = [_segments(i) for i in range(3)]
    for b in batches:
        queue.add(b)
    batches[2].reward.zero_()  # the caller reuses its arrays: the stored copy is unaffected
    assert len(queue) == 2 and torch.equal(queue[0].obs, batches[1].obs)
    assert [float(s.reward.abs().sum()) > 0 for s in queue.newest_first()] == [True, True]
    assert torch.equal(queue.newest_first()[0].obs, batches[2].obs)
    clone = RolloutQueue(2)
    clone.load_state_dict(queue.state_dict())
    assert all(torch.equal(a.reward, b.reward) for a, b in zip(queue.newest_first(), clone.newest_first()))
