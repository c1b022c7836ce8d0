"""Model weights from a file the harness did not write (``bench evaluate --weights``), read without running its code.

A file is unpickled with ``torch.load(weights_only=True)`` only: tensors and plain Python values, and the few numpy
globals that rebuild numpy float64 and int64 scalars (the reference experiment's ``best_model.pth`` keeps its metrics
as ``np.mean`` results). Anything else a file asks for is refused, named, and never imported. A zip archive (what
``torch.save`` writes) is checked whole against its own checksums first, as the harness's checkpoints are.

Three layouts are read: a bare ``state_dict``; a dict holding one under ``model_state_dict`` (the reference's
``torch.save({'epoch', 'model_state_dict', 'optimizer_state_dict', 'metrics'})``); under ``model`` (this harness's
``best.pt``). A state saved from a ``DataParallel`` or DDP wrapper (every name prefixed ``module.``) is unwrapped,
unless the architecture's own names start so; any other difference of names or shapes is refused, naming it.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from bench.checkpoints import DamagedCheckpoint, check
from registry.errors import UserError

LAYOUTS = ("model_state_dict", "model")  # the keys a dict holds its state_dict under, in the order looked for
WRAPPER_PREFIX = "module."
ZIP_MAGIC = b"PK\x03\x04"

_scalar = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor, wherever this numpy keeps it
NUMPY_SCALAR_GLOBALS = [
    (_scalar, "numpy.core.multiarray.scalar"),  # its name in a file pickled under numpy 1
    (_scalar, "numpy._core.multiarray.scalar"),  # and under numpy 2
    np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.int64)),  # the dtype, as each scalar rebuilds it
]
# How torch says which global it refused: one named by the file, or the type of an object the file builds.
REFUSED = (re.compile(r"GLOBAL (\S+) was not an allowed global"), re.compile(r"but got <class '([^']+)'>"))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in the file at ``path``, on the CPU; a UserError, naming the file, for anything else."""
    where = f"--weights {path}"
    if not path.exists():
        raise UserError(f"{where}: no such file")
    if path.is_dir():
        raise UserError(f"{where}: a folder, not a weights file")
    if path.stat().st_size == 0:
        raise UserError(f"{where}: an empty file, not a weights file")
    loaded = _load(path, where)
    for candidate in (loaded, *(loaded.get(key) for key in LAYOUTS if isinstance(loaded, Mapping))):
        if _is_state_dict(candidate):
            return dict(candidate)
    raise UserError(f"{where}: holds no model weights (a state_dict of names and tensors, alone or under "
                    f"{' or '.join(repr(key) for key in LAYOUTS)}); it holds {_describe(loaded)}")


def _load(path: Path, where: str):
    with open(path, "rb") as f:
        is_zip = f.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    if is_zip:
        try:
            check(path)
        except DamagedCheckpoint as err:
            raise UserError(f"--weights {err}") from None
    try:
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = next((match[1] for pattern in REFUSED if (match := pattern.search(str(err)))), None)
        if refused is not None:
            raise UserError(f"{where}: refused: loading it would run code: it needs {refused}, which "
                            "weights_only=True does not import (only tensors, plain values and numpy scalars are "
                            "read)") from None
        raise UserError(f"{where}: not a weights file torch can read ({_what_torch_met(err)})") from None
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001  (bytes that are no pickle make torch's unpickler raise anything)
        raise UserError(f"{where}: not a weights file torch can read ({type(err).__name__}: "
                        f"{_what_torch_met(err)})") from None


def _what_torch_met(err: Exception) -> str:
    """The line of torch's message that says what it met (it puts advice before it)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if line.startswith(("Unsupported", "Can only", "WeightsUnpickler"))),
                lines[-1] if lines else "no message")[:200]


def _is_state_dict(value) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def _describe(value) -> str:
    if isinstance(value, Mapping):
        keys = [str(k) for k in value][:6]
        return f"a dict with the keys {', '.join(keys)}{' ...' if len(value) > 6 else ''}" if keys else "an empty dict"
    return f"a {type(value).__name__}"


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], num_classes: int, where: str,
              arch_label: str) -> None:
    """Load ``state`` into ``model`` (strictly: every name, every shape); what does not fit is a UserError naming
    the first difference, or, when it is the classifier head's, the class count the weights were trained for."""
    expected = model.state_dict()
    if all(name.startswith(WRAPPER_PREFIX) for name in state) and not any(
            name.startswith(WRAPPER_PREFIX) for name in expected):
        state = {name.removeprefix(WRAPPER_PREFIX): tensor for name, tensor in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        problem = _misfit(expected, state, model, num_classes, arch_label) or " ".join(str(err).split())
        raise UserError(f"{where}: {problem}") from None


def _misfit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], model: torch.nn.Module,
            num_classes: int, arch_label: str) -> str | None:
    """The first way ``state`` does not fit: a missing name, then an unexpected one, then a shape."""
    missing = [name for name in expected if name not in state]
    if missing:
        more = f" (and {len(missing) - 1} more of its names)" if len(missing) > 1 else ""
        return f"does not fit {arch_label}: the file has no {missing[0]!r}{more}"
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        return f"does not fit {arch_label}: the file has {unexpected[0]!r}{more}, which the architecture does not"
    shaped = [name for name in expected if state[name].shape != expected[name].shape]
    if not shaped:
        return None
    head = [name for name in head_names(model) if name in shaped]
    name = (head or shaped)[0]
    found, wanted = list(state[name].shape), list(expected[name].shape)
    shapes = f"{name!r} is {found} in the file, {wanted} in the architecture"
    classes = trained_classes(found, wanted, num_classes) if head else None
    if classes is not None:
        return f"the weights are for {classes} classes, the dataset has {num_classes} ({shapes})"
    return f"does not fit {arch_label}: {shapes}"


def head_names(model: torch.nn.Module) -> list[str]:
    """The names of the classifier head's parameters: those of the module that holds the model's last parameter
    (each architecture ends with the layer that maps features to class logits)."""
    last = list(dict(model.named_parameters()))[-1]
    module = last.rpartition(".")[0]
    return [name for name, _ in model.named_parameters() if name.rpartition(".")[0] == module]


def trained_classes(found: list[int], wanted: list[int], num_classes: int) -> int | None:
    """The class count a head's shape in the file says, when it differs from the model's in its class dimension
    only; else None."""
    differ = [axis for axis, (a, b) in enumerate(zip(found, wanted)) if a != b]
    if len(found) == len(wanted) and len(differ) == 1 and wanted[differ[0]] == num_classes:
        return found[differ[0]]
    return None
