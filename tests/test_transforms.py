import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from dataset import transforms as T

# Tolerances: the OpenCV float32 colour ops and blur agree with torchvision's float formulas to a few
# float32 ulps (measured <= 2e-6 on [0, 1] values; hue, through OpenCV's HSV, the largest). A whole
# augmented view (up to four ops and a blur, then x / std, about 4.4x) measured <= 3e-5 over 400 draws:
# 5e-5 is 1e-5 on [0, 1] values, 1/400 of a grey level.
OP_TOL = 3e-6
VIEW_TOL = 5e-5


def coordinate_clip(t=6, h=40, w=52):
    """uint8 (T, 3, H, W): channel 0 = row, channel 1 = column, channel 2 = frame number * 10."""
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    frames = [torch.stack([rows, cols, torch.full((h, w), 10 * i)]) for i in range(t)]
    return torch.stack(frames).to(torch.uint8)


def decoded_like(clip):
    """(T, 3, H, W) with the decoder's channels-last memory, as read_frames returns."""
    return clip.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def unnormalize(x):
    mean = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(T.IMAGENET_STD).view(3, 1, 1, 1)
    return x * std + mean


def to_numpy(x):
    """torch (T, 3, H, W) -> float32 channels-last NumPy (T, H, W, 3), as the ops take."""
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def to_torch(x):
    return torch.from_numpy(x).permute(0, 3, 1, 2)


@pytest.mark.parametrize("factor", [0.2, 0.7, 1.8])
def test_colour_ops_match_torchvision(factor):
    x = torch.rand(3, 3, 9, 11)
    x[0, :, 0, 0] = 0.5  # a grey pixel
    for ours, theirs in [(T.adjust_brightness, TF.adjust_brightness), (T.adjust_contrast, TF.adjust_contrast),
                         (T.adjust_saturation, TF.adjust_saturation)]:
        torch.testing.assert_close(to_torch(ours(to_numpy(x), factor)), theirs(x, factor), atol=OP_TOL, rtol=0)
    shift = (factor - 1) / 4  # [-0.2, 0.2]
    for s in (shift, 0.5, -0.5):
        torch.testing.assert_close(to_torch(T.adjust_hue(to_numpy(x), s)), TF.adjust_hue(x, s), atol=OP_TOL, rtol=0)
    sigma = factor + 0.1
    torch.testing.assert_close(to_torch(T.gaussian_blur(to_numpy(x), sigma, 5)),
                               TF.gaussian_blur(x, [5, 5], [sigma, sigma]), atol=OP_TOL, rtol=0)


def test_per_frame_factors_equal_frame_by_frame_ops():
    x = to_numpy(torch.rand(4, 3, 8, 8))
    factors = np.array([0.3, 0.9, 1.4, 1.8])
    ops = (T.adjust_brightness, T.adjust_contrast, T.adjust_saturation, T.adjust_hue)
    for op, f in zip(ops, (factors, factors, factors, (factors - 1) / 4)):
        expected = np.stack([op(x[i:i + 1].copy(), float(f[i]))[0] for i in range(4)])
        np.testing.assert_allclose(op(x.copy(), f), expected, atol=1e-6, rtol=0)


def reference_view(transform, clip, params):
    """The view ``params`` describes, computed with torchvision's ops frame by frame; (3, T, S, S)."""
    s = transform.size
    x = clip[..., params.top:params.top + s, params.left:params.left + s].float() / 255  # (T, 3, S, S)
    if params.flip:
        x = x.flip(-1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    frames = []
    for t, frame in enumerate(x):
        for op in params.jitter_order:
            factors = params.jitter_factors[op]
            frame = ops[op](frame, float(factors[t if len(factors) > 1 else 0]))
        if params.blur_sigma is not None:
            k = transform.blur_kernel
            frame = TF.gaussian_blur(frame, [k, k], [params.blur_sigma] * 2)
        frames.append(TF.normalize(frame, T.IMAGENET_MEAN, T.IMAGENET_STD))
    return torch.stack(frames, dim=1)


@pytest.mark.parametrize("per_frame_jitter", [False, True])
def test_views_match_torchvision_reference(per_frame_jitter):
    # covers every op order, factors above and below 1 (clamped or composed lazily), blur on and off
    clip = decoded_like(torch.randint(0, 256, (4, 3, 40, 52), dtype=torch.uint8))
    transforms = [T.ClipTransform(recipe, size=32, resize=(40, 52), per_frame_jitter=per_frame_jitter)
                  for recipe in ("pretrain", "finetune")]
    kinds = set()
    for seed in range(40):
        transform = transforms[seed % 2]
        params = transform.draw(np.random.default_rng(seed), clip.shape[0])
        kinds.add((bool(params.jitter_order), params.blur_sigma is not None))
        torch.testing.assert_close(transform.apply(clip, params), reference_view(transform, clip, params),
                                   atol=VIEW_TOL, rtol=0)
    assert len(kinds) == 4


def test_output_goes_into_the_callers_buffer():
    clip = torch.randint(0, 256, (4, 3, 40, 52), dtype=torch.uint8)
    transform = T.ClipTransform("pretrain", size=32, resize=(40, 52))
    expected = transform(clip, np.random.default_rng(3))
    buffer = torch.zeros(2, 3, 4, 32, 32)
    assert transform(clip, np.random.default_rng(3), out=buffer[1]).data_ptr() == buffer[1].data_ptr()
    assert torch.equal(buffer[1], expected) and (buffer[0] == 0).all()
    strided = torch.zeros(3, 4, 32, 64)[..., ::2]  # not contiguous: filled by a copy
    transform(clip, np.random.default_rng(3), out=strided)
    assert torch.equal(strided, expected)


@pytest.mark.parametrize("recipe", ["pretrain", "finetune", "crop_only", "eval"])
@pytest.mark.parametrize("frame_hw", [(36, 48), (72, 90)])  # exactly the resize target, and larger
def test_identical_frames_stay_identical(recipe, frame_hw):
    frame = torch.randint(0, 256, (1, 3, *frame_hw), dtype=torch.uint8)
    clip = frame.expand(8, -1, -1, -1)
    transform = T.ClipTransform(recipe, size=32, resize=(36, 48))
    for seed in range(6):
        out = transform(clip, np.random.default_rng(seed))
        assert out.shape == (3, 8, 32, 32) and out.dtype == torch.float32
        # up to a few float32 ulps (measured <= 1.5e-6 after normalisation): OpenCV rounds the last
        # pixels of a whole-clip call (its scalar tail) differently from its SIMD loop; different
        # parameters would differ by orders of magnitude more
        assert (out - out[:, :1]).abs().max() <= 1e-5, f"frames of one clip were augmented differently (seed {seed})"


def test_per_frame_jitter_option_changes_frames_differently():
    clip = torch.randint(0, 256, (1, 3, 36, 48), dtype=torch.uint8).expand(8, -1, -1, -1)
    transform = T.ClipTransform("finetune", size=32, resize=(36, 48), per_frame_jitter=True)
    outs = [transform(clip, np.random.default_rng(seed)) for seed in range(6)]
    assert any((o - o[:, :1]).abs().max() > 1e-3 for o in outs)


def test_one_crop_box_for_all_frames_and_frame_order_kept():
    clip = coordinate_clip()
    transform = T.ClipTransform("crop_only", size=32, resize=(40, 52), normalize=False)
    corners = set()
    for seed in range(20):
        out = (transform(clip, np.random.default_rng(seed)) * 255).round().long()  # (3, T, 32, 32)
        top, left = int(out[0, 0, 0, 0]), int(out[1, 0, 0, 0])
        corners.add((top, left))
        expected_rows = torch.arange(top, top + 32).view(32, 1).expand(32, 32)
        expected_cols = torch.arange(left, left + 32).view(1, 32).expand(32, 32)
        for t in range(clip.shape[0]):
            assert torch.equal(out[0, t], expected_rows) and torch.equal(out[1, t], expected_cols)
            assert (out[2, t] == 10 * t).all()
    assert len(corners) > 5  # the box is random, drawn once per clip


def test_finetune_flip_is_one_decision_per_clip():
    clip = coordinate_clip()
    # zero jitter strength makes the colour ops identities, so the column channel shows the flip
    transform = T.ClipTransform("finetune", size=32, resize=(40, 52), jitter_strength=(0, 0, 0, 0))
    flips = set()
    for seed in range(20):
        cols = (unnormalize(transform(clip, np.random.default_rng(seed)))[1] * 255).round()  # (T, 32, 32)
        step = cols[:, :, 1:] - cols[:, :, :-1]
        assert (step == 1).all() or (step == -1).all(), "frames of one clip flipped differently"
        flips.add(int(step[0, 0, 0]))
    assert flips == {-1, 1}


def test_crop_only_and_eval_keep_pixels_exactly():
    clip = torch.randint(0, 256, (5, 3, 40, 52), dtype=torch.uint8)
    out = T.ClipTransform("eval", size=32, resize=(40, 52))(clip, np.random.default_rng(0))
    expected = clip[:, :, 4:36, 10:42].float().permute(1, 0, 2, 3) / 255  # centre crop
    torch.testing.assert_close(unnormalize(out), expected, atol=1e-6, rtol=0)


def test_crop_is_torchvision_resize_then_crop_exactly():
    y = torch.linspace(0, 1, 80).view(80, 1)
    x = torch.linspace(0, 1, 104).view(1, 104)
    smooth = torch.stack([y * x, y.expand(80, 104), x.expand(80, 104)]) * 255
    noise = torch.randint(0, 256, (3, 80, 104), generator=torch.Generator().manual_seed(0))
    for source in (smooth.to(torch.uint8), noise.to(torch.uint8)):
        clip = decoded_like(source.unsqueeze(0).expand(2, -1, -1, -1))  # 2x the resize target, as decoded
        transform = T.ClipTransform("crop_only", size=32, resize=(40, 52), normalize=False)
        for top, left in [(0, 0), (8, 20), (3, 7)]:
            ours = torch.from_numpy(np.ascontiguousarray(transform.crop(clip.permute(0, 2, 3, 1).numpy(), top, left)))
            reference = TF.resize(clip, [40, 52], antialias=True)[..., top:top + 32, left:left + 32]
            assert torch.equal(ours.permute(0, 3, 1, 2), reference)


def test_resize_frames_shrinks_and_enlarges_as_torchvision_and_keeps_channels_last():
    transform = T.ClipTransform("crop_only", size=32, resize=(40, 52))
    for hw in ((80, 104), (24, 30)):
        clip = decoded_like(torch.randint(0, 256, (3, 3, *hw), dtype=torch.uint8))
        resized = transform.resize_frames(clip)
        assert torch.equal(resized, TF.resize(clip, [40, 52], antialias=True))
        assert resized.permute(0, 2, 3, 1).is_contiguous()  # apply() sees it as (T, H, W, 3) without a copy
    at_size = decoded_like(torch.zeros(2, 3, 40, 52, dtype=torch.uint8))
    assert transform.resize_frames(at_size) is at_size


def test_resize_quirk_swaps_height_and_width():
    transform = T.ClipTransform("eval", size=32, resize=(40, 52), resize_quirk=True)
    assert transform.resize_hw == (52, 40)
    tall = torch.randint(0, 256, (2, 3, 52, 40), dtype=torch.uint8)  # already W x H: a plain crop
    out = transform(tall, np.random.default_rng(0))
    torch.testing.assert_close(unnormalize(out), tall[:, :, 10:42, 4:36].float().permute(1, 0, 2, 3) / 255,
                               atol=1e-6, rtol=0)


def test_same_generator_state_same_output_and_draws_differ():
    clip = torch.randint(0, 256, (4, 3, 40, 52), dtype=torch.uint8)
    transform = T.ClipTransform("pretrain", size=32, resize=(40, 52))
    a = transform(clip, np.random.default_rng(7))
    assert torch.equal(a, transform(clip, np.random.default_rng(7)))
    assert not torch.equal(a, transform(clip, np.random.default_rng(8)))


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="--size"):
        T.ClipTransform("pretrain", size=200)
    with pytest.raises(ValueError, match="recipe"):
        T.ClipTransform("strong")


def test_colour_maps_apply_as_matrix_products():
    rng = np.random.default_rng(0)
    x = rng.random((4, 6, 7, 3), dtype=np.float32)
    shared = np.repeat(rng.normal(size=(1, 3, 4)), 4, axis=0)
    offsets_equal = shared.copy()
    offsets_equal[:, :, 3] += rng.normal(size=(4, 1))  # contrast-like: per-frame, same on every channel
    offsets_any = shared.copy()
    offsets_any[:, :, 3] += rng.normal(size=(4, 3))
    per_frame = rng.normal(size=(4, 3, 4))
    for maps in (shared, offsets_equal, offsets_any, per_frame):
        expected = np.einsum("tij,thwj->thwi", maps[..., :3], x) + maps[:, None, None, :, 3]
        np.testing.assert_allclose(T.apply_map(x.copy(), maps), expected, atol=1e-5, rtol=0)
        planes = np.empty((3, 4 * 6, 7), np.float32)
        T.ClipTransform._write_planes(x.copy(), maps, planes)
        np.testing.assert_allclose(planes.reshape(3, 4, 6, 7), expected.transpose(3, 0, 1, 2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="C-contiguous"):
        T.adjust_brightness(x[:, :, ::2], 0.5)


def test_no_hflip_never_mirrors_and_changes_no_other_draw():
    flipping = T.ClipTransform("finetune", size=32, resize=(36, 48))
    never = T.ClipTransform("finetune", size=32, resize=(36, 48), hflip=False)
    drawn = [(flipping.draw(np.random.default_rng(s), 8), never.draw(np.random.default_rng(s), 8)) for s in range(40)]
    assert any(a.flip for a, _ in drawn) and not any(b.flip for _, b in drawn)
    for a, b in drawn:
        assert (a.top, a.left) == (b.top, b.left)
        assert a.jitter_order == b.jitter_order
        for fa, fb in zip(a.jitter_factors, b.jitter_factors, strict=True):
            np.testing.assert_array_equal(fa, fb)
