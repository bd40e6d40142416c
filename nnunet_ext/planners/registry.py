"""Imports every planner module so that :data:`nnunet_ext.planners.PLANNERS` is complete."""

from nnunet_ext.planners import (
    desamba,  # noqa: F401  DeSambaPlanner, DeSambaPlannerCPU
    stdnet,  # noqa: F401  STDNetPlanner, STDNetPlannerM/L/XL
    texlivernet,  # noqa: F401  TexLiverNetPlanner
)
