"""Building a tower from a checkpoint: with a random init that the weights then overwrite, or on the meta device.

Saves a Hugging Face ``SiglipVisionModel`` at the SO400M/14-384 shape (width 1152, 384 px, 14-px patches; 2 of its 27
layers, so the file stays small) and builds ``ViT-SO400M-14-SigLIP-384`` from it both ways, interleaved, reporting
the median CPU time of each and their ratio. The random-init build is the whole 27-block tower's init (what
``build_encoder`` did before), then the same cut and load.

    python benchmarks/bench_tower_build.py --repeats 3
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> None:
    parser = common.parser(__doc__, "tower_build", torch_options=False)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from slowfast_cli.encoder import towers
    from slowfast_cli.encoder.weights import load_weights, resolve_weights

    model = "ViT-SO400M-14-SigLIP-384"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=2,
                                 num_attention_heads=16, image_size=384, patch_size=14)  # fmt: skip
        SiglipVisionModel(cfg).save_pretrained(tmp)
        model_cfg = towers.model_config(model)

        def build(random_init: bool) -> float:
            t0 = time.process_time()
            weights = resolve_weights(model, tmp)
            visual, adapter, geometry = towers.build_tower(model, model_cfg, False, torch.float32, random_init)
            adapter.prune(visual, 1)
            if not random_init:
                visual = visual.to_empty(device="cpu")
            load_weights(visual, adapter, weights, model, geometry, 1, complete=not random_init)
            return time.process_time() - t0

        times: dict[str, list[float]] = {"random init": [], "meta device": []}
        build(False)  # warm up: imports, file cache
        for _ in range(args.repeats):
            times["random init"].append(build(True))
            times["meta device"].append(build(False))
    medians = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:12s} CPU s: median {medians[k]:.2f}  (runs: {', '.join(f'{x:.2f}' for x in v)})")
    print(f"ratio random init / meta device: {medians['random init'] / medians['meta device']:.1f}x")


if __name__ == "__main__":
    main()
