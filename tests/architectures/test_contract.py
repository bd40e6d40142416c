"""Every registered architecture (and each of its variants) against the network contract, in 2D and 3D where
supported, with and without deep supervision (``nnunet_ext/architectures/contract.py``). A new architecture gets
these checks by registering; the toy text network of ``toy_text/`` is registered here only, to prove it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from nnunet_ext.architectures.contract import (
    ARCHITECTURES,
    CASE_INPUT_KWARGS,
    CASE_INPUTS,
    PLANS_KEY,
    CaseInputError,
    ContractNetwork,
    HeadsOutput,
    build_network_from_plans,
    get_architecture,
)

TOY = Path(__file__).resolve().parent / "toy_text" / "toy_text_trainer.py"
PATCH = {2: (32, 32), 3: (16, 32, 32)}
SETTINGS = {"num_cls_classes": 3, "class_names": ["a", "b", "c"], "phases": ["arterial", "portal_venous", "delayed"],
            "num_phases": 3, "reference_phase_index": 1, "num_tabular": 2, "tabular_features": ["age", "marker"],
            "lesion_labels": [2], "lesion_labels_source": "test", "cls_activation": "leaky_relu",
            "text_encoder": {"name": "test", "path": "", "fingerprint": "0", "dim": 16, "max_tokens": 8}}


def _load_toy():
    spec = importlib.util.spec_from_file_location("toy_text_trainer", TOY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers "toy_text"
    return module


TOY_MODULE = _load_toy()
get_architecture("stdnet")  # the shipped architectures register on first lookup
CASES = [(name, variant, dim, ds) for name in sorted(ARCHITECTURES)
         for variant in (None, *sorted(ARCHITECTURES[name].variants))
         for dim in ARCHITECTURES[name].dims for ds in (True, False)]


def plans(name: str, dim: int) -> dict:
    """nnU-Net plans of one tiny configuration for architecture ``name``, as JSON (ops as dotted names)."""
    arch = ARCHITECTURES[name]
    conv, norm = ("torch.nn.modules.conv.Conv3d", "torch.nn.modules.instancenorm.InstanceNorm3d") if dim == 3 else (
        "torch.nn.modules.conv.Conv2d", "torch.nn.modules.instancenorm.InstanceNorm2d")
    arch_kwargs = {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": conv,
                   "kernel_sizes": [[3] * dim] * 3, "strides": [[1] * dim, [2] * dim, [2] * dim],
                   "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                   "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                   "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
                   **arch.tiny_arch_kwargs}
    configuration = {"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                     "patch_size": list(PATCH[dim]), "median_image_size_in_voxels": list(PATCH[dim]),
                     "spacing": [1.0] * dim, "normalization_schemes": ["CTNormalization"] * 3,
                     "use_mask_for_norm": [False] * 3, "resampling_fn_data": "resample_data_or_seg_to_shape",
                     "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
                     "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                     "resampling_fn_probabilities_kwargs": {}, "batch_dice": False,
                     "architecture": {"network_class_name": arch.plans_network_class
                                      or "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                                      "arch_kwargs": arch_kwargs,
                                      "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    return {"dataset_name": "Dataset999_Contract", "plans_name": "ContractPlans",
            "configurations": {"c": configuration},
            "transpose_forward": list(range(dim)), "transpose_backward": list(range(dim)),
            "image_reader_writer": "SimpleITKIO", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {}, PLANS_KEY: SETTINGS}


def build(name: str, variant, dim: int, ds: bool, plans_dict: dict | None = None, seed: int = 0):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans_dict or plans(name, dim))
    torch.manual_seed(seed)
    return build_network_from_plans(name, pm, pm.get_configuration("c"), 3, 3, ds, variant=variant)


def case_inputs(net: ContractNetwork, batch: int) -> dict[str, torch.Tensor]:
    out = {}
    if "tabular" in net.consumed_case_inputs():
        out["tabular"] = torch.randn(batch, SETTINGS["num_tabular"])
    if "text" in net.consumed_case_inputs():
        t = SETTINGS["text_encoder"]
        out["text"] = torch.randn(batch, t["max_tokens"], t["dim"])
        out["text_mask"] = torch.arange(t["max_tokens"]).expand(batch, -1) < torch.tensor([[5], [0]])[:batch]
    return out


@pytest.mark.parametrize("name, variant, dim, ds", CASES)
def test_network_keeps_the_contract(name, variant, dim, ds):
    net = build(name, variant, dim, ds)
    arch = ARCHITECTURES[name]
    assert isinstance(net, arch.network_class) and isinstance(net, ContractNetwork)
    assert set(net.case_inputs) <= set(CASE_INPUTS)
    assert set(net.consumed_case_inputs()) <= set(net.case_inputs)
    assert set(net.optional_case_inputs) <= set(net.case_inputs)
    assert all(hasattr(net, m) for m in net.auxiliary_modules)
    assert net.decoder.deep_supervision is ds
    x = torch.randn(2, 3, *PATCH[dim])

    # forward(x): segmentation logits only (what nnU-Net's predictor and stock nnUNetv2_predict call)
    seg = net(x)
    outputs = seg if ds else [seg]
    assert isinstance(seg, list) == ds and all(isinstance(s, torch.Tensor) for s in outputs)
    assert outputs[0].shape == (2, 3, *PATCH[dim])

    # the heads: a HeadsOutput with the declared fields, through forward
    inputs = case_inputs(net, 2)
    out = net(x, return_heads=True, **inputs)
    assert isinstance(out, HeadsOutput)
    assert [s.shape for s in (out.seg if ds else [out.seg])] == [s.shape for s in outputs]
    if net.produces_classes():
        assert out.cls.shape == (2, SETTINGS["num_cls_classes"])
    else:
        assert out.cls is None
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.aux_losses.values())
    assert isinstance(out.extras, dict)

    # a required case input left out is an error naming it (optional ones have a learned fallback)
    for missing in net.required_case_inputs():
        kws = {k: v for k, v in inputs.items() if k not in CASE_INPUT_KWARGS[missing]}
        with pytest.raises((CaseInputError, ValueError), match=missing):
            net(x, return_heads=True, **kws)
    for optional in set(net.optional_case_inputs) & set(net.consumed_case_inputs()):
        kws = {k: v for k, v in inputs.items() if k not in CASE_INPUT_KWARGS[optional]}
        assert net(x, return_heads=True, **kws).seg is not None

    # every parameter gets a gradient from the total loss (DDP needs them all in the graph); without deep supervision
    # nnU-Net's decoder leaves its lower-resolution output layers unused, as it does in stock nnU-Net
    total = sum(s.float().mean() for s in (out.seg if ds else [out.seg])) + sum(out.aux_losses.values())
    if out.cls is not None:
        total = total + torch.nn.functional.cross_entropy(out.cls.float(), torch.tensor([0, 1]))
    total.backward()
    last_seg = f"decoder.seg_layers.{len(net.decoder.seg_layers) - 1}."
    no_grad = [n for n, p in net.named_parameters() if p.grad is None
               and (ds or not n.startswith("decoder.seg_layers.") or n.startswith(last_seg))]
    assert no_grad == []


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("dim", [2, 3])
def test_feature_map_size_grows_with_the_patch_and_plans_round_trip_through_json(name, dim):
    if dim not in ARCHITECTURES[name].dims:
        pytest.skip(f"{name} is {ARCHITECTURES[name].dims}-D only")
    net = build(name, None, dim, True)
    small = net.compute_conv_feature_map_size(PATCH[dim])
    large = net.compute_conv_feature_map_size([2 * s for s in PATCH[dim]])
    assert 0 < small < large
    again = build(name, None, dim, True, json.loads(json.dumps(plans(name, dim))))
    assert str(again) == str(net)
    a, b = net.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trainers_build_their_network_through_the_registry():
    """One code path: a trainer's build_network_architecture (what training and nnU-Net's predictor call) gives
    exactly the network build_network_from_plans gives for its architecture and variant."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    import nnunet_ext.trainers as trainers

    for trainer in (*trainers.PRODUCT_TRAINERS, TOY_MODULE.ToyTextTrainer):
        dim = ARCHITECTURES[trainer.architecture].dims[-1]
        pm = PlansManager(plans(trainer.architecture, dim))
        torch.manual_seed(0)
        via_trainer = trainer.build_network_architecture(pm, pm.get_configuration("c"), 3, 3, True)
        via_registry = build(trainer.architecture, trainer.variant, dim, True)
        assert str(via_trainer) == str(via_registry), trainer.__name__
        a, b = via_trainer.state_dict(), via_registry.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), trainer.__name__


def test_registry_refuses_what_breaks_the_contract():
    from nnunet_ext.architectures.contract import register_architecture

    class NotAContractNetwork(torch.nn.Module):
        pass

    class UnknownInput(ContractNetwork):
        case_inputs = ("genome",)

    class Other(ContractNetwork):
        pass

    with pytest.raises(TypeError, match="ContractNetwork"):
        register_architecture("bad", NotAContractNetwork)
    with pytest.raises(ValueError, match="genome"):
        register_architecture("bad", UnknownInput)
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("stdnet", Other)
    with pytest.raises(KeyError, match="registered"):
        get_architecture("nope")
    with pytest.raises(KeyError, match="variants"):
        build("stdnet", "nope", 3, True)
    assert "bad" not in ARCHITECTURES
