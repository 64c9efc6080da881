"""Picture of how a sample forms: one row per image, one column per sampling step, then the final image.

Each cell decodes that step's x0 prediction (the drawn tokens at masked positions, the known tokens elsewhere)
and darkens the positions that were still masked going into the step, so committed tokens show bright. Used to
see the order in which the sampler fixes background and objects (benchmarks/RESULTS.md, base-model probes).

Usage: python benchmarks/trajectory_grid.py --out traj.png [--model FOLDER] [--images 2]
       [--prompts "a photo of a circle" "a photo of a red square"] [--set sampler.num_steps=24 ...]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from maskfocus.config import default_run_config
from maskfocus.config_yaml import parse_set
from maskfocus.images import save_grid, to_uint8
from maskfocus.models import load_generator
from maskfocus.outputs import check_output_file
from maskfocus.sampling import sample_with_config, seeded_generator
from maskfocus.script_args import SAMPLING_ONLY, nonnegative_int, positive_int, run_script

DEFAULT_PROMPTS = ["a photo of a circle", "a photo of a square", "a photo of a triangle", "a photo of a diamond"]
MASKED_BRIGHTNESS = 0.45


def step_cells(model, result, index: int) -> np.ndarray:
    """(T + 1, H, W, 3) uint8: every step's x0 prediction with still-masked positions darkened, then the image."""
    x0_TL, masks_TL = result.x0_BTL[index], result.masks_BTL[index]
    images = to_uint8(model.decode(torch.cat([x0_TL, result.tokens_BL[index : index + 1]]))).astype(np.float32)
    rows, cols = model.grid_size
    patch = images.shape[1] // rows
    masked_THW = masks_TL.view(-1, rows, cols).repeat_interleave(patch, 1).repeat_interleave(patch, 2).cpu().numpy()
    images[:-1][masked_THW] *= MASKED_BRIGHTNESS
    return images.round().astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--model", help="model folder (default: the config's, builtin:shapes-tiny)")
    parser.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS)
    parser.add_argument("--images", type=positive_int, default=2, help="images per prompt")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed (default %(default)s)")
    parser.add_argument(
        "--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="config overrides (sampler.*)"
    )
    args = parser.parse_args()
    check_output_file("--out", args.out, "image")  # before the sampling, not after it
    settings = parse_set(args.set)
    if unused := [key for key in settings if not key.startswith(("sampler", "model"))]:
        parser.error(f"--set {', '.join(unused)}: this script only samples; it reads sampler.* and model.* settings")
    overrides = {**SAMPLING_ONLY, **settings}
    if args.model:
        overrides["model.path"] = args.model
    config = default_run_config(overrides)
    model = load_generator(config.model)
    prompts = [prompt for prompt in args.prompts for _ in range(args.images)]
    model.check_prompts(sorted(set(prompts)))
    result = sample_with_config(model, prompts, config.sampler, seeded_generator(args.seed), record=True)
    cells = np.concatenate([step_cells(model, result, index) for index in range(len(prompts))])
    path = save_grid(args.out, cells, columns=config.sampler.num_steps + 1, labels=prompts)
    print(f"wrote {path}: {len(prompts)} rows x {config.sampler.num_steps} steps + the final image")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
