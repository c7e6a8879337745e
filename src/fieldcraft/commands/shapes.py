"""``fieldcraft fit sdf|occupancy|autodecoder``, ``export mesh``, ``render sdf``, ``eval mesh``."""

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
    p = verbs["fit"].add_parser("sdf", help="fit a signed distance field to a mesh or oriented point cloud",
                                description="Fit an SDF; writes checkpoint, history.jsonl, mesh.ply (input "
                                            "coordinates), renders/view_XX.png and metrics.json to --out "
                                            "(default budget 120 s).")
    p.add_argument("source", help="mesh (OBJ/PLY/STL/GLB/OFF) or oriented point cloud (PLY with nx ny nz)")
    p.add_argument("--loss", choices=["regression", "eikonal"], default="regression",
                   help="regression: DeepSDF clamped L1 on exact distances (default, fast); eikonal: SIREN losses")
    p.add_argument("--gradient", choices=["analytic", "numerical"], default=None,
                   help="eikonal only: grad f by autograd (analytic, second derivatives; default) or by central "
                        "differences (numerical, Neuralangelo; keeps the fast hash-grid kernel)")
    _common(p)
    p.set_defaults(func=_fit_sdf)

    o = verbs["fit"].add_parser("occupancy", help="fit an occupancy field (BCE) to a mesh",
                                description="Fit occupancy logits; writes checkpoint, history.jsonl, mesh.ply and "
                                            "metrics.json to --out (default budget 120 s).")
    o.add_argument("source", help="mesh file")
    _common(o)
    o.set_defaults(func=_fit_occupancy, loss="occupancy")

    a = verbs["fit"].add_parser("autodecoder", help="DeepSDF auto-decoder over several meshes + latent interpolation",
                                description="One decoder and one latent code per mesh; writes checkpoint, "
                                            "history.jsonl, shape_K.ply, interp_XX.ply (between the first two "
                                            "codes) and metrics.json to --out (default budget 120 s).")
    a.add_argument("sources", nargs="+", help="mesh files")
    a.add_argument("--out", required=True, type=Path, help="output directory")
    add_fit_arguments(a)
    a.add_argument("--interpolate", type=int, default=5, help="number of interpolated meshes (ends included)")
    a.add_argument("--resolution", type=int, default=128, help="MISE resolution of the meshes")
    a.add_argument("--latent-dim", type=int, default=32)
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=_fit_autodecoder)

    e = verbs["export"].add_parser("mesh", help="marching cubes (dense or MISE) of a fitted shape")
    e.add_argument("directory", type=Path, help="output directory of 'fit sdf' / 'fit occupancy'")
    e.add_argument("--resolution", type=int, default=256, help="cells per axis over the normalised cube")
    e.add_argument("--mise", action="store_true", help="multiresolution extraction (only cells near the surface)")
    e.add_argument("--out", required=True, type=Path, help="mesh file to write (.ply or .obj), input coordinates")
    e.add_argument("--device", default=None, help="torch device for fields evaluated with PyTorch (default: numpy "
                   "on the CPU when it covers the field, else cuda when available, else cpu)")
    e.set_defaults(func=_export, uses_torch=False)  # torch only if the field needs it

    r = verbs["render"].add_parser("sdf", help="sphere-trace a fitted SDF to PNGs")
    r.add_argument("directory", type=Path, help="output directory of 'fit sdf'")
    r.add_argument("--out", required=True, type=Path, help="directory for view_XX.png")
    r.add_argument("--views", type=int, default=4, help="orbit cameras")
    r.add_argument("--size", type=int, default=256, help="image width and height")
    add_device_argument(r)
    r.set_defaults(func=_render)

    m = verbs["eval"].add_parser("mesh", help="Chamfer, normal consistency, F-score, IoU of a mesh against ground truth")
    m.add_argument("pred", help="predicted mesh")
    m.add_argument("gt", help="ground-truth mesh (its bounding box defines the [-1, 1]^3 normalisation)")
    m.add_argument("--tau", type=float, default=0.01, help="F-score threshold (normalised units)")
    m.add_argument("--points", type=int, default=100_000, help="surface samples per mesh")
    m.add_argument("--out", type=Path, default=None, help="also write the metrics as JSON here")
    m.set_defaults(func=_eval)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_fit_arguments(p)
    p.add_argument("--preset", default="hash", choices=["hash", "siren"], help="field preset")
    p.add_argument("--resolution", type=int, default=256, help="MISE resolution of mesh.ply")
    p.add_argument("--batch-size", type=int, default=None, help="points per step (default: the loss's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the loss's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-render", action="store_true", help="skip the sphere-traced PNGs")


def _task_config(args: argparse.Namespace):
    from fieldcraft.tasks.sdf import SDFTaskConfig, default_task_config, sdf_field_config

    config = default_task_config(args.loss)
    changes = {"seed": args.seed}
    if args.preset != "hash":
        changes["field"] = sdf_field_config(args.preset)
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    if args.lr:
        changes["lr"] = args.lr
    if getattr(args, "gradient", None):
        changes["gradient"] = args.gradient
    config = config.replace(**changes)
    assert isinstance(config, SDFTaskConfig)
    return config


def _fit_shape(args: argparse.Namespace, render: bool) -> int:
    from fieldcraft.tasks.sdf import fit_shape

    metrics = fit_shape(args.source, args.out, _task_config(args), budget_from_args(args), resume=args.resume,
                        progress=not args.quiet, device=device_from_args(args), given=tuple(args.given),
                        overwrite=args.overwrite, resolution=args.resolution, render=render,
                        checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)


def _fit_sdf(args: argparse.Namespace) -> int:
    return _fit_shape(args, render=not args.no_render)


def _fit_occupancy(args: argparse.Namespace) -> int:
    return _fit_shape(args, render=False)


def _fit_autodecoder(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.sdf import AutoDecoderConfig, fit_autodecoder

    base = AutoDecoderConfig()
    config = base.replace(latent_dim=args.latent_dim, task=base.task.replace(seed=args.seed))
    metrics = fit_autodecoder(args.sources, args.out, config, budget_from_args(args), resume=args.resume,
                              progress=not args.quiet, device=device_from_args(args), given=tuple(args.given),
                              overwrite=args.overwrite, interpolate=args.interpolate, resolution=args.resolution,
                              checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)


def _export(args: argparse.Namespace) -> int:
    from fieldcraft.errors import check
    from fieldcraft.geometry.shape_field import export_shape_mesh

    check(args.out.suffix.lower() in (".ply", ".obj"), f"{args.out}: mesh output must be .ply or .obj")
    # the numpy path needs no torch: only a device other than the CPU is checked (which imports it)
    device = args.device if args.device in (None, "cpu") else device_from_args(args)
    stats = export_shape_mesh(args.directory, args.out, args.resolution, mise=args.mise, device=device)
    print(f"wrote {args.out}: {stats['vertices']} vertices, {stats['faces']} faces, "
          f"{stats['method']} at {args.resolution}, {stats['seconds']:.2f} s, {stats['evaluations']} field evaluations "
          f"({stats['backend']})")
    return 0


def _render(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.sdf import render_shape

    paths = render_shape(args.directory, args.out, args.views, args.size, device=device_from_args(args))
    print(f"wrote {len(paths)} views to {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from fieldcraft.geometry.mesh import load_shape
    from fieldcraft.geometry.metrics import mesh_metrics
    from fieldcraft.io.records import dumps, write_json

    pred, gt = load_shape(args.pred), load_shape(args.gt)
    metrics = mesh_metrics((pred.trimesh().vertices, pred.faces), (gt.vertices, gt.faces), n_points=args.points,
                           tau=args.tau)
    print(dumps(metrics))
    if args.out is not None:
        write_json(args.out, metrics)
    return 0
