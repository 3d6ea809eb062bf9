"""modelspec.architectures: the registry, building by name, and the classifier head."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from export.architectures import ArchitectureError, build_for_state_dict, load_strict
from modelspec.architectures import (
    ARCHITECTURES,
    LITE0_MEAN,
    Architecture,
    HeadNotFoundError,
    UnknownArchitectureError,
    create_architecture,
    head_path,
    known_architectures,
    replace_head,
    split_backbone,
)
from modelspec.meta import IMAGENET_MEAN

SMALL_INPUT = (1, 3, 64, 64)


def forward(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(*SMALL_INPUT, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """create_architecture never fetches weights: any attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_registry_names_the_project_architectures():
    assert set(ARCHITECTURES) == {"efficientnet_lite0", "resnet50", "efficientnet_v2_s"}
    for name, architecture in ARCHITECTURES.items():
        assert isinstance(architecture, Architecture) and architecture.name == name
    lite0 = ARCHITECTURES["efficientnet_lite0"]
    assert lite0.model_name == "timm/tf_efficientnet_lite0"  # what checkpoints record
    assert lite0.mean == lite0.std == LITE0_MEAN == (0.5, 0.5, 0.5)
    assert lite0.bundled_weights
    resnet = ARCHITECTURES["resnet50"]
    assert (resnet.model_name, resnet.head, resnet.classifier) == ("resnet50", "fc", "fc")
    assert resnet.mean == IMAGENET_MEAN and not resnet.bundled_weights
    v2s = ARCHITECTURES["efficientnet_v2_s"]
    assert (v2s.head, v2s.classifier) == ("classifier.1", "classifier")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_each_registered_architecture_builds_with_its_head_resized(name):
    architecture = ARCHITECTURES[name]
    model = create_architecture(name, num_classes=5)
    assert head_path(model) == architecture.head
    head = model.get_submodule(architecture.head)
    assert isinstance(head, nn.Linear) and head.out_features == 5
    assert forward(model).shape == (1, 5)
    # The registry entry builds the same model as its recorded model name.
    torch.manual_seed(0)
    by_entry = architecture.create(num_classes=5)
    torch.manual_seed(0)
    by_model_name = create_architecture(architecture.model_name, num_classes=5)
    assert by_entry.state_dict().keys() == by_model_name.state_dict().keys()
    for key, value in by_entry.state_dict().items():
        assert torch.equal(value, by_model_name.state_dict()[key]), key


def test_without_num_classes_the_head_is_the_architectures_own():
    assert head_path(create_architecture("resnet18")) == "fc"
    assert create_architecture("resnet18").fc.out_features == 1000


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet18", "fc"),
        ("efficientnet_b0", "classifier.1"),
        ("mobilenet_v3_small", "classifier.3"),  # Linear, Hardswish, Dropout, Linear
        ("timm/tf_efficientnet_lite0", "classifier"),
    ],
)
def test_head_path_is_the_last_linear(name, expected):
    assert head_path(create_architecture(name)) == expected


def test_head_path_of_a_custom_model_and_of_one_without_linear():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    assert head_path(model) == "3"
    with pytest.raises(HeadNotFoundError, match="Sequential has no Linear classifier head"):
        head_path(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_replace_head_changes_the_output_and_nothing_else():
    torch.manual_seed(0)
    model = create_architecture("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert forward(model).shape == (1, 1000)
    assert replace_head(model, 7) is model
    assert forward(model).shape == (1, 7)
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 512
    assert model.fc.bias is not None and model.fc.bias.shape == (7,)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        if not key.startswith("fc."):
            assert torch.equal(after[key], value), key


def test_replace_head_inside_a_container_keeps_the_container():
    model = create_architecture("mobilenet_v3_small")
    replace_head(model, 4)
    assert isinstance(model.classifier, nn.Sequential) and len(model.classifier) == 4
    assert model.classifier[3].out_features == 4 and model.classifier[0].out_features == 1024
    assert forward(model).shape == (1, 4)


def test_replace_head_keeps_a_bias_free_head_bias_free():
    model = replace_head(nn.Sequential(nn.Flatten(), nn.Linear(12, 3, bias=False)), 2)
    assert model[1].bias is None and model[1].out_features == 2


def test_unknown_names_are_refused_clearly():
    with pytest.raises(UnknownArchitectureError, match=r"unknown architecture 'resnet9000'.*timm/"):
        create_architecture("resnet9000")
    with pytest.raises(UnknownArchitectureError, match="timm has no model 'no_such_net'"):
        create_architecture("timm/no_such_net", num_classes=3)
    assert issubclass(UnknownArchitectureError, ValueError)


def test_known_architectures_lists_registry_and_torchvision_names():
    names = known_architectures()
    assert names == sorted(names)
    assert set(ARCHITECTURES) <= set(names)
    assert {"resnet18", "mobilenet_v3_small", "vit_b_16"} <= set(names)
    assert "fasterrcnn_resnet50_fpn" not in names  # classification models only


def test_split_backbone_returns_pooled_features():
    model, width = split_backbone(create_architecture("efficientnet_b0", 3), "classifier")
    assert width == 1280 and isinstance(model.classifier, nn.Identity)
    assert forward(model).shape == (1, 1280)
    model, width = split_backbone(create_architecture("resnet18"), "fc")
    assert width == 512 and forward(model).shape == (1, 512)


def test_torchvision_pretrained_loads_the_weights_file(tmp_path, capsys):
    torch.manual_seed(1)
    source = create_architecture("resnet50")
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    loaded = ARCHITECTURES["resnet50"].pretrained(path)
    assert torch.equal(loaded.fc.weight, source.fc.weight)
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    random_init = ARCHITECTURES["resnet50"].pretrained(None)
    assert not torch.equal(random_init.conv1.weight, source.conv1.weight)
    assert capsys.readouterr().out == ""  # warnings about missing weights are training's


def test_export_builds_registry_names_and_keeps_its_own_errors():
    source = create_architecture("efficientnet_lite0", num_classes=3)
    state = source.state_dict()
    model = build_for_state_dict("efficientnet_lite0", state)
    load_strict(model, state, "efficientnet_lite0")
    assert model.classifier.out_features == 3
    with pytest.raises(ArchitectureError, match="unknown architecture 'resnet9000'"):
        build_for_state_dict("resnet9000", state)


def test_importing_modelspec_architectures_is_cheap():
    code = (
        "import sys, modelspec.architectures; "
        "print(sorted(m for m in ('torchvision', 'timm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
