"""Forgetting, measured: the ImageNet head back on a fine-tuned body, against the pretrained model.

Real Lite0 weights (offline, from a package) and real demo images, 64 px, a few of them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tl_core.analysis.forgetting import REFERENCE, imagenet_head, knowledge_kept, why_not_measured
from tl_core.data.demo import write_demo_data
from tl_core.errors import UserError
from tl_core.models.backbones import create_backbone, imagenet_model

NAME = "efficientnet_lite0"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return imagenet_model(NAME)


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """12 demo images in batches as the val loader yields them (normalised, channels_last), and an empty one."""
    out = tmp_path_factory.mktemp("forgetting")
    write_demo_data(out, datasets=("animals",), per_class=1, size=64)
    files = sorted((out / "animals").rglob("*.png"))
    pre = create_backbone(NAME, 10, weights="none").preprocessing
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    x = (x.float() / 255 - torch.tensor(pre.mean)[:, None, None]) / torch.tensor(pre.std)[:, None, None]
    x = torch.cat([x, x.flip(3)[:2]]).contiguous(memory_format=torch.channels_last)  # 12 images
    y = torch.arange(len(x)) % 10
    return [(x[:5], y[:5]), (x[:0], y[:0]), (x[5:], y[5:])]


def test_an_untouched_body_keeps_all_its_knowledge(reference, batches):
    bb = create_backbone(NAME, 10)  # ImageNet body, new random head
    out = knowledge_kept(bb, batches, CPU, reference=reference)
    assert out["agreement"] == 1.0 and out["top5"] == 1.0
    assert out["images"] == 12 and out["agreed"] == 12  # the empty batch is skipped
    assert out["reference"] == REFERENCE


def test_the_default_reference_is_the_pretrained_model(batches):
    assert knowledge_kept(create_backbone(NAME, 10), batches[:1], "cpu")["agreement"] == 1.0


def test_a_strongly_perturbed_body_forgets(reference, batches):
    bb = create_backbone(NAME, 10)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in bb.model.named_parameters():
            if not name.startswith(bb.spec.head_path + ".") and p.numel() > 1:
                p.add_(torch.randn_like(p) * p.std())
    out = knowledge_kept(bb, batches, CPU, reference=reference)
    assert out["images"] == 12 and out["agreement"] <= 0.5
    # The reference itself was not touched: an untouched body still agrees fully with it.
    assert knowledge_kept(create_backbone(NAME, 10), batches, CPU, reference=reference)["agreement"] == 1.0


def _freeze_like_finetuning(bb) -> dict[str, bool]:
    """Train mode with the stem's BatchNorm in eval (as a frozen group is); the modes by name."""
    bb.model.train()
    for m in bb.groups[0].modules():
        m.eval()
    return {name: m.training for name, m in bb.model.named_modules()}


def test_the_new_head_and_every_modules_mode_are_restored(reference, batches):
    bb = create_backbone(NAME, 10)
    head = bb.head
    x = batches[0][0]
    bb.model.eval()
    before = bb.model(x).detach()
    modes = _freeze_like_finetuning(bb)
    knowledge_kept(bb, batches, CPU, reference=reference)
    assert bb.head is head and bb.model.get_submodule(bb.spec.head_path) is head
    assert {name: m.training for name, m in bb.model.named_modules()} == modes
    assert not any(m is reference.get_submodule(bb.spec.head_path) for m in bb.model.modules())
    bb.model.eval()
    assert torch.equal(bb.model(x).detach(), before)  # 10 classes from the new head, as before
    assert before.shape == (5, 10)


def test_the_model_is_restored_when_a_batch_fails(reference, batches):
    bb = create_backbone(NAME, 10)
    head, modes = bb.head, _freeze_like_finetuning(bb)
    grey = (torch.zeros(2, 1, 64, 64), torch.zeros(2, dtype=torch.long))  # one channel: the stem refuses it
    with pytest.raises(RuntimeError):
        knowledge_kept(bb, [batches[0], grey], CPU, reference=reference)
    assert bb.head is head and {name: m.training for name, m in bb.model.named_modules()} == modes


def test_no_images_is_an_error_that_says_so(reference, batches):
    with pytest.raises(UserError, match="no images"):
        knowledge_kept(create_backbone(NAME, 10), [batches[1]], CPU, reference=reference)


def test_imagenet_head_is_the_pretrained_classifier(reference):
    head = imagenet_head(NAME)
    assert not head.training and head.out_features == 1000
    assert torch.equal(head.weight, reference.get_submodule("classifier").weight)


def test_why_not_measured_names_the_reason(tmp_path):
    assert why_not_measured(create_backbone(NAME, 10)) is None
    assert "random" in why_not_measured(create_backbone(NAME, 10, weights="none"))
    assert "RGB" in why_not_measured(create_backbone(NAME, 10), in_channels=1)
    path = tmp_path / "body.pt"
    torch.save(create_backbone(NAME, 10).model.state_dict(), path)
    from_file = create_backbone(NAME, 10, weights=str(path))
    assert "not ImageNet" in why_not_measured(from_file) and str(path) in why_not_measured(from_file)
    with pytest.raises(UserError, match="random weights"):
        knowledge_kept(create_backbone(NAME, 10, weights="none"), [], CPU)
