# nnU-Net imports every module of the folders listed in nnUNet_extTrainer as a top-level module and looks for the
# trainer class by name. This shim re-exports the real classes, so nnU-Net gets exactly the objects defined in
# nnunet_ext.trainers (no duplicate class objects from a second import of the same files).
from nnunet_ext.trainers import *  # noqa: F401,F403
