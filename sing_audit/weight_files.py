"""Reading a state dict from a weights file without running code: safetensors, or
``torch.load(weights_only=True)``; a file that would import Python objects besides
tensors is refused, naming what it would import (found by scanning its pickles, never by
unpickling them). Common nesting and wrapper prefixes are removed. Re-exported by
:mod:`sing_audit.weights`.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import WeightsError

__all__ = ["load_state_dict", "torch_load_weights_only"]

#: keys under which training checkpoints commonly nest the state dict
_NESTING_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "module", "net")

#: prefixes added by wrappers (DistributedDataParallel, torch.compile)
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def _is_safetensors(path: Path) -> bool:
    """Sniff the safetensors layout: 8-byte little-endian header length, then JSON."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n < (1 << 30)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """Find the state dict inside common checkpoint layouts and strip wrapper prefixes."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or _is_tensor_dict(obj):
            break
        inner = next((obj[k] for k in _NESTING_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"weights file {path} holds a {type(obj).__name__}, not a state dict; "
            "save the model's parameters with torch.save(model.state_dict(), path) or safetensors"
        )
    import torch

    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad or not obj:
        what = "is empty" if not obj else f"has entries that are not tensors ({', '.join(bad[:5])})"
        raise WeightsError(
            f"weights file {path} {what}; expected a state dict (parameter name -> tensor), optionally "
            f"nested under one of {list(_NESTING_KEYS)}; re-save it with torch.save(model.state_dict(), path)"
        )
    sd = {str(k): v for k, v in obj.items()}
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save`` file, safely.

    PyTorch files are read with ``torch.load(..., weights_only=True)``: a file holding
    arbitrary Python objects is refused rather than unpickled. Common nesting
    (``{"state_dict": ...}``, ``{"model": ...}``) and a DDP ``module.`` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    use_safetensors = path.suffix.lower() == ".safetensors" or (
        path.suffix.lower() not in (".pt", ".pth", ".bin") and _is_safetensors(path)
    )
    if use_safetensors:
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, OSError, ...
            raise WeightsError(
                f"weights file {path} cannot be read as safetensors ({exc.__class__.__name__}: {exc}); "
                "it is corrupt or not a safetensors file: re-save it with "
                "safetensors.torch.save_file(model.state_dict(), path)"
            ) from exc
        return _unwrap(obj, path)

    if _is_torchscript(path):
        raise WeightsError(
            f"weights file {path} is a TorchScript archive, which cannot be read without running its code; "
            "load it once in Python and save its state dict: "
            "torch.save(torch.jit.load(path).state_dict(), 'weights.pt')"
        )
    obj = torch_load_weights_only(path)
    return _unwrap(obj, path)


def torch_load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with its failures as :class:`WeightsError`.

    A file torch's weights-only unpickler refuses because it would import or call Python
    objects other than tensors is *refused* ("loading this file would execute code",
    naming what it would import); any other failure means the file is corrupt,
    truncated or not a PyTorch file. Both messages say how to re-save the weights.
    """
    import torch

    path = Path(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        unsafe = _unsafe_imports(path, exc)
        if unsafe:
            shown = ", ".join(unsafe[:3]) + (f", … {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
            raise WeightsError(
                f"weights file {path} refused: loading this file would execute code (it holds Python objects "
                f"other than tensors and would import {shown}; unpickling them runs arbitrary code); save only "
                "the parameters instead: torch.save(model.state_dict(), path) or "
                "safetensors.torch.save_file(model.state_dict(), path)"
            ) from exc
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        if first_line.startswith("Weights only load failed"):
            first_line = "not a valid PyTorch file"
        raise WeightsError(
            f"weights file {path} cannot be read ({exc.__class__.__name__}: {first_line}); it is corrupt, "
            "truncated or not a PyTorch/safetensors file: copy it again or re-save it with "
            "torch.save(model.state_dict(), path)"
        ) from exc


def _unsafe_imports(path: Path, exc: Exception) -> list[str]:
    """What the refused file would import besides what torch allows (``module.name``), or ``[]``.

    Only a refusal by torch's weights-only unpickler (an ``UnpicklingError``) counts; the
    file's pickles are then disassembled (never run) to find every object they import,
    because torch names at most the first one, and not at all for pickle protocols its
    unpickler cannot parse (``pickle.dump``'s default). A name torch quoted counts too.
    """
    if not isinstance(exc, pickle.UnpicklingError):
        return []
    allowed = _torch_safe_globals()
    found = [name for name in _pickled_imports(path) if name not in allowed]
    quoted = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if quoted and quoted.group(1) not in found:
        found.append(quoted.group(1))
    return list(dict.fromkeys(found))


def _torch_safe_globals() -> set[str]:
    """The ``module.name`` globals torch's weights-only unpickler accepts (its allowlist and
    the user's ``torch.serialization.add_safe_globals``), as torch's own
    ``get_unsafe_globals_in_checkpoint`` computes them."""
    try:
        from torch import _weights_only_unpickler as unpickler

        return set(unpickler._get_allowed_globals()) | set(unpickler._get_user_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - a torch without these helpers
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter"}


#: pickles read from the start of a non-zip file: torch's legacy format writes five
#: (magic number, protocol, system info, the object, storage keys), then raw bytes
_MAX_PICKLES = 5

_IDENTIFIER = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def _pickled_imports(path: Path) -> list[str]:
    """Every ``module.name`` the pickles in ``path`` import, found by disassembling them
    with :mod:`pickletools` (nothing is imported or run). A zip archive (torch's format)
    holds its pickle in ``*/data.pkl``; any other file is read as consecutive pickles.
    Truncated or malformed streams give the imports seen before the damage."""
    import io

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
                if member is None:
                    return []
                return _imports_in_pickles(io.BytesIO(zf.read(member)), 1)
        with open(path, "rb") as fh:
            return _imports_in_pickles(fh, _MAX_PICKLES)
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError, EOFError):
        return []


def _imports_in_pickles(fh, count: int) -> list[str]:
    found: list[str] = []
    for _ in range(count):
        complete = _imports_in_one_pickle(fh, found)
        if not complete:
            break
    return [name for name in found if _IDENTIFIER.match(name)]


_MARK = object()
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}


def _imports_in_one_pickle(fh, found: list[str]) -> bool:
    """Disassemble one pickle from ``fh``, appending the globals it imports to ``found``.

    The stack is simulated only as far as needed to resolve protocol 4's
    ``STACK_GLOBAL`` (module and name are the two strings on top, possibly fetched from the
    memo). Returns whether the pickle was read to its ``STOP``.
    """
    import pickletools

    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(fh):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.append(f"{module}.{attr}")
            elif name == "STACK_GLOBAL":
                module, attr = (stack[-2], stack[-1]) if len(stack) >= 2 else (None, None)
                found.append(f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str) else "?")
            elif name.startswith("EXT"):
                found.append(f"copyreg.extension_{arg}")
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
                continue
            if name in _MEMO_PUTS:
                memo[arg] = stack[-1] if stack else None
                continue
            _pop(stack, op.stack_before)
            if name == "MARK":
                stack.append(_MARK)
            elif name in _MEMO_GETS:
                stack.append(memo.get(arg))
            elif isinstance(arg, str) and op.stack_after == [pickletools.pyunicode]:
                stack.append(arg)
            else:
                stack.extend(None for _ in op.stack_after)
            if name == "STOP":
                return True
    except (ValueError, EOFError, IndexError, KeyError, UnicodeDecodeError):
        return False
    return False


def _pop(stack: list[Any], before: list[Any]) -> None:
    """Pop what an opcode consumes: everything down to the mark when it takes a mark."""
    import pickletools

    if pickletools.markobject in before:
        while stack and stack.pop() is not _MARK:
            pass
        below = before.index(pickletools.markobject)
    else:
        below = len(before)
    del stack[max(0, len(stack) - below):]
