"""Fine-tuning with encoder null-space noise on a tiny random ViT."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from sing_audit.finetune import FinetuneHistory, NullNoiseOptions, finetune_with_null_noise  # noqa: E402

FAST = {"max_rounds": 3, "noise_steps": 4, "growth": 2.0, "calibration_images": 4, "lr": 1e-3, "weight_decay": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _vit(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=3)


def _batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 3


def test_loss_decreases_and_parameters_change_on_a_fixed_batch():
    model = _vit()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    batch = _batch()
    history = finetune_with_null_noise(model, [batch], steps=12, noise_prob=0.5, **FAST)
    assert isinstance(history, FinetuneHistory) and len(history.steps) == 12
    losses = np.array([s.clean_loss for s in history.steps])
    assert np.isfinite(losses).all() and np.isfinite([s.loss for s in history.steps]).all()
    assert losses[-3:].mean() < 0.7 * losses[:3].mean()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "head.weight" in changed and "patch_embed.proj.weight" in changed
    # the noise was fitted once and is not zero; about half the steps used it
    assert len(history.noise_fits) == 1 and history.noise_fits[0].norm >= 1.0
    assert 0 < history.noised_steps < 12
    # no hook is left behind and the mode is restored (timm models start in train mode)
    assert not model.patch_embed._forward_hooks and model.training


def test_noise_is_added_after_the_patch_embedding_exactly_when_recorded():
    model = _vit()
    seen: list[tuple[bool, torch.Tensor]] = []
    raw: list[torch.Tensor] = []
    # registered before the fine-tuning hook: sees the patch embedding's own output
    model.patch_embed.register_forward_hook(lambda m, i, o: raw.append(o.detach().clone()))
    prefix = model.num_prefix_tokens

    def tokens(module, inputs, output):
        x = inputs[0].detach()[:, prefix:] - model.pos_embed.detach()[:, prefix:]
        seen.append((model.training, x - raw[-1]))

    model.pos_drop.register_forward_hook(tokens)
    history = finetune_with_null_noise(model, [_batch()], steps=6, noise_prob=0.5, **FAST)
    train_diffs = [d for training, d in seen if training]
    # one clean forward per step, plus one noised forward per noised step
    assert len(train_diffs) == 6 + history.noised_steps
    norms = [float(d[0].norm()) for d in train_diffs]
    added = [n for n in norms if n > 1e-4]
    assert len(added) == history.noised_steps > 0
    expected = [s.noise_norm for s in history.steps if s.noised]
    assert np.allclose(added, expected, rtol=1e-4)
    # the same noise for every image of the batch
    for d in train_diffs:
        assert torch.allclose(d, d[:1].expand_as(d), atol=1e-5)


def test_noise_prob_zero_is_plain_fine_tuning():
    model = _vit()
    history = finetune_with_null_noise(model, [_batch()], steps=3, noise_prob=0.0, **FAST)
    assert history.noised_steps == 0 and all(s.noised_loss is None and s.loss == s.clean_loss for s in history.steps)


def test_deterministic_with_a_seed():
    runs = []
    for _ in range(2):
        model = _vit()
        h = finetune_with_null_noise(model, [_batch(0), _batch(1)], steps=5, seed=3, **FAST)
        runs.append((h, model.head.weight.detach().clone()))
    assert runs[0][0].model_dump() == runs[1][0].model_dump()
    assert torch.equal(runs[0][1], runs[1][1])
    other = finetune_with_null_noise(_vit(), [_batch(0), _batch(1)], steps=5, seed=4, **FAST)
    assert [s.noised for s in other.steps] != [s.noised for s in runs[0][0].steps] or \
        [s.noise_norm for s in other.steps] != [s.noise_norm for s in runs[0][0].steps]


def test_options_are_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        NullNoiseOptions(noise_prob=2.0)
    with pytest.raises(ValidationError, match="bogus"):
        finetune_with_null_noise(_vit(), [_batch()], steps=1, bogus=1)
    with pytest.raises(ValueError, match="patch_embed"):
        finetune_with_null_noise(torch.nn.Linear(3, 3), [_batch()], steps=1)


def test_the_documented_recipe_runs():
    """The example in docs/input-space.md runs as written."""
    import contextlib
    import io
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "input-space.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    code = next(b for b in blocks if "finetune_with_null_noise" in b)
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/input-space.md", "exec"), scope)
    history = scope["history"]
    assert len(history.steps) == 4 and out.getvalue().startswith("noise norm ")
