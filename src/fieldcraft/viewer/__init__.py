"""``fieldcraft view``: a local web page on which a person orbits a fitted scene with the mouse
(docs/viewer.md). :mod:`fieldcraft.viewer.server` serves the page (``page.html``) and renders
through a :class:`~fieldcraft.viewer.server.Scene`; the scenes themselves (NeRF runs, baked
octrees, SDF runs, meshes) are built by ``fieldcraft.commands.view``."""

from fieldcraft.viewer.server import Scene, serve

__all__ = ["Scene", "serve"]
