"""Patch sampling centred on the lesion: nnU-Net's data loader whose foreground-forced patches pick a lesion label.

nnU-Net forces the last third of each batch (``oversample_foreground_percent``) to contain foreground and picks the
foreground class at random among those present in the case. The STD-Net paper (Methods, implementation details)
trains on 128x128x64 crops centred on lesion areas or the liver, so its characterization head learns from patches that
show the lesion. :class:`LesionCentredDataLoader` keeps nnU-Net's sampling except that a foreground-forced patch is
centred on a voxel of one of the ``lesion_labels`` present in the case (picked at random among them), and on any
foreground class, as nnU-Net does, when the case has no lesion voxel. Everything else (augmentation, padding,
batching) is nnU-Net's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class LesionCentredDataLoader(nnUNetDataLoader):
    """``nnUNetDataLoader`` whose foreground-forced patches are centred on a lesion label present in the case."""

    def __init__(self, *args, lesion_labels: Sequence[int] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.lesion_labels = tuple(int(v) for v in lesion_labels)

    def lesion_class(self, class_locations: dict | None) -> int | None:
        """A lesion label with voxels in this case (at random among those present), or ``None``."""
        if class_locations is None:
            return None
        present = [v for v in self.lesion_labels if len(class_locations.get(v, ())) > 0]
        if not present:
            return None
        return present[np.random.randint(len(present))]

    def get_bbox(self, data_shape, force_fg: bool, class_locations: dict | None, overwrite_class=None,
                 verbose: bool = False):
        if force_fg and overwrite_class is None:
            overwrite_class = self.lesion_class(class_locations)
        return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)
