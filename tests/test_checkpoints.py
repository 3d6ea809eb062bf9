"""Every checkpoint format users bring loads to a model that computes what the original did."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from export.architectures import ArchitectureError
from export.checkpoint import CheckpointError, load_checkpoint, strip_prefixes
from tests.helpers import (
    COVER_CLASSES,
    SMALL_ARCH,
    cover_efficientnet_v2_s,
    cover_resnet50,
    eager_logits,
    screenshot_resnet50,
    small_model,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def cover():
    return cover_resnet50()


@pytest.fixture(scope="module")
def screens():
    return screenshot_resnet50()


def same_function(original: nn.Module, loaded: nn.Module, batch: torch.Tensor) -> bool:
    return torch.allclose(eager_logits(original, batch), eager_logits(loaded, batch), atol=1e-5)


def test_whole_pickled_module_needs_the_trust_flag(tmp_path, cover, batch):
    path = tmp_path / "cover.pth"
    torch.save(cover, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(path, arch="resnet50")
    loaded = load_checkpoint(path, arch="resnet50", trust=True)
    assert loaded.format == "pickled-module"
    assert same_function(cover, loaded.model, batch)


def test_screenshot_format_with_model_prefix(tmp_path, screens, batch):
    path = tmp_path / "screens.pth"
    torch.save({"model_state_dict": screens.state_dict(), "val_acc": 0.87}, path)
    assert next(iter(screens.state_dict())).startswith("model.")
    loaded = load_checkpoint(path, arch="resnet50")
    assert loaded.format == "state-dict-in-model_state_dict"
    assert loaded.extras == {"val_acc": 0.87}
    assert loaded.model(batch).shape == (2, 7)
    assert same_function(screens, loaded.model, batch)


def test_plain_state_dict_with_sequential_head(tmp_path, cover, batch):
    path = tmp_path / "cover_sd.pth"
    torch.save(cover.state_dict(), path)
    assert "fc.1.weight" in cover.state_dict()
    loaded = load_checkpoint(path, arch="resnet50")
    assert loaded.format == "state-dict"
    assert isinstance(loaded.model.fc, nn.Sequential)
    assert same_function(cover, loaded.model, batch)


def test_dataparallel_prefix_under_state_dict_key(tmp_path, cover, batch):
    wrapped = {f"module.{k}": v for k, v in cover.state_dict().items()}
    path = tmp_path / "dp.pth"
    torch.save({"state_dict": wrapped, "epoch": 12, "classes": COVER_CLASSES}, path)
    loaded = load_checkpoint(path, arch="resnet50")
    assert loaded.format == "state-dict-in-state_dict"
    assert loaded.class_names == COVER_CLASSES
    assert same_function(cover, loaded.model, batch)


def test_efficientnet_v2_s_variant(tmp_path, batch):
    model = cover_efficientnet_v2_s()
    path = tmp_path / "effnet.pth"
    torch.save({"model_state_dict": model.state_dict()}, path)
    loaded = load_checkpoint(path, arch="efficientnet_v2_s")
    assert loaded.model(batch).shape == (2, 5)
    assert same_function(model, loaded.model, batch)


def test_torchscript_file(tmp_path, batch):
    model = small_model()
    path = tmp_path / "model.ts"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, batch), str(path))
    with pytest.raises(CheckpointError, match=r"TorchScript file.*--trust-checkpoint"):
        load_checkpoint(path)  # a TorchScript file carries code, like a pickle
    loaded = load_checkpoint(path, trust=True)
    assert loaded.format == "torchscript" and loaded.is_torchscript
    assert same_function(model, loaded.model, batch)


def test_class_names_in_index_order(tmp_path):
    model = small_model(num_classes=3)
    path = tmp_path / "m.pth"
    torch.save({"state_dict": model.state_dict(), "class_to_idx": {"b": 1, "a": 0, "c": 2}}, path)
    assert load_checkpoint(path, arch=SMALL_ARCH).class_names == ["a", "b", "c"]


def test_num_classes_comes_from_the_weights(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(small_model(num_classes=11).state_dict(), path)
    loaded = load_checkpoint(path, arch=SMALL_ARCH)
    assert loaded.model(torch.randn(1, 3, 224, 224)).shape == (1, 11)


def test_weights_without_arch_say_so(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(small_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="--arch"):
        load_checkpoint(path)


def test_wrong_architecture_is_explained(tmp_path, cover):
    path = tmp_path / "cover_sd.pth"
    torch.save(cover.state_dict(), path)
    with pytest.raises(ArchitectureError, match="resnet18"):
        load_checkpoint(path, arch="resnet18")


def test_unknown_architecture(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(small_model().state_dict(), path)
    with pytest.raises(ArchitectureError, match="unknown architecture"):
        load_checkpoint(path, arch="resnet9000")


def test_multi_layer_head_is_refused_clearly(tmp_path):
    model = torch.nn.Sequential()  # placeholder to build a state dict by hand
    state = cover_resnet50().state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    state.update(
        {
            "fc.0.weight": torch.zeros(256, 2048),
            "fc.0.bias": torch.zeros(256),
            "fc.2.weight": torch.zeros(5, 256),
            "fc.2.bias": torch.zeros(5),
        }
    )
    path = tmp_path / "mlp_head.pth"
    torch.save(state, path)
    del model
    with pytest.raises(ArchitectureError, match=r"fc\.2"):
        load_checkpoint(path, arch="resnet50")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(path, arch="resnet50")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth", arch="resnet50")


def test_strip_prefixes_only_when_every_key_shares_one():
    t = torch.zeros(1)
    assert list(strip_prefixes({"module.model.fc.weight": t, "module.model.fc.bias": t})) == [
        "fc.weight",
        "fc.bias",
    ]
    assert list(strip_prefixes({"model.a": t, "head.b": t})) == ["model.a", "head.b"]
