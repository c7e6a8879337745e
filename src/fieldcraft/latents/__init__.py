"""Signals as latent vectors of one shared field, and what works on those vectors.

- :mod:`.functa`: a shared SIREN whose hidden layers are shifted by a linear map of a per-signal
  latent ``z``; ``z`` is found by a few gradient steps from 0 with meta-learned (Meta-SGD)
  per-coordinate step sizes (Dupont et al. 2022, "From data to functa").
- :mod:`.encoder`: a small CNN mapping an image to its latent in one forward pass (a hypernetwork
  into the functa's latent space), the amortised alternative to the inner loop.
- :mod:`.diffusion`: a DDPM on latent vectors (a generative model of signals).
- :mod:`.store`: ``latents.safetensors``, the file that carries latents (and labels) between commands.

Tasks (:mod:`fieldcraft.tasks.functa`, :mod:`fieldcraft.tasks.classifier`) wire these to data,
the training core and the command line.
"""
