"""The contract every nnunet-ext network keeps, its typed result, and the registry of architectures.

The contract (held for every registered architecture by ``tests/architectures/test_contract.py``):

* ``forward(x)`` returns segmentation logits only (a list, highest resolution first, under deep supervision), so
  nnU-Net's predictor, its mirroring, ``perform_actual_validation`` and stock ``nnUNetv2_predict`` work unchanged.
* ``forward(x, return_heads=True, **case_inputs)`` returns a :class:`HeadsOutput`. The trainers call it through the
  DDP / ``torch.compile`` wrapper, so the gradients of every head are synchronised across ranks.
* The class declares the case inputs it can consume (:attr:`ContractNetwork.case_inputs`, from
  :data:`CASE_INPUTS`) and those it can do without (:attr:`ContractNetwork.optional_case_inputs`, e.g. a learned
  "no text" embedding). :meth:`ContractNetwork.consumed_case_inputs` says which ones an instance, as built from the
  plans, uses. Case inputs reach ``forward`` as keyword arguments (:data:`CASE_INPUT_KWARGS`); a sample whose
  ``text_mask`` is all False has no text. A network consuming text exposes ``text_dim``.
* Every head lives in the module, so ``state_dict`` (checkpoints, inference) holds it; statistics a network needs at
  inference (the tabular standardisation of the training fold) are buffers.
* ``self.decoder.deep_supervision`` toggles deep supervision; ``compute_conv_feature_map_size(patch)`` serves
  nnU-Net's planner; every constructor argument is JSON-serialisable (ops as dotted names in the plans).
* :meth:`ContractNetwork.from_plans` builds the network from a configuration's architecture entry and the
  ``plans["nnunet_ext"]`` block: the trainers, the predictor (through the trainer class) and the tests all build
  through :func:`build_network_from_plans`, one code path.

A new architecture subclasses :class:`ContractNetwork` and calls :func:`register_architecture`; it then gets every
contract check without an edit outside its own files.
"""

from __future__ import annotations

import pydoc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

PLANS_KEY = "nnunet_ext"
# the case-level inputs a network may consume, and the forward() keyword arguments each one arrives as
CASE_INPUT_KWARGS: dict[str, tuple[str, ...]] = {
    "tabular": ("tabular",),  # (B, F) float32, raw values; networks standardise them (TabularStandardize buffers)
    "text": ("text", "text_mask"),  # (B, T, D) float32 token embeddings of a frozen encoder, (B, T) bool mask
}
CASE_INPUTS = tuple(CASE_INPUT_KWARGS)


class HeadsOutput(NamedTuple):
    """What ``forward(x, return_heads=True, ...)`` returns (a tuple subclass: DDP and ``torch.compile`` see its
    tensors).

    * ``seg``: segmentation logits (B, K, *S), or the deep-supervision list, highest resolution first.
    * ``cls``: case-level class logits (B, C), or None for a network without a classification head.
    * ``aux_losses``: {name: scalar tensor}, e.g. reconstruction losses; the trainer weights each by name.
    * ``extras``: anything else a caller may ask for (e.g. ``"attention"``); never used in the loss.
    """

    seg: torch.Tensor | list[torch.Tensor]
    cls: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = {}
    extras: dict[str, Any] = {}


class CaseInputError(ValueError):
    """A network was called without a case input it needs, or with one of the wrong shape."""


class ContractNetwork(nn.Module):
    """Base class of the nnunet-ext networks: the declarations of the contract and the helpers that serve them.

    Class attributes:
        case_inputs: the case inputs (:data:`CASE_INPUTS`) the class can consume.
        optional_case_inputs: those it has a learned fallback for (inference may then run without them).
        auxiliary_modules: names of submodules nnU-Net's U-Net does not have (temporal modeler, heads, ...); the
            trainers optimise them with AdamW, the encoder and decoder with nnU-Net's SGD.
    """

    case_inputs: ClassVar[tuple[str, ...]] = ()
    optional_case_inputs: ClassVar[tuple[str, ...]] = ()
    auxiliary_modules: ClassVar[tuple[str, ...]] = ()

    def consumed_case_inputs(self) -> tuple[str, ...]:
        """The case inputs this instance uses as built (a subset of :attr:`case_inputs`; e.g. ``tabular`` only when
        the dataset declares tabular features)."""
        return tuple(self.case_inputs)

    def produces_classes(self) -> bool:
        """Does ``forward(..., return_heads=True)`` return class logits? (Default: the network has a ``cls_head``.)"""
        return getattr(self, "cls_head", None) is not None

    def required_case_inputs(self) -> tuple[str, ...]:
        return tuple(k for k in self.consumed_case_inputs() if k not in self.optional_case_inputs)

    def check_case_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Raise :class:`CaseInputError` when a required case input is missing from ``forward``'s keywords."""
        missing = [name for name in self.required_case_inputs()
                   if any(inputs.get(kw) is None for kw in CASE_INPUT_KWARGS[name])]
        if missing:
            kws = ", ".join(f"{kw}=" for name in missing for kw in CASE_INPUT_KWARGS[name])
            raise CaseInputError(f"{type(self).__name__} was built to consume {missing} but was called without "
                                 f"them; pass {kws} (the trainer and `nnunet-ext predict` do this from the metadata, "
                                 "--texts and --tabular)")

    def set_tabular_statistics(self, mean, std) -> None:
        """Store the training fold's tabular mean and standard deviation in every
        :class:`~nnunet_ext.architectures.blocks.tabular.TabularStandardize` of the network (buffers: saved in the
        checkpoint, applied at inference)."""
        from nnunet_ext.architectures.blocks.tabular import TabularStandardize

        found = [m for m in self.modules() if isinstance(m, TabularStandardize)]
        if not found:
            raise CaseInputError(f"{type(self).__name__} holds no tabular standardisation (it consumes no tabular "
                                 "features)")
        for m in found:
            m.set_statistics(mean, std)

    def example_case_inputs(self, batch: int, device=None, text_tokens: int = 64) -> dict[str, torch.Tensor]:
        """Placeholder case inputs of the right shapes for what this instance consumes (zeros; every text token
        attended), for cost measurements and smoke calls. A text-consuming network exposes ``text_dim``."""
        from nnunet_ext.architectures.blocks.tabular import TabularStandardize

        out: dict[str, torch.Tensor] = {}
        uses = self.consumed_case_inputs()
        if "tabular" in uses:
            n = next(m.num_features for m in self.modules() if isinstance(m, TabularStandardize))
            out["tabular"] = torch.zeros(batch, n, device=device)
        if "text" in uses:
            out["text"] = torch.zeros(batch, text_tokens, int(self.text_dim), device=device)
            out["text_mask"] = torch.ones(batch, text_tokens, dtype=torch.bool, device=device)
        return out

    @classmethod
    def from_plans(cls, network_class_name: str, arch_kwargs: dict[str, Any], settings: Mapping[str, Any],
                   input_channels: int, num_classes: int, deep_supervision: bool, **overrides) -> nn.Module:
        """Build from a configuration's ``network_class_name`` and ``arch_kwargs`` (ops already imported, see
        :func:`resolve_arch_kwargs`) and the ``plans["nnunet_ext"]`` block ``settings``; ``overrides`` (the
        ablations) win over both. Returns the initialised network."""
        raise NotImplementedError


@dataclass(frozen=True)
class Architecture:
    """A registered architecture.

    Attributes:
        name: the registry key trainers name (``MultiTaskTrainer.architecture``).
        network_class: the :class:`ContractNetwork` subclass.
        dims: spatial dimensions it supports (2 for nnU-Net's ``2d`` configuration, 3 for the 3D ones).
        variants: named ablations, each a dict of constructor overrides.
        plans_network_class: the ``network_class_name`` its own planner writes into the plans (None: it is built on
            nnU-Net's U-Net plans).
        tiny_arch_kwargs: what its planner adds to the U-Net ``arch_kwargs``, at a tiny size (tests, smoke runs).
        description: one line for listings.
    """

    name: str
    network_class: type[ContractNetwork]
    dims: tuple[int, ...] = (2, 3)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    plans_network_class: str | None = None
    tiny_arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, network_class: type[ContractNetwork], dims: Sequence[int] = (2, 3),
                          variants: Mapping[str, Mapping[str, Any]] | None = None,
                          plans_network_class: str | None = None, tiny_arch_kwargs: Mapping[str, Any] | None = None,
                          description: str = "") -> Architecture:
    """Add an architecture to :data:`ARCHITECTURES`. Registering a class of the same name from the same module or
    file again (nnU-Net re-imports the modules of ``nnUNet_extTrainer`` folders at every trainer lookup) replaces the
    entry."""
    if not (isinstance(network_class, type) and issubclass(network_class, ContractNetwork)):
        raise TypeError(f"{network_class!r} must subclass ContractNetwork")
    unknown = set(network_class.case_inputs) - set(CASE_INPUTS)
    if unknown:
        raise ValueError(f"{network_class.__name__}.case_inputs names unknown inputs {sorted(unknown)}; known: "
                         f"{CASE_INPUTS}")
    existing = ARCHITECTURES.get(name)
    same = existing is not None and existing.network_class.__qualname__ == network_class.__qualname__ and (
        existing.network_class.__module__ == network_class.__module__
        or _source(existing.network_class) == _source(network_class))
    if existing is not None and not same:
        raise ValueError(f"architecture {name!r} is already registered for {existing.network_class.__module__}."
                         f"{existing.network_class.__qualname__}")
    arch = Architecture(name, network_class, tuple(dims), dict(variants or {}), plans_network_class,
                        dict(tiny_arch_kwargs or {}), description)
    ARCHITECTURES[name] = arch
    return arch


def _source(cls: type) -> str | None:
    import inspect

    try:
        return inspect.getsourcefile(cls)
    except TypeError:
        return None


def get_architecture(name: str) -> Architecture:
    import nnunet_ext.architectures.registry  # noqa: F401  registers the shipped architectures

    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; registered: {sorted(ARCHITECTURES)}") from None


def resolve_arch_kwargs(arch_kwargs: Mapping[str, Any], requires_import: Sequence[str] = ()) -> dict[str, Any]:
    """The plans' ``arch_kwargs`` with the entries named in ``_kw_requires_import`` (``conv_op``, ``norm_op``, ...)
    imported from their dotted paths."""
    kwargs = dict(arch_kwargs)
    for key in requires_import:
        if kwargs.get(key) is not None and isinstance(kwargs[key], str):
            located = pydoc.locate(kwargs[key])
            if located is None:
                raise ValueError(f"plans arch_kwargs[{key!r}] = {kwargs[key]!r} cannot be imported")
            kwargs[key] = located
    return kwargs


def case_settings(plans: Mapping[str, Any]) -> dict[str, Any]:
    """The ``plans["nnunet_ext"]`` block (see :func:`nnunet_ext.planners.case_settings.make_case_settings`)."""
    try:
        return plans[PLANS_KEY]
    except KeyError:
        raise RuntimeError(
            'These plans carry no "nnunet_ext" block, so an nnunet-ext network cannot be built from them. nnunet-ext '
            "trainers add it when they start; for a results folder, check that its plans.json came from an "
            "nnunet-ext trainer.") from None


def build_network_from_plans(architecture: str, plans_manager, configuration_manager, num_input_channels: int,
                             num_output_channels: int, enable_deep_supervision: bool = True,
                             variant: str | None = None, **overrides) -> nn.Module:
    """The one way an nnunet-ext network is built from nnU-Net plans (trainers, predictor, tests): the registered
    architecture's :meth:`ContractNetwork.from_plans` on the configuration's architecture entry and the
    ``plans["nnunet_ext"]`` block; ``variant`` selects a registered ablation, ``overrides`` win over everything."""
    arch = get_architecture(architecture)
    if variant is not None:
        if variant not in arch.variants:
            raise KeyError(f"{architecture!r} has no variant {variant!r}; variants: {sorted(arch.variants)}")
        overrides = {**arch.variants[variant], **overrides}
    kwargs = resolve_arch_kwargs(configuration_manager.network_arch_init_kwargs,
                                 configuration_manager.network_arch_init_kwargs_req_import)
    return arch.network_class.from_plans(configuration_manager.network_arch_class_name, kwargs,
                                         case_settings(plans_manager.plans), num_input_channels, num_output_channels,
                                         enable_deep_supervision, **overrides)


def heads(network: nn.Module, x: torch.Tensor, **case_inputs) -> HeadsOutput:
    """``network(x, return_heads=True, **case_inputs)`` with the result checked to be a :class:`HeadsOutput`."""
    out = network(x, return_heads=True, **case_inputs)
    if not isinstance(out, HeadsOutput):
        raise TypeError(f"{type(network).__name__}(x, return_heads=True) returned {type(out).__name__}, not "
                        "HeadsOutput")
    return out
