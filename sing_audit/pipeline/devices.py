"""The run's device, and each model loaded onto it once."""

from __future__ import annotations

from .extraction import resolve_device, to_channels_last

__all__ = ["ModelLoader"]


class ModelLoader:
    """Resolves ``run.device`` on first use (``cuda:<local rank>`` for a torchrun worker)
    and loads each model once, only when something needs it (a cache miss, a probe);
    ``channels_last`` (``run.channels_last``): converts each loaded model's modules to
    ``torch.channels_last``, as extraction passes its batches."""

    def __init__(self, device: str, local_rank: int | None = None, channels_last: bool = False):
        self._requested = device
        self.channels_last = channels_last
        self._local_rank = local_rank
        self._device: str | None = None
        self._loaded: set[int] = set()

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self._requested)
            if self._local_rank is not None and self._device == "cuda":
                self._device = f"cuda:{self._local_rank}"  # one GPU per torchrun worker
        return self._device

    def ensure_loaded(self, component) -> None:
        """Load a model once per run."""
        if id(component) not in self._loaded:
            component.load(self.device)
            if self.channels_last:
                to_channels_last(component)
            self._loaded.add(id(component))
