import numpy as np
import pytest

from dataset import sampling


class ScriptedRng:
    """Stands in for a NumPy generator with fixed answers, so expected indices can be hand-written."""

    def __init__(self, integers=(), random=()):
        self._integers = list(integers)
        self._random = list(random)

    def integers(self, low, high):
        value = self._integers.pop(0)
        assert low <= value < high, (low, value, high)
        return value

    def random(self):
        return self._random.pop(0)


def test_centred_clip_pattern_and_clamping():
    assert sampling.centred_clip_indices(100, 50, clip_len=4, stride=4).tolist() == [42, 46, 50, 54]
    assert sampling.centred_clip_indices(100, 1, clip_len=4, stride=4).tolist() == [0, 0, 1, 5]
    assert sampling.centred_clip_indices(100, 98, clip_len=4, stride=4).tolist() == [90, 94, 98, 99]
    assert sampling.centred_clip_indices(3, 2, clip_len=4, stride=4).tolist() == [0, 0, 2, 2]
    assert sampling.centred_clip_indices(30, 10).dtype == np.int64


def test_dualvar_pair_reverses_both_clips_together():
    forward = sampling.dualvar_clip_pair(100, ScriptedRng([50, 10], [0.7]), clip_len=4, stride=2)
    assert [c.tolist() for c in forward] == [[46, 48, 50, 52], [6, 8, 10, 12]]
    reversed_ = sampling.dualvar_clip_pair(100, ScriptedRng([50, 10], [0.2]), clip_len=4, stride=2)
    assert [c.tolist() for c in reversed_] == [[52, 50, 48, 46], [12, 10, 8, 6]]


def test_dualvar_pair_statistics():
    reversals, centres = 0, []
    for seed in range(400):
        a, b = sampling.dualvar_clip_pair(1000, np.random.default_rng(seed))
        assert len(a) == len(b) == 16 and a.min() >= 0 and a.max() <= 999
        a_desc, b_desc = a[0] > a[-1], b[0] > b[-1]  # both clips span > 0 frames in a 1000-frame video
        assert a_desc == b_desc
        reversals += a_desc
        centres.append(a[8] if not a_desc else a[7])
    assert 150 < reversals < 250
    assert min(centres) < 100 and max(centres) > 900  # centres cover the whole video


def test_iic_consecutive_and_short_video():
    assert sampling.iic_clip_indices(40, ScriptedRng([24]), clip_len=16).tolist() == list(range(24, 40))
    starts = {int(sampling.iic_clip_indices(20, np.random.default_rng(s))[0]) for s in range(200)}
    assert starts == set(range(5))
    short = sampling.iic_clip_indices(10, np.random.default_rng(0), clip_len=16)
    assert short.tolist() == list(range(10)) + [9] * 6


def test_finetune_stride_and_padding():
    assert sampling.finetune_clip_indices(50, ScriptedRng([3]), clip_len=4, stride=2).tolist() == [3, 5, 7, 9]
    starts = {int(sampling.finetune_clip_indices(40, np.random.default_rng(s), 16, 2)[0]) for s in range(300)}
    assert starts == set(range(40 - 31 + 1))  # the last start keeps index 39 = L-1 inside the clip
    assert sampling.finetune_clip_indices(7, ScriptedRng(random=[0.2]), 6, 2).tolist() == [0, 0, 0, 2, 4, 6]
    assert sampling.finetune_clip_indices(7, ScriptedRng(random=[0.9]), 6, 2).tolist() == [0, 2, 4, 6, 6, 6]
    assert sampling.finetune_clip_indices(1, np.random.default_rng(0), 16, 2).tolist() == [0] * 16


def test_eval_ten_clips_evenly_spaced():
    clips = sampling.eval_clip_indices(100, clip_len=16, stride=2)
    assert clips.shape == (10, 16)
    # span 32: centres linspace(16, 84, 10), starts floor(centre - 16)
    assert clips[:, 0].tolist() == [0, 7, 15, 22, 30, 37, 45, 52, 60, 68]
    assert clips[-1].tolist() == list(range(68, 100, 2))
    assert (np.diff(clips, axis=1) == 2).all()


@pytest.mark.parametrize("length", [1, 5, 31, 32])
def test_eval_short_videos_still_give_ten_clips(length):
    clips = sampling.eval_clip_indices(length, clip_len=16, stride=2)
    assert clips.shape == (10, 16)
    assert clips.min() >= 0 and clips.max() == min(length - 1, 30)
    expected = np.minimum(np.arange(16) * 2, length - 1)  # S/2 >= L: every clip starts at 0
    assert (clips == expected).all()


def test_zero_length_is_rejected():
    with pytest.raises(ValueError, match="num_frames=0"):
        sampling.finetune_clip_indices(0, np.random.default_rng(0))
