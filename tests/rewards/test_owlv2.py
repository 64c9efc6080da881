"""Tests for maskfocus.rewards.owlv2: OWLv2 detections per class from a local folder (tiny random model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskfocus.models.base import ModelLoadError
from maskfocus.rewards.owlv2 import QUERY_TEMPLATE, Owlv2Detector


@pytest.fixture(scope="module")
def detector(tiny_owlv2_folder, object_names) -> Owlv2Detector:
    return Owlv2Detector.from_folder(tiny_owlv2_folder, object_names, min_score=0.0, batch_size=2)


def _images(count: int, height: int = 24, width: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def test_cached_queries_give_the_same_scores_and_boxes_as_the_transformers_forward(detector, object_names):
    images = _images(2)
    scores, labels, boxes = detector.predict(images)
    queries = [QUERY_TEMPLATE.format(name) for name in object_names] * 2
    text = detector.tokenizer(queries, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    pixels = detector.image_processor(images=list(images), return_tensors="pt").pixel_values
    with torch.no_grad():
        output = detector.model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels)
    best, best_label = torch.sigmoid(output.logits).max(-1)
    torch.testing.assert_close(scores, best)
    assert torch.equal(labels, best_label)
    torch.testing.assert_close(boxes, output.pred_boxes)


def test_detect_batch_gives_known_classes_with_boxes_inside_the_image(detector, object_names):
    images = _images(3, height=18, width=30)
    results = detector.detect_batch(images)
    assert len(results) == 3 and any(results)
    for detections in results:
        assert set(detections) <= set(object_names)
        for found in detections.values():
            assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
            for d in found:
                x0, y0, x1, y1 = d.box
                assert 0 <= x0 <= x1 <= 30 and 0 <= y0 <= y1 <= 18 and d.color is None
    one_batch = Owlv2Detector(detector.model, detector.tokenizer, detector.image_processor, object_names, min_score=0.0)
    for whole, chunked in zip(one_batch.detect_batch(images), results, strict=True):  # batch_size 16 vs 2
        assert {k: pytest.approx([d.score for d in v], abs=1e-5) for k, v in whole.items()} == {
            k: [d.score for d in v] for k, v in chunked.items()
        }


def test_boxes_are_scaled_to_the_padded_square_thresholded_and_suppressed_per_class():
    dummy = Owlv2Detector(torch.nn.Identity(), None, None, ["cat", "dog"], nms_iou=0.5, min_score=0.3)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.2, 0.6])
    labels = torch.tensor([0, 0, 1, 0, 0])
    boxes = torch.tensor(
        [
            [0.25, 0.25, 0.2, 0.2],  # cat
            [0.26, 0.25, 0.2, 0.2],  # the same cat again: suppressed
            [0.25, 0.25, 0.2, 0.2],  # a dog at the same place: another class, kept
            [0.75, 0.25, 0.1, 0.1],  # below min_score
            [0.95, 0.1, 0.2, 0.1],  # a second cat, clipped at the right edge
        ]
    )
    detections = dummy._to_detections(scores, labels, boxes, (10, 20))  # (H, W); OWLv2 pads to a 20-px square
    assert [d.score for d in detections["cat"]] == pytest.approx([0.9, 0.6])
    assert detections["cat"][0].box == pytest.approx((3.0, 3.0, 7.0, 7.0))
    assert detections["cat"][1].box == pytest.approx((17.0, 1.0, 20.0, 3.0))
    assert [d.score for d in detections["dog"]] == pytest.approx([0.7])


def test_a_box_in_the_padding_of_a_non_square_image_or_a_nan_box_is_not_an_object():
    """OWLv2 pads a 10 x 20 image to a 20-px square at the bottom; clipped to the image, a box in the padding kept no
    area and was counted."""
    dummy = Owlv2Detector(torch.nn.Identity(), None, None, ["cat", "dog"], nms_iou=0.5, min_score=0.3)
    scores = torch.tensor([0.6, 0.9, 0.8, 0.7])
    labels = torch.tensor([1, 1, 0, 0])
    boxes = torch.tensor([[0.5, 0.25, 0.2, 0.2], [0.5, 0.9, 0.4, 0.1], [float("nan")] * 4, [0.25, 0.25, 0.0, 0.1]])
    detections = dummy._to_detections(scores, labels, boxes, (10, 20))
    assert [d.score for d in detections["dog"]] == pytest.approx([0.6])
    # a box of no width inside the image stays (a random tiny OWLv2's boxes are such, by float rounding)
    assert [d.box for d in detections["cat"]] == [pytest.approx((5.0, 4.0, 5.0, 6.0))]


def test_missing_folder_names_the_field_and_path(tmp_path):
    with pytest.raises(ModelLoadError, match=rf"rewards\[0\]\.detector\.path: no OWLv2 folder .* at {tmp_path}"):
        Owlv2Detector.from_folder(tmp_path, ["cat"], field="rewards[0].detector.path")
