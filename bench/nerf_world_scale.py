"""How the world's scale of a real capture changes ``nerfacto`` (its densities are per world unit).

    python bench/nerf_world_scale.py --seconds 180

Fruit's colmap2nerf ``transforms.json`` is rewritten as nerfstudio's ``ns-process-data`` would
leave it (poses scaled by 0.37 and shifted, ``aabb_scale`` dropped, ``camera_model`` OPENCV; the
images are linked, not copied), which the nerfstudio reader brings back to colmap2nerf's scale
(cameras at a mean distance 4 from the point they look at,
:func:`fieldcraft.data.nerfstudio.colmap2nerf_normalisation`). Two fits at once, one thread each,
``--downscale 2``, on the training frames but every 8th, scored on those (validation frames; the
held-out frames are never looked at): ``colmap2nerf`` the reader as it is; ``farthest1`` the same
file read with the farthest camera at distance 1 along an axis (COLMAP models' scale,
:func:`fieldcraft.data.colmap.normalisation`). Writes ``bench/results/nerf_world_scale_fruit_val.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "nerf" / "fruit"
RESULTS = HERE / "results" / "nerf_world_scale_fruit_val.json"
HOLDOUT = 8
SCALES = ("colmap2nerf", "farthest1")


def rewrite(src: Path, dest: Path) -> None:
    """``src``'s transforms.json as ns-process-data would leave it, in ``dest`` (images linked)."""
    import numpy as np

    meta = json.loads((src / "transforms.json").read_text())
    meta.pop("aabb_scale", None)
    meta["camera_model"] = "OPENCV"
    for fr in meta["frames"]:
        m = np.array(fr["transform_matrix"], dtype=float)
        m[:3, 3] = 0.37 * m[:3, 3] + [5.0, -3.0, 2.0]
        fr["transform_matrix"] = m.tolist()
        folder = Path(fr["file_path"]).parent
        if not (dest / folder).exists():
            (dest / folder).parent.mkdir(parents=True, exist_ok=True)
            (dest / folder).symlink_to((src / folder).resolve(), target_is_directory=True)
    (dest / "transforms.json").write_text(json.dumps(meta))


def one_run(args: argparse.Namespace, scale: str) -> dict:
    """Fit and score one scale (the child)."""
    import torch
    from nerf_proposal import score_val

    import fieldcraft.data.nerfstudio as nerfstudio
    from fieldcraft.data.colmap import normalisation
    from fieldcraft.data.scene import load_posed_images
    from fieldcraft.tasks.nerf import fit, nerf_config
    from fieldcraft.train import Budget

    torch.set_num_threads(1)
    if scale == "farthest1":  # COLMAP models' scale instead of colmap2nerf's
        nerfstudio.colmap2nerf_normalisation = lambda c2w: (
            lambda c, s: (torch.from_numpy(c), s))(*normalisation(c2w.numpy()))
    data = load_posed_images(args.data, "train", downscale=2)
    out = Path(args.work) / scale
    load = os.getloadavg()[0]
    s = fit(nerf_config("nerfacto"), args.data, out, Budget(seconds=args.seconds), overwrite=True, progress=False,
            downscale=2, frames=tuple(i for i in range(len(data)) if i % HOLDOUT))
    psnr, ssim, views, _ = score_val(out, HOLDOUT, None)
    spread = float(data.cameras.c2w[:, :, 3].norm(dim=-1).mean())
    return {"scale": scale, "mean_camera_distance": spread, "steps": s["steps"], "fit_seconds": s["fit_seconds"],
            "val_psnr": psnr, "val_ssim": ssim, "val_views": len(views),
            "val_per_view": [round(v["psnr"], 3) for v in views], "train_psnr": s["train_psnr"],
            "threads": 1, "load_average_1min_before": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=DATA, help="a colmap2nerf capture (default: fruit)")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(HERE))
        print(json.dumps(one_run(args, args.child)))
        return
    if not (args.source / "transforms.json").is_file():
        sys.exit(f"{args.source}: no transforms.json (see ../shared/data/README.md)")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "capture"
        data.mkdir()
        rewrite(args.source, data)

        def child(scale: str) -> dict:
            done = subprocess.run([sys.executable, __file__, "--data", str(data), "--work", tmp, "--seconds",
                                   str(args.seconds), "--child", scale], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{scale}: failed\n{done.stderr[-2000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(run), flush=True)
            return run

        with ThreadPoolExecutor(len(SCALES)) as pool:
            runs = list(pool.map(child, SCALES))
    result = {"what": f"nerfacto on {args.source.name} rewritten as ns-process-data leaves it, read at two world "
                      f"scales; --downscale 2, {args.seconds:g} s, validation frames (every {HOLDOUT}th training "
                      "frame, left out of the fit)", "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
