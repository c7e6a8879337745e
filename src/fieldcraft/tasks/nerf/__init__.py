"""NeRF: fit a radiance field to posed images by differentiable volume rendering.

Data (:func:`fieldcraft.data.scene.load_posed_images`) -> rays through pixel centres ->
samples (occupancy-grid marching, or stratified + hierarchical) -> radiance field ->
compositing over a background -> MSE against the pixels. By stage:

- :mod:`~fieldcraft.tasks.nerf.config`: :class:`NerfConfig` and the presets (:func:`nerf_config`:
  ``instant``, ``vanilla``, ``tiny``), the optimiser and learning-rate schedule of each;
- :mod:`~fieldcraft.tasks.nerf.model`: :class:`NerfModel`, fields + occupancy grid + visual hull
  and the rendering of a ray batch;
- :mod:`~fieldcraft.tasks.nerf.training`: the objective on the training core and :func:`fit`;
- :mod:`~fieldcraft.tasks.nerf.outputs`: :func:`load_model`, :func:`evaluate` (renders + PSNR /
  SSIM of a split), :func:`render_orbit` (video);
- :mod:`~fieldcraft.tasks.nerf.blocks`: a scene fitted as overlapping blocks of cameras, one field
  each, composited per view (Block-NeRF; ``fit nerf --blocks``).
- :mod:`~fieldcraft.tasks.nerf.features`: feature fields distilled from 2-D feature maps into a
  fitted run, 3-D selection by feature or clicked pixel, remove / recolour edits (DFF).

Generic pieces live below the task: rays and ray batches (:mod:`fieldcraft.render.rays`),
samplers, compositing, occupancy grids, camera paths (:mod:`fieldcraft.render.cameras`), depth
pictures (:mod:`fieldcraft.render.depth`), videos (:mod:`fieldcraft.io.video`).
"""

from fieldcraft.tasks.nerf.config import (
    BACKGROUNDS,
    BOXES,
    DEFAULT_PRESET,
    PRESETS,
    SCHEDULES,
    TASK,
    NerfConfig,
    nerf_config,
)
from fieldcraft.tasks.nerf.model import NerfModel, background_colour
from fieldcraft.tasks.nerf.outputs import evaluate, fitted_views, load_model, orbit_cameras, render_orbit
from fieldcraft.tasks.nerf.training import PhotometricLoss, fit, has_grid, scene_bounds, training_rays

__all__ = ["BACKGROUNDS", "BOXES", "DEFAULT_PRESET", "PRESETS", "SCHEDULES", "TASK", "NerfConfig", "NerfModel",
           "PhotometricLoss", "background_colour", "evaluate", "fit", "fitted_views", "has_grid", "load_model",
           "nerf_config", "orbit_cameras", "render_orbit", "scene_bounds", "training_rays"]
