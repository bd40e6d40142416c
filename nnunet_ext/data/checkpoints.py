"""One loader for every checkpoint the package reads: ``torch.load(weights_only=True)``, so a model folder from a
stranger cannot run code.

``torch.load(weights_only=False)`` (what nnU-Net's predictor, ``--c`` and ``-pretrained_weights`` use) unpickles
arbitrary objects: a ``checkpoint_final.pth`` can call any Python function while it is read. With
``weights_only=True`` torch's restricted unpickler accepts only tensors, plain containers and an allowlist of types.
nnU-Net's checkpoints hold, besides tensors, the logger's values (NumPy scalars such as ``np.float64``) and
``_best_ema``; those need NumPy's scalar constructor and the dtypes of plain numeric types, which are allowed here
(:func:`numpy_safe_globals`; object dtypes, arrays and everything else stay refused). Checkpoints of vanilla nnU-Net
and of the nnunet-ext trainers then load safely.

A checkpoint that needs anything else is refused with :class:`UnsafeCheckpointError` naming the file, what it
would import and the risk, unless the user says they trust it: ``trust=True`` (``--trust-checkpoint`` on the
command line) or ``export nnUNet_ext_trust_checkpoint=1`` (for entry points nnU-Net starts itself, e.g.
``nnUNetv2_train --c`` with an nnunet-ext trainer).
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any

from nnunet_ext.errors import NnunetExtError

TRUST_ENV = "nnUNet_ext_trust_checkpoint"
TRUST_FLAG = "--trust-checkpoint"
# NumPy's plain numeric dtypes: bool, signed/unsigned integers, floats, complex (no object, string, void, datetime)
_PLAIN_DTYPE_CODES = "?bhilqBHILQefdgFDG"


class UnsafeCheckpointError(NnunetExtError, ValueError):
    """A checkpoint that only loads with ``weights_only=False`` (it could run code), or that cannot be read."""


def numpy_safe_globals() -> list:
    """What ``torch.load(weights_only=True)`` must additionally accept for nnU-Net's logged NumPy values: NumPy's
    scalar constructor (under NumPy 2's and NumPy 1's module names, so checkpoints pickled under either load),
    ``numpy.dtype`` and the dtype classes of plain numeric types (bool, integers, floats, complex)."""
    import numpy as np

    try:
        scalar = np._core.multiarray.scalar  # NumPy 2
    except AttributeError:  # pragma: no cover - NumPy 1
        scalar = np.core.multiarray.scalar
    out: list = [np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"),
                 (scalar, "numpy._core.multiarray.scalar")]
    out += list(dict.fromkeys(type(np.dtype(c)) for c in _PLAIN_DTYPE_CODES))
    return out


def trusted_by_env() -> bool:
    """``nnUNet_ext_trust_checkpoint`` set to 1/true/yes/t."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "t")


def unsafe_globals(path: str | os.PathLike) -> list[str]:
    """The importable names a checkpoint's pickle refers to that the safe loader does not accept (read without
    executing anything; empty when the file cannot be inspected)."""
    import torch

    allowed = {f"{g.__module__}.{g.__qualname__}" if not isinstance(g, tuple) else g[1]
               for g in numpy_safe_globals()}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file or a corrupt one: no listing
        return []
    return [n for n in names if n not in allowed]


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", trust: bool | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` with :func:`numpy_safe_globals` allowed.

    Args:
        trust: load a checkpoint that needs unsafe unpickling anyway (``weights_only=False``), with a warning;
            None: as ``nnUNet_ext_trust_checkpoint`` says.

    Raises:
        UnsafeCheckpointError: the file is missing or unreadable, or needs unsafe unpickling and is not trusted
            (nothing of it was executed).
    """
    import torch

    path = str(path)
    if not os.path.isfile(path):
        raise UnsafeCheckpointError(f"checkpoint {path} does not exist. Fix: check the model folder, fold and "
                                    "checkpoint name (-chk).")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UnsafeCheckpointError(f"checkpoint {path} cannot be read ({str(e).strip().splitlines()[0][:200]}): it "
                                    "is truncated or not a PyTorch checkpoint. Fix: copy or download the file again, "
                                    "or retrain the fold.") from e
    if trust is None:
        trust = trusted_by_env()
    names = unsafe_globals(path)
    what = f"it refers to {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}" if names else \
        f"torch refused it: {str(refused).strip().splitlines()[-1][:200]}"
    if trust:
        warnings.warn(f"loading {path} with unsafe unpickling ({what}) because it was marked trusted "
                      f"({TRUST_FLAG} / {TRUST_ENV})", stacklevel=2)
        return torch.load(path, map_location=map_location, weights_only=False)
    raise UnsafeCheckpointError(
        f"checkpoint {path} holds objects that only load with unsafe unpickling ({what}). Loading it that way would "
        "let the file run any code on this machine, so it was not loaded and nothing in it was executed. Checkpoints "
        "written by nnU-Net and nnunet-ext trainers load safely; this one was written by other code or was altered. "
        f"Fix: use a model from a trusted source; if you trust this file, pass {TRUST_FLAG} (or export {TRUST_ENV}=1 "
        "for commands that nnU-Net starts, such as nnUNetv2_train --c).") from None


def write_weights_only(weights: dict, path: str | os.PathLike) -> None:
    """``{"network_weights": weights}`` as a checkpoint that holds tensors only (what nnU-Net's
    ``load_pretrained_weights`` reads)."""
    import torch

    torch.save({"network_weights": weights}, str(path))


__all__ = ["TRUST_ENV", "TRUST_FLAG", "UnsafeCheckpointError", "load_checkpoint", "numpy_safe_globals",
           "trusted_by_env", "unsafe_globals", "write_weights_only"]
