"""The backbone registry: layer groups, heads, weights from every source, preprocessing."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tl_core.data.transforms import build_transforms
from tl_core.errors import UserError
from tl_core.models import backbones, weights


def _build(name: str, classes: int, **kw):
    try:
        return backbones.create_backbone(name, classes, weights="none", device="meta", **kw)
    except NotImplementedError:  # RegNet's builder computes with real tensors
        return backbones.create_backbone(name, classes, weights="none", **kw)


@pytest.mark.parametrize("name", backbones.list_backbones())
def test_groups_cover_every_parameter_once_and_head_is_new(name):
    bb = _build(name, 7)
    assert tuple(g.name for g in bb.groups) == (*bb.spec.body_groups, "head")
    in_groups = [id(p) for g in bb.groups for p in g.parameters()]
    assert len(in_groups) == len(set(in_groups)), "a parameter sits in two groups"
    assert set(in_groups) == {id(p) for p in bb.model.parameters()}, "a parameter sits in no group"
    assert all(g.num_params() > 0 for g in bb.groups)
    assert isinstance(bb.head, nn.Linear) and bb.head.out_features == 7
    assert bb.groups[-1].parts == [bb.head]


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "vit_b_16"])
def test_mlp_head(name):
    bb = _build(name, 5, head="mlp", hidden=64, dropout=0.3)
    kinds = [type(m) for m in bb.head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert bb.head[0].out_features == 64 and bb.head[2].p == 0.3 and bb.head[3].out_features == 5


def _imagenet_top1(model: nn.Module, image: np.ndarray) -> int:
    pre = backbones.preprocessing("efficientnet_lite0")
    _, val_tf = build_transforms(pre, 224)
    with torch.inference_mode():
        return int(model(val_tf(Image.fromarray(image)).unsqueeze(0)).argmax())


def test_offline_lite0_classifies_chelsea_as_a_cat_and_coffee_as_espresso():
    import skimage.data

    model = backbones.imagenet_model("efficientnet_lite0")
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    # ImageNet 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso.
    assert _imagenet_top1(model, skimage.data.chelsea()) in {281, 282, 285}
    assert _imagenet_top1(model, skimage.data.coffee()) == 967


def test_create_backbone_loads_the_same_pretrained_body():
    full = backbones.imagenet_model("efficientnet_lite0").state_dict()
    bb = backbones.create_backbone("efficientnet_lite0", 3)
    ours = bb.model.state_dict()
    body = [k for k in full if not k.startswith("classifier.")]
    assert body and all(torch.equal(ours[k], full[k]) for k in body)
    assert bb.weights == "imagenet"


def test_lite_preprocessing_comes_from_the_weights():
    pre = backbones.preprocessing("efficientnet_lite0")
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)
    assert pre.interpolation == "bicubic" and pre.crop_pct == 0.875
    tv = backbones.preprocessing("resnet18")
    assert tv.mean == (0.485, 0.456, 0.406) and tv.interpolation == "bilinear"


def test_torchvision_weights_from_cache_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert weights.availability("resnet18") == "needs download"
    reference = backbones.create_backbone("resnet18", 4, weights="none").model
    sd = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    sd |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    url = weights._tv_weights(backbones.get_spec("resnet18")).url
    path = weights._cached_path(url)
    os.makedirs(os.path.dirname(path))
    torch.save(sd, path)
    assert weights.availability("resnet18") == "cached"
    bb = backbones.create_backbone("resnet18", 4, weights="imagenet")
    assert torch.equal(bb.model.conv1.weight, sd["conv1.weight"])
    assert torch.equal(bb.model.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])


def test_offline_miss_names_the_fix(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(UserError, match="--weights PATH"):
        backbones.create_backbone("resnet18", 4, weights="imagenet")


def test_weights_from_a_local_file_and_a_wrong_file(tmp_path):
    src = backbones.create_backbone("resnet18", 4, weights="none").model
    good = tmp_path / "resnet18.pt"
    torch.save({"model": src.state_dict()}, good)  # a TransferLab-style checkpoint
    bb = backbones.create_backbone("resnet18", 9, weights=str(good))
    assert torch.equal(bb.model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    assert bb.head.out_features == 9
    wrong = tmp_path / "lite.pt"
    torch.save(backbones.create_backbone("efficientnet_lite0", 4, weights="none").model.state_dict(), wrong)
    with pytest.raises(UserError, match="does not fit resnet18"):
        backbones.create_backbone("resnet18", 4, weights=str(wrong))
    with pytest.raises(UserError, match="no such file"):
        backbones.create_backbone("resnet18", 4, weights=str(tmp_path / "missing.pt"))


def test_offline_weights_availability():
    assert weights.availability("efficientnet_lite0") == "offline"
    assert weights.availability("efficientnet_lite1") == "offline"
    with pytest.raises(UserError, match="unknown backbone"):
        weights.availability("resnet9000")
