"""Checks of model arguments that would otherwise fail far from the YAML that set them: a
division by zero deep in a layer, or millions of layers that take minutes to build."""

MAX_LAYERS = 1000       # blocks or layers in a stack: far deeper than anything trained here


def check_layers(what: str, n) -> None:
    if isinstance(n, int) and n > MAX_LAYERS:
        raise ValueError(f"{what} must be <= {MAX_LAYERS} (got {n})")


def check_positive(what: str, n) -> None:
    if isinstance(n, int) and n < 1:
        raise ValueError(f"{what} must be >= 1 (got {n})")
