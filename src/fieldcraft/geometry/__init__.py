"""Geometry for shapes as fields (see docs/shapes.md).

| module | concept |
|---|---|
| :mod:`.mesh` | load/validate meshes and oriented point clouds, normalise into ``[-1, 1]^3`` (transform kept), save |
| :mod:`.bvh` | triangle BVH with numba kernels: exact closest points, fast winding numbers |
| :mod:`.inside` | generalised winding number (exact brute force and BVH), inside test |
| :mod:`.sampling` | surface / near-surface / uniform samples, exact signed distances |
| :mod:`.marching_cubes` | dense, block-wise marching cubes with bounded memory |
| :mod:`.mise` | multiresolution isosurface extraction |
| :mod:`.metrics` | Chamfer-L1/L2, normal consistency, F-score, IoU |
| :mod:`.surface` | level set of a shape field per loss, extraction (MISE or dense), cleaned |
| :mod:`.shape_field` | a fitted shape checkpoint as a function of points (numpy twin or PyTorch), mesh export |
"""
