"""Checkpoints that unpickling would turn into running code are refused, and say so.

Every hostile file here is real: written with ``torch.save`` or ``pickle.dump`` from an
object whose unpickling would create a marker file (through ``os.system`` or
``Path.touch``). The message must say "refused: loading this file would execute code",
nothing may run, and a file that is merely corrupt or truncated must still be called
corrupt rather than dangerous.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from sing_audit.errors import WeightsError
from sing_audit.weights import load_state_dict

REFUSED = "refused: loading this file would execute code"


class _System:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Touch:
    """Unpickling this calls ``Path.touch(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class Plain:
    """An arbitrary class: unpickling it imports this module and builds the instance."""

    def __init__(self) -> None:
        self.weight = [1.0, 2.0]


def _helper():
    return 1


def _state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"weight": torch.randn(3, 4), "bias": torch.randn(3)}


def _hostile_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (hostile file, marker its payload would create)."""
    out = {}

    def marker(name: str) -> Path:
        return folder / f"{name}.ran"

    path = folder / "system.pt"
    torch.save({"state_dict": _state_dict(), "hook": _System(marker("system"))}, path)
    out["torch.save, __reduce__ -> os.system"] = (path, marker("system"))

    path = folder / "legacy.pt"
    torch.save({"state_dict": _state_dict(), "hook": _System(marker("legacy"))}, path,
               _use_new_zipfile_serialization=False)
    out["legacy torch.save, __reduce__ -> os.system"] = (path, marker("legacy"))

    path = folder / "plain_class.pt"
    torch.save({"model": Plain()}, path)
    out["torch.save of an arbitrary class"] = (path, marker("plain_class"))

    path = folder / "function.pt"
    with open(path, "wb") as fh:
        pickle.dump({"weight": [1.0], "init": _helper}, fh)
    out["pickle.dump of a dict holding a function"] = (path, marker("function"))

    path = folder / "pickle_system.bin"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"w": 1}, "hook": _System(marker("pickle_system"))}, fh)
    out["pickle.dump, __reduce__ -> os.system"] = (path, marker("pickle_system"))

    path = folder / "pickle_touch_p2.pth"
    with open(path, "wb") as fh:
        pickle.dump(_Touch(marker("pickle_touch_p2")), fh, protocol=2)
    out["pickle.dump protocol 2, __reduce__ -> Path.touch"] = (path, marker("pickle_touch_p2"))
    return out


CASES = [
    "torch.save, __reduce__ -> os.system",
    "legacy torch.save, __reduce__ -> os.system",
    "torch.save of an arbitrary class",
    "pickle.dump of a dict holding a function",
    "pickle.dump, __reduce__ -> os.system",
    "pickle.dump protocol 2, __reduce__ -> Path.touch",
]


@pytest.mark.parametrize("case", CASES)
def test_hostile_checkpoint_is_refused_as_code_and_nothing_runs(tmp_path, case):
    path, marker = _hostile_files(tmp_path)[case]
    with pytest.raises(WeightsError) as err:
        load_state_dict(path)
    msg = str(err.value)
    assert REFUSED in msg, msg
    assert str(path) in msg
    assert "corrupt" not in msg and "truncated" not in msg
    # the advice stays: save the parameters only
    assert "torch.save(model.state_dict(), path)" in msg and "safetensors" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_refusal_names_what_the_file_would_import(tmp_path):
    files = _hostile_files(tmp_path)
    msg = _message(files["pickle.dump of a dict holding a function"][0])
    assert f"{__name__}._helper" in msg
    msg = _message(files["torch.save of an arbitrary class"][0])
    assert f"{__name__}.Plain" in msg
    msg = _message(files["pickle.dump, __reduce__ -> os.system"][0])
    assert "system" in msg


def _message(path: Path) -> str:
    with pytest.raises(WeightsError) as err:
        load_state_dict(path)
    return str(err.value)


def test_truncated_hostile_file_runs_nothing(tmp_path):
    """Half a hostile pickle: whatever the message, the payload must not run."""
    path, marker = _hostile_files(tmp_path)["pickle.dump, __reduce__ -> os.system"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError):
        load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["truncated zip", "truncated legacy", "junk", "flipped pickle byte", "empty"])
def test_corrupt_files_are_still_called_corrupt(tmp_path, how):
    sd = _state_dict()
    path = tmp_path / "w.pt"
    if how == "truncated zip":
        torch.save(sd, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "truncated legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "junk":
        path.write_bytes(b"this is not a checkpoint\nnor.a pickle\n" * 10)
    elif how == "flipped pickle byte":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
        data = bytearray(path.read_bytes())
        data[2] ^= 0xFF  # inside the first pickle (the magic number)
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"")
    msg = _message(path)
    assert "corrupt" in msg and REFUSED not in msg, msg
    assert str(path) in msg


def test_state_dict_files_still_load(tmp_path):
    sd = _state_dict()
    torch.save(sd, tmp_path / "a.pt")
    torch.save({"state_dict": sd}, tmp_path / "b.pt", _use_new_zipfile_serialization=False)
    for name in ("a.pt", "b.pt"):
        loaded = load_state_dict(tmp_path / name)
        assert set(loaded) == set(sd)
        for k in sd:
            assert torch.equal(loaded[k], sd[k])


# --------------------------------------------------------------------------- sing_reference


def test_sing_reference_refuses_hostile_best_pt(tmp_path):
    from .test_translators import linear_checkpoint, reference, write_reference

    marker = tmp_path / "ran"
    (sd,) = linear_checkpoint()
    folder = write_reference(tmp_path, "linear", {**sd, "trainer": _System(marker)})
    with pytest.raises(WeightsError) as err:
        reference(folder)
    assert REFUSED in str(err.value)
    assert not marker.exists()


def test_sing_reference_second_read_refuses_too(tmp_path, monkeypatch):
    """The authors' ``translator_state_dict`` nesting is read by a second ``torch.load``;
    if the file changed in between (here: the first read is made to report the
    nesting), that read refuses code with the same message, not a raw UnpicklingError."""
    from sing_audit.builtins import sing_reference_folder as sing_reference
    from sing_audit import weights

    from .test_translators import linear_checkpoint, reference, write_reference

    marker = tmp_path / "ran"
    (sd,) = linear_checkpoint()
    folder = write_reference(tmp_path, "linear", {sing_reference._NESTED: sd, "trainer": _System(marker)})

    def nested_error(path):
        raise WeightsError(f"weights file {path} holds {sing_reference._NESTED}")

    monkeypatch.setattr(weights, "load_state_dict", nested_error)
    with pytest.raises(WeightsError) as err:
        reference(folder)
    assert REFUSED in str(err.value)
    assert not marker.exists()
