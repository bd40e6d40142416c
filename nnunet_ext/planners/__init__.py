"""Experiment planners. Stock ``nnUNetv2_plan_and_preprocess -pl`` only searches nnunetv2, so
``nnunet-ext plan-and-preprocess -pl <name>`` resolves names here first, then in nnunetv2."""

from __future__ import annotations

PLANNERS: dict[str, str] = {}  # name -> dotted path; filled by planner modules via register_planner


def register_planner(cls: type) -> type:
    PLANNERS[cls.__name__] = f"{cls.__module__}.{cls.__name__}"
    return cls


def find_planner(name: str) -> type:
    """Resolve a planner class by name: nnunet-ext planners first, then nnU-Net's experiment_planning package."""
    import importlib
    import os
    import pydoc

    importlib.import_module("nnunet_ext.planners.registry")  # imports every planner module
    if name in PLANNERS:
        return pydoc.locate(PLANNERS[name])
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"), name,
                                      current_module="nnunetv2.experiment_planning")
    if cls is None:
        raise ValueError(f"Unknown planner {name!r}. nnunet-ext planners: {sorted(PLANNERS)}; or any planner class "
                         "of nnunetv2.experiment_planning (e.g. ExperimentPlanner, nnUNetPlannerResEncM).")
    return cls
