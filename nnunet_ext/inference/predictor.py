"""nnU-Net's sliding-window predictor with case inputs and a case-level class from the same network passes.

For a model trained with an nnunet-ext trainer the network is wrapped in a
:class:`~nnunet_ext.architectures.case_binding.CaseBoundNetwork` (the object the trainers' final validation uses):
before each case it is bound to that case's inputs (tabular features, text embeddings: :attr:`case_inputs`), and
it records the class votes of every network call, aggregated per case as its docstring says (lesion-weighted patch
votes, fold passes averaged). Models of vanilla nnU-Net run through nnU-Net's predictor unchanged.
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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.case_probabilities: dict[str, np.ndarray] = {}
        self.case_inputs = CaseInputs()
        self.binding: CaseBoundNetwork | None = None

    # ------------------------------------------------------------------ set-up
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

    def initialize_from_trained_model_folder(self, *args, **kwargs):
        super().initialize_from_trained_model_folder(*args, **kwargs)
        self._bind_network()

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
