"""matplotlib where it is installed: plots are optional, the measurements they show are not."""
from __future__ import annotations


def pyplot():
    """`matplotlib.pyplot` on the non-interactive Agg backend, or None without matplotlib."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def written(path, drawn: bool) -> str:
    """How a report names a plot file: its path, or why there is none."""
    return str(path) if drawn else f"no {path} (matplotlib is not installed)"
