"""The audit's images as the run's service: tensors for probes, thumbnails for the report."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..store import atomic_write_bytes
from .devices import ModelLoader

__all__ = ["THUMBNAIL_PX", "ImageSource"]

THUMBNAIL_PX = 112


class ImageSource:
    """The dataset's images ``records`` (``None``: the audit has no images at hand)."""

    def __init__(self, dataset, records, loader: ModelLoader):
        self.dataset, self.records, self.loader = dataset, records, loader
        self._by_id = {r.image_id: r for r in records} if records is not None else {}

    def loader_for(self, backbone, frows: np.ndarray):
        """``rows -> k×C×H×W`` tensor on the run's device: the analysed images ``rows``
        (indices into the aligned rows ``frows``) as ``backbone.features`` receives them
        (what probes get as ``ctx.images``)."""
        import torch

        transform = backbone.transform()

        def images(rows) -> "torch.Tensor":
            picked = [self.records[int(frows[int(r)])] for r in np.atleast_1d(np.asarray(rows))]
            return torch.stack([transform(self.dataset.open(rec)) for rec in picked]).to(self.loader.device)

        return images

    def thumbnail(self, image_id: str, out: Path) -> str | None:
        """Write a small JPEG of one dataset image into the output folder ``out`` (once);
        its path relative to ``out``, or ``None`` when the image is not at hand."""
        record = self._by_id.get(image_id)
        if record is None:
            return None
        rel = f"thumbnails/{hashlib.sha256(record.image_id.encode()).hexdigest()[:20]}.jpg"
        path = out / rel
        if path.is_file():
            return rel
        try:
            img = self.dataset.open(record)
        except DataError:
            return None
        img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        atomic_write_bytes(path, buf.getvalue())
        return rel
