"""Synthetic cohort simulator and descriptor corpus builder (installed as fmrilm.data_gen)."""


def __getattr__(name: str):
    """Modules of this package are imported on first use (`fmrilm.data_gen.simulate` after `import fmrilm`)."""
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # the import sets the attribute for next time
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
