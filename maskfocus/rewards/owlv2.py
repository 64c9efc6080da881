"""Open-vocabulary object detection with OWLv2 (Minderer et al., "Scaling Open-Vocabulary Object Detection",
NeurIPS 2023) from a local transformers folder, producing GenEval `Detection`s per class.

Each image patch predicts one box and a sigmoid score per text query; like transformers'
`post_process_object_detection`, a box takes the class of its best query. The query embeddings of all classes
("a photo of a {class}") are computed once and reused, so the 80 COCO classes cost one dot product per patch.
Per-class non-maximum suppression then removes the duplicates that neighbouring patches predict (Mask2Former,
the reference detector, predicts instances and needs none). Colours are left to `colors.ColorClassifier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from maskfocus.models.base import ModelLoadError
from maskfocus.rewards.geneval import Detection

QUERY_TEMPLATE = "a photo of a {}"
"""Text query per class, as in the OWL-ViT / OWLv2 examples."""


class Owlv2Detector:
    """OWLv2 over a fixed class list; `detect_batch` maps uint8 (B, H, W, 3) images to {class: [Detection]}."""

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        class_names: Sequence[str],
        device: str | torch.device = "cpu",
        nms_iou: float = 0.5,
        min_score: float = 0.1,
        batch_size: int = 16,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.class_names = list(class_names)
        self.nms_iou = nms_iou
        self.min_score = min_score
        self.batch_size = batch_size
        self._queries: torch.Tensor | None = None

    @classmethod
    def from_folder(cls, path: str | Path, class_names: Sequence[str], field: str = "path", **kwargs) -> Owlv2Detector:
        """Model, tokenizer and image processor from one local folder (a copy of google/owlv2-*)."""
        from transformers import AutoImageProcessor, AutoTokenizer, Owlv2ForObjectDetection

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{field}: no OWLv2 folder (config.json) at {folder}")
        try:
            model = Owlv2ForObjectDetection.from_pretrained(str(folder), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            image_processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        except Exception as error:
            raise ModelLoadError(f"{field}: cannot load OWLv2 from {folder}: {type(error).__name__}: {error}") from None
        return cls(model, tokenizer, image_processor, class_names, **kwargs)

    def query_embeddings(self) -> torch.Tensor:
        """Projected text embeddings of every class query, (Q, D); computed once."""
        if self._queries is None:
            max_length = self.model.config.text_config.max_position_embeddings
            tokens = self.tokenizer(
                [QUERY_TEMPLATE.format(name) for name in self.class_names],
                padding="max_length",
                max_length=max_length,
                truncation=True,
                return_tensors="pt",
            ).to(self.device)
            with torch.no_grad():
                text = self.model.owlv2.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
                self._queries = self.model.owlv2.text_projection(text.pooler_output)
        return self._queries

    @torch.no_grad()
    def predict(self, images_BHWC: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per patch P: best-class score (B, P), class index (B, P), box (B, P, 4) as cxcywh in [0, 1] of the
        image padded to a square at the bottom/right (OWLv2's preprocessing)."""
        pixels = self.image_processor(images=list(images_BHWC), return_tensors="pt").pixel_values.to(self.device)
        feature_map, _ = self.model.image_embedder(pixel_values=pixels)
        batch, height, width, dim = feature_map.shape
        image_feats = feature_map.reshape(batch, height * width, dim)
        queries = self.query_embeddings()[None].expand(batch, -1, -1)
        query_mask = torch.ones(queries.shape[:2], dtype=torch.bool, device=self.device)
        logits, _ = self.model.class_predictor(image_feats, queries, query_mask)
        boxes = self.model.box_predictor(image_feats, feature_map)
        scores, labels = torch.sigmoid(logits).max(-1)
        return scores, labels, boxes

    def detect_batch(self, images_BHWC: np.ndarray | Sequence[np.ndarray]) -> list[dict[str, list[Detection]]]:
        """Detections of each image by class, best first; classes without detections are left out."""
        images = np.asarray(images_BHWC)
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            scores, labels, boxes = self.predict(chunk)
            for index, image in enumerate(chunk):
                results.append(self._to_detections(scores[index], labels[index], boxes[index], image.shape[:2]))
        return results

    def _to_detections(
        self, scores_P: torch.Tensor, labels_P: torch.Tensor, boxes_P4: torch.Tensor, size: tuple[int, int]
    ) -> dict[str, list[Detection]]:
        """Threshold at min_score, pixel xyxy boxes clipped to the image, per-class NMS, grouped by class. A box
        that starts past the image's right or bottom edge lies in the padding OWLv2 adds to a non-square image (the
        clipping left it no area): not an object; nor is a NaN box."""
        from torchvision.ops import batched_nms, box_convert

        height, width = size
        keep = scores_P > self.min_score
        scores, labels = scores_P[keep], labels_P[keep]
        boxes = box_convert(boxes_P4[keep], "cxcywh", "xyxy") * max(height, width)
        inside = (boxes[:, 0] < width) & (boxes[:, 1] < height)  # False for a NaN box too
        scores, labels, boxes = scores[inside], labels[inside], boxes[inside]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        if self.nms_iou < 1.0:
            kept = batched_nms(boxes, scores, labels, self.nms_iou)
            scores, labels, boxes = scores[kept], labels[kept], boxes[kept]
        detections: dict[str, list[Detection]] = {}
        for order in torch.argsort(scores, descending=True).tolist():
            name = self.class_names[int(labels[order])]
            box = tuple(float(v) for v in boxes[order].tolist())
            detections.setdefault(name, []).append(Detection(box=box, score=float(scores[order])))
        return detections
