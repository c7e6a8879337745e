"""Numeric kernels that need numpy (and numba) only, never PyTorch.

| module | concept |
|---|---|
| :mod:`.grid_layout` | static layout of a multiresolution grid (levels, rows, hashing) |
| :mod:`.grid` | numba kernels of the grid encoding: features and table gradients |
| :mod:`.field` | torch-free evaluation of a saved field (grid/identity encoding + MLP) |

The PyTorch modules (:mod:`fieldcraft.encodings`) build on these; one-shot commands such as
``fieldcraft export mesh`` use them directly and skip importing torch (about 1.4 s).
"""
