"""fieldcraft: neural fields (implicit neural representations) on any device.

A neural field maps coordinates to values. fieldcraft builds one from a declarative
config (:mod:`fieldcraft.config`): an encoding (:mod:`fieldcraft.encodings`) followed by a
network (:mod:`fieldcraft.networks`), wired together in :mod:`fieldcraft.fields`, and fits
it to a signal through a task (:mod:`fieldcraft.tasks`) with one generic training loop
(:mod:`fieldcraft.train`).

Importing this package does not import torch, so the command line can set process
defaults (threads, OpenMP wait policy) first; see :mod:`fieldcraft.runtime`.
"""

__version__ = "0.1.0"
