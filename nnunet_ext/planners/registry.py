"""Imports every planner module so that :data:`nnunet_ext.planners.PLANNERS` is complete."""
