"""semiseg: segmentation learning when dense labels are scarce.

Importing the package is cheap: heavy libraries (torch, MONAI, matplotlib) are imported by the
submodules that need them, so ``semiseg --help`` stays fast.
"""

__version__ = "0.1.0"

#: the Python API (:mod:`semiseg.api`), imported on first use
_API = ("train", "load", "open_run", "Run", "Model")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from semiseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'semiseg' has no attribute {name!r}")
