"""The matplotlib backend the runner sets (MPLBACKEND): Agg draws, show() sends.

Only matplotlib imports this module, when the code first uses pyplot, so a
job that does not draw never loads matplotlib.
"""

from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvas  # noqa: F401

from . import outputs


def show(*args, **kwargs):
    """plt.show(): every open figure goes out as a PNG, and is closed."""
    outputs.send_open_figures()
