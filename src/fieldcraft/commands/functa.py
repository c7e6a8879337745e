"""``fieldcraft fit functa``, ``fit functa-prior``, ``fit functa-encoder``, ``encode functa``,
``render functa``, ``sample functa``, ``fit classifier`` and ``eval classifier``."""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldcraft.commands.common import (
    add_device_argument,
    add_fit_arguments,
    budget_from_args,
    device_from_args,
    report,
)


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    f = verbs["fit"].add_parser("functa", help="meta-learn a shared field with per-signal latents (functa)",
                                description="Meta-learn a shift-modulated SIREN whose per-signal latent is found by "
                                            "--inner-steps Meta-SGD steps (MAML); then encode the training set "
                                            "(latents.safetensors) and fit a DDPM prior on its latents (prior/). "
                                            "Default budget: 1200 s.")
    f.add_argument("source", help="images: a folder, .npy/.npz, IDX (*-images-idx3-ubyte[.gz]) or sample:NAME")
    f.add_argument("--out", required=True, type=Path)
    f.add_argument("--limit", type=int, default=None, help="use the first K images")
    f.add_argument("--latent", type=int, default=64, help="latent size (default 64)")
    f.add_argument("--inner-steps", type=int, default=3, help="inner-loop steps of the meta-learning (default 3)")
    f.add_argument("--encode-steps", type=int, default=10, help="inner-loop steps when encoding (default 10)")
    f.add_argument("--width", type=int, default=128, help="SIREN hidden width (default 128)")
    f.add_argument("--layers", type=int, default=3, help="SIREN hidden (modulated) layers (default 3)")
    f.add_argument("--omega", type=float, default=30.0, help="SIREN frequency factor")
    f.add_argument("--first-order", action="store_true", help="first-order MAML (default: second order)")
    f.add_argument("--no-meta-sgd", dest="meta_sgd", action="store_false",
                   help="a fixed inner step size (0.005) instead of learned per-coordinate ones")
    f.add_argument("--batch-size", type=int, default=32, help="signals per outer step (default 32)")
    f.add_argument("--lr", type=float, default=5e-4, help="outer Adam learning rate, cosine decay to 0.1x "
                   "(default 5e-4)")
    f.add_argument("--prior-steps", type=int, default=20000, help="steps of the DDPM prior fitted at the end "
                   "(default 20000; 0: none)")
    f.add_argument("--seed", type=int, default=0)
    add_fit_arguments(f)
    f.set_defaults(func=_fit_functa)

    p = verbs["fit"].add_parser("functa-prior", help="fit (again) the DDPM prior of a functa's training latents",
                                description="Fit a DDPM on DIR/latents.safetensors into DIR/prior (default 20000 steps).")
    p.add_argument("directory", type=Path, help="output directory of 'fit functa'")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    add_fit_arguments(p)
    p.set_defaults(func=_fit_prior)

    e = verbs["fit"].add_parser("functa-encoder", help="train a CNN mapping images to a functa's latents",
                                description="A hypernetwork: a small CNN trained to minimise the reconstruction "
                                            "error through the frozen functa. Default 3000 steps.")
    e.add_argument("functa", type=Path, help="output directory of 'fit functa'")
    e.add_argument("source", help="training images (as for fit functa)")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--features", type=int, default=32)
    e.add_argument("--hidden", type=int, default=256)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--lr", type=float, default=1e-3)
    e.add_argument("--seed", type=int, default=0)
    add_fit_arguments(e)
    e.set_defaults(func=_fit_encoder)

    n = verbs["encode"].add_parser("functa", help="turn images into latents of a fitted functa",
                                   description="Inner loop only, batched over signals: writes OUT/latents.safetensors "
                                               "(latents, and labels when the source has them), OUT/reconstructions/ "
                                               "(16-bit PNGs named as the dataset's images) and OUT/metrics.json.")
    n.add_argument("directory", type=Path, help="output directory of 'fit functa'")
    n.add_argument("source", help="images (as for fit functa)")
    n.add_argument("--out", required=True, type=Path)
    n.add_argument("--limit", type=int, default=None, help="encode the first K images")
    n.add_argument("--observe", default=None, help="fit only these pixels, reconstruct all: random:F (e.g. "
                   "random:0.25), top-half, left-half (default: all)")
    n.add_argument("--inner-steps", type=int, default=None, help="default: the fit's --encode-steps (0 with "
                   "--encoder)")
    n.add_argument("--encoder", type=Path, default=None, help="a 'fit functa-encoder' directory: start from the CNN's "
                   "latents (amortised encoding)")
    n.add_argument("--batch-size", type=int, default=500, help="signals encoded at once (default 500)")
    n.add_argument("--seed", type=int, default=0, help="seeds --observe random:F")
    n.add_argument("--quiet", action="store_true")
    add_device_argument(n)
    n.set_defaults(func=_encode)

    r = verbs["render"].add_parser("functa", help="interpolate between two signals' latents (a PNG strip)")
    r.add_argument("directory", type=Path, help="output directory of 'fit functa'")
    r.add_argument("--interpolate", type=int, nargs=2, metavar=("I", "J"), required=True,
                   help="indices of the two images of --source")
    r.add_argument("--source", required=True, help="the images I and J come from")
    r.add_argument("--frames", type=int, default=8, help="latents on the segment, ends included (default 8)")
    r.add_argument("--size", type=int, default=None, help="render the longer side at N pixels (default: the images')")
    r.add_argument("--out", required=True, type=Path, help="PNG to write")
    add_device_argument(r)
    r.set_defaults(func=_render)

    s = verbs["sample"].add_parser("functa", help="draw signals from a functa's latent prior (a PNG grid)")
    s.add_argument("directory", type=Path, help="output directory of 'fit functa' (with its prior/)")
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", required=True, type=Path, help="PNG to write")
    s.add_argument("--size", type=int, default=None, help="render the longer side at N pixels")
    s.add_argument("--seed", type=int, default=0)
    add_device_argument(s)
    s.set_defaults(func=_sample)

    c = verbs["fit"].add_parser("classifier", help="train a classifier on latents",
                                description="An MLP on standardised latents (statistics of the training latents, "
                                            "stored with the model). Default 4000 steps.")
    c.add_argument("latents", help="latents.safetensors or an 'encode functa' output directory (with labels)")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--width", type=int, default=512)
    c.add_argument("--layers", type=int, default=2)
    c.add_argument("--dropout", type=float, default=0.3)
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--weight-decay", type=float, default=1e-4)
    c.add_argument("--noise", type=float, default=0.7, help="Gaussian noise (in standard deviations) added to "
                   "training latents (default 0.3; 0: none)")
    c.add_argument("--seed", type=int, default=0)
    add_fit_arguments(c)
    c.set_defaults(func=_fit_classifier)

    v = verbs["eval"].add_parser("classifier", help="accuracy of a latent classifier (metrics.json)")
    v.add_argument("directory", type=Path, help="output directory of 'fit classifier'")
    v.add_argument("latents", help="latents.safetensors or an 'encode functa' output directory (with labels)")
    add_device_argument(v)
    v.set_defaults(func=_eval_classifier)


def _fit_functa(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.functa import FunctaFitConfig, fit_functa

    config = FunctaFitConfig(source=args.source, limit=args.limit, latent=args.latent, width=args.width,
                             layers=args.layers, omega=args.omega, meta_sgd=args.meta_sgd, inner_steps=args.inner_steps,
                             encode_steps=args.encode_steps,
                             first_order=args.first_order, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             prior_steps=args.prior_steps)
    metrics = fit_functa(config, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                         device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                         checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)


def _fit_prior(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.functa import PRIOR_DIR, PriorFitConfig, fit_prior

    config = PriorFitConfig(width=args.width, layers=args.layers, lr=args.lr, seed=args.seed)
    metrics = fit_prior(args.directory, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                        device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                        config=config, checkpoint_seconds=args.checkpoint_every)
    return report(args.directory / PRIOR_DIR, metrics)


def _fit_encoder(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.functa import EncoderFitConfig, fit_functa_encoder

    config = EncoderFitConfig(functa=str(args.functa), source=args.source, limit=args.limit, features=args.features,
                              hidden=args.hidden, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    metrics = fit_functa_encoder(config, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                                 device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                                 checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)


def _encode(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.functa import encode_functa

    metrics = encode_functa(args.directory, args.source, args.out, limit=args.limit, observe=args.observe,
                            inner_steps=args.inner_steps, encoder=args.encoder, batch_size=args.batch_size,
                            seed=args.seed, device=device_from_args(args), progress=not args.quiet)
    return report(args.out, metrics)


def _render(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.functa import interpolate

    strip = interpolate(args.directory, args.source, args.interpolate[0], args.interpolate[1], args.out,
                        frames=args.frames, size=args.size, device=device_from_args(args))
    print(f"wrote {args.out} ({strip.shape[1]}x{strip.shape[0]}, {args.frames} frames)")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.functa import sample_functa

    grid = sample_functa(args.directory, args.n, args.out, seed=args.seed, size=args.size,
                         device=device_from_args(args))
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}, {args.n} samples)")
    return 0


def _fit_classifier(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.classifier import ClassifierFitConfig, fit_classifier

    config = ClassifierFitConfig(latents=str(args.latents), width=args.width, layers=args.layers, dropout=args.dropout,
                                 batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                                 noise=args.noise, seed=args.seed)
    metrics = fit_classifier(config, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                             device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                             checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)


def _eval_classifier(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.classifier import eval_classifier

    result = eval_classifier(args.directory, args.latents, device=device_from_args(args))
    print(f"accuracy {result['accuracy']:.4f} over {result['count']} latents; metrics in {args.directory / 'metrics.json'}")
    return 0
