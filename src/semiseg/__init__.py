"""semiseg: segmentation learning when dense labels are scarce.

Importing the package is cheap: heavy libraries (torch, MONAI, matplotlib) are imported by the
submodules that need them, so ``semiseg --help`` stays fast.
"""

__version__ = "0.1.0"
