"""Guard: the models the tests serve answer like trained ones, or every "equals eager" is void.

If a fixture model gave one class for every image, any preprocessing mistake, reordered batch or
swapped class list would still produce "the same answer". These checks fail first in that case.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import encode, gradient_rgb, real_images, reference_probabilities

IMAGES = [p.read_bytes() for p in real_images()]
MIN_MARGIN = 0.15  # top-1 minus runner-up probability, on every parity image


@pytest.fixture(params=["exported_cover", "exported_screens", "exported_small"])
def fixture_model(request):
    return request.getfixturevalue(request.param)


def test_every_class_is_someones_answer(fixture_model):
    probabilities = reference_probabilities(
        fixture_model.model, IMAGES, fixture_model.meta.preprocess
    )
    top1 = probabilities.argmax(1).tolist()
    assert sorted(set(top1)) == list(range(fixture_model.meta.num_classes)), top1


def test_answers_are_clear_but_not_saturated(fixture_model):
    probabilities = reference_probabilities(
        fixture_model.model, IMAGES, fixture_model.meta.preprocess
    )
    ordered = probabilities.sort(dim=1, descending=True).values
    margins = ordered[:, 0] - ordered[:, 1]
    assert margins.min() >= MIN_MARGIN, margins  # a 1-grey-level resize difference can't flip it
    assert ordered[:, 0].max() < 0.999, ordered[:, 0]  # probabilities still move with the input


def test_answers_change_with_the_input(fixture_model):
    """Unseen inputs too: a flat card, a gradient and the same gradient mirrored differ."""
    card = gradient_rgb(320, 240)
    unseen = [
        encode(card, "PNG"),
        encode(card.transpose(0), "PNG"),  # mirrored left-right
        encode(gradient_rgb(240, 320).rotate(90, expand=True), "PNG"),
    ]
    probabilities = reference_probabilities(
        fixture_model.model, unseen, fixture_model.meta.preprocess
    )
    assert torch.cdist(probabilities, probabilities).fill_diagonal_(1).min() > 0.01
