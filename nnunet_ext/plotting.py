"""The one matplotlib style every figure of the package is drawn in.

nnU-Net's progress plot calls ``seaborn.set(font_scale=2.5)``, which changes the global style of every later figure
in the same process (a training run, then our own plots). Every plot function therefore draws inside
:func:`default_style`.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def default_style():
    """Matplotlib's default rc settings for the duration of a plot."""
    import matplotlib

    style = {k: v for k, v in matplotlib.rcParamsDefault.items() if k not in ("backend", "backend_fallback")}
    with matplotlib.rc_context(style):
        yield
