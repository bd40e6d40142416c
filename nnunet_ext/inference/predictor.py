"""nnU-Net's sliding-window predictor with case inputs and a case-level class from the same network passes.

For a model trained with an nnunet-ext trainer the network is wrapped in a
:class:`~nnunet_ext.architectures.case_binding.CaseBoundNetwork` (the object the trainers' final validation uses):
before each case it is bound to that case's inputs (tabular features, text embeddings: :attr:`case_inputs`), and
it records the class votes of every network call, aggregated per case as its docstring says (lesion-weighted patch
votes, fold passes averaged). Models of vanilla nnU-Net run through nnU-Net's predictor unchanged.

Checkpoints are read with :func:`nnunet_ext.data.checkpoints.load_checkpoint` (``weights_only=True``) instead of
nnU-Net's ``torch.load(weights_only=False)``: a model folder from a stranger cannot run code while it is loaded.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_ext.architectures.case_binding import CaseBoundNetwork, unwrap
from nnunet_ext.architectures.contract import PLANS_KEY, ContractNetwork
from nnunet_ext.data.case_inputs import CaseInputs
from nnunet_ext.inference.checks import require_finite


class ClassifyingPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` that passes case inputs to the network and returns case-level class probabilities.

    Set :attr:`case_inputs` (a :class:`~nnunet_ext.data.case_inputs.CaseInputs` for the cases to predict) before
    predicting a model that consumes case inputs. After ``predict_from_files``/``predict_from_data_iterator``,
    :attr:`case_probabilities` maps each case id (the output file name) to a (K,) probability vector.
    """

    min_lesion_voxels: float = 1.0

    def __init__(self, *args, trust_checkpoint: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trust_checkpoint = trust_checkpoint  # None: as nnUNet_ext_trust_checkpoint says
        self.case_probabilities: dict[str, np.ndarray] = {}
        self.case_inputs = CaseInputs()
        self.binding: CaseBoundNetwork | None = None

    # ------------------------------------------------------------------ set-up
    @classmethod
    def from_model_folder(cls, model_folder: str, folds, checkpoint_name: str, device: torch.device,
                          step_size: float = 0.5, mirroring: bool = True, verbose: bool = False,
                          allow_tqdm: bool = False, trust_checkpoint: bool | None = None) -> ClassifyingPredictor:
        """The predictor of a trained model folder as every nnunet-ext command builds it: Gaussian-weighted sliding
        window, everything on the device for CUDA, the folds' weights loaded (through the safe checkpoint loader)."""
        predictor = cls(tile_step_size=step_size, use_gaussian=True, use_mirroring=mirroring,
                        perform_everything_on_device=device.type == "cuda", device=device, verbose=verbose,
                        verbose_preprocessing=verbose, allow_tqdm=allow_tqdm, trust_checkpoint=trust_checkpoint)
        predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name)
        return predictor

    @property
    def settings(self) -> dict:
        return (self.plans_manager.plans if self.plans_manager is not None else {}).get(PLANS_KEY, {})

    @property
    def class_names(self) -> list[str]:
        return list(self.settings.get("class_names", []))

    @property
    def has_classification(self) -> bool:
        """False for models without a head (e.g. vanilla nnU-Net, or a network that only segments)."""
        net = unwrap(self.network) if self.network is not None else None
        return bool(self.settings.get("num_cls_classes")) and isinstance(net, ContractNetwork) \
            and net.produces_classes()

    @property
    def uses(self) -> tuple[str, ...]:
        """The case inputs the model's network consumes."""
        net = unwrap(self.network) if self.network is not None else None
        return tuple(net.consumed_case_inputs()) if isinstance(net, ContractNetwork) else ()

    @property
    def optional_inputs(self) -> tuple[str, ...]:
        net = unwrap(self.network) if self.network is not None else None
        return tuple(net.optional_case_inputs) if isinstance(net, ContractNetwork) else ()

    def _bind_network(self) -> None:
        if self.binding is None and isinstance(unwrap(self.network), ContractNetwork):
            self.binding = CaseBoundNetwork(self.network, self.settings.get("lesion_labels"),
                                            record_classes=self.has_classification, use_gaussian=self.use_gaussian,
                                            min_lesion_voxels=self.min_lesion_voxels)
            self.network = self.binding

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds=None,
                                             checkpoint_name: str = "checkpoint_final.pth"):
        """nnU-Net's method, with the checkpoints read by the safe loader (module docstring): the trainer class
        named in the first fold's checkpoint rebuilds the network, which gets the first fold's weights; then the
        network is bound for case inputs and class votes."""
        import inspect

        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunet_ext.data.checkpoints import load_checkpoint

        if use_folds is None:
            use_folds = self.auto_detect_available_folds(model_training_output_dir, checkpoint_name)
        if isinstance(use_folds, str):
            use_folds = [use_folds]
        dataset_json = load_json(os.path.join(model_training_output_dir, "dataset.json"))
        plans_manager = PlansManager(load_json(os.path.join(model_training_output_dir, "plans.json")))
        parameters = []
        for i, f in enumerate(use_folds):
            f = int(f) if f != "all" else f
            checkpoint = load_checkpoint(os.path.join(model_training_output_dir, f"fold_{f}", checkpoint_name),
                                         map_location="cpu", trust=self.trust_checkpoint)
            if i == 0:
                trainer_name = checkpoint["trainer_name"]
                configuration_name = checkpoint["init_args"]["configuration"]
                mirroring = checkpoint.get("inference_allowed_mirroring_axes")
            parameters.append(checkpoint["network_weights"])
        configuration_manager = plans_manager.get_configuration(configuration_name)
        num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        num_output_channels = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
            network = trainer_class.build_network_architecture(plans_manager, configuration_manager,
                                                               num_input_channels, num_output_channels,
                                                               enable_deep_supervision=False)
        else:  # the signature before nnU-Net 2.7
            network = trainer_class.build_network_architecture(
                configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
                configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
                enable_deep_supervision=False)
        network.load_state_dict(parameters[0])  # as nnU-Net does (its issue 2520)
        self.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                   trainer_name, mirroring)

    def manual_initialization(self, *args, **kwargs):
        super().manual_initialization(*args, **kwargs)
        self._bind_network()

    def start_case(self, case: str) -> None:
        """Bind the network to ``case`` (its inputs from :attr:`case_inputs`)."""
        if self.binding is not None:
            self.binding.bind(case, self.case_inputs.batch([case], self.uses, self.device))

    # ------------------------------------------------------------------ passes
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        if self.binding is not None:
            self.binding.begin_pass()  # one pass per fold's weights
        return super().predict_sliding_window_return_logits(input_image)

    def _internal_predict_sliding_window_return_logits(self, *args, **kwargs):
        if self.binding is not None:
            self.binding.restart_pass()  # nnU-Net retries a pass on the CPU after running out of device memory
        return super()._internal_predict_sliding_window_return_logits(*args, **kwargs)

    def classify_preprocessed(self, data: torch.Tensor, case: str = "(in memory)") -> np.ndarray:
        """Case probabilities (K,) for one preprocessed case (C, *spatial), with the network as it is."""
        self.start_case(case)
        self.predict_sliding_window_return_logits(data)
        return self.binding.case_probabilities()

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        require_finite(data, self.binding.case if self.binding is not None and self.binding.case else "(in memory)")
        return super().predict_logits_from_preprocessed_data(data)

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 1):
        def finish():
            if self.binding is not None and self.binding.case is not None and self.has_classification:
                probs = self.binding.case_probabilities()
                if probs is not None:
                    self.case_probabilities[self.binding.case] = probs

        def tracked():
            for item in data_iterator:
                finish()
                ofile = item.get("ofile")
                self.start_case(os.path.basename(ofile) if ofile is not None else "(in memory)")
                yield item
            finish()

        try:
            return super().predict_from_data_iterator(tracked(), save_probabilities,
                                                      num_processes_segmentation_export)
        finally:
            if self.binding is not None:
                self.binding.bind(None, {})
            if hasattr(data_iterator, "_finish"):
                data_iterator._finish()
