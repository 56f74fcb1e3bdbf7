"""Rich outputs: matplotlib figures as PNG, and values that draw themselves.

The runner sets MPLBACKEND to `module://vmexec_runner.mpl_backend` unless
the caller chose a backend: a figure is drawn by Agg, and `plt.show()`
sends every open figure as an `output` record and closes it.
Figures still open when the code ends are sent then. A final value with
`_repr_png_`, `_repr_svg_` or `_repr_html_` (IPython's display protocol)
is sent as that kind of output too.

    {"type": "output", "mime": "image/png", "data": BASE64}
"""

import base64
import io
import sys

# Set by the runner before the code runs: where outputs go.
sink = None



def send_open_figures():
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None or sink is None:
        return
    for number in pyplot.get_fignums():
        figure = pyplot.figure(number)
        buffer = io.BytesIO()
        try:
            figure.savefig(buffer, format="png")
        except Exception as exc:  # a figure that cannot be drawn must not lose the result
            print(f"vmexec: figure {number} could not be drawn: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            sink("image/png", buffer.getvalue())
        pyplot.close(figure)


def send_value(value):
    """A value that draws itself (PNG, SVG, HTML); True if it did."""
    if sink is None or value is None or isinstance(value, type):
        return False
    sent = False
    for method, mime in (("_repr_png_", "image/png"), ("_repr_svg_", "image/svg+xml"), ("_repr_html_", "text/html")):
        draw = getattr(value, method, None)
        if not callable(draw):
            continue
        try:
            drawn = draw()
        except Exception:
            continue  # a broken display method must not lose the result
        if isinstance(drawn, str):
            drawn = drawn.encode()
        if isinstance(drawn, (bytes, bytearray)) and drawn:
            sink(mime, bytes(drawn))
            sent = True
    return sent


def record_sink(records, capture, limit):
    """Sends outputs as records, after the code's output so far; past `limit` outputs, counts them."""
    state = {"sent": 0, "dropped": 0}

    def send(mime, data):
        if state["sent"] >= limit:
            state["dropped"] += 1
            return
        state["sent"] += 1
        capture.flush()
        records.send({"type": "output", "mime": mime, "data": base64.b64encode(data).decode()})

    return send, state
