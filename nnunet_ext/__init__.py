"""nnunet-ext: STD-Net and multi-task (segmentation + case-level classification) extensions for nnU-Net v2.

Please cite nnU-Net (Isensee et al., Nature Methods 18:203-211, 2021) and the paper of each architecture you use.
"""

__version__ = "0.1.0"
