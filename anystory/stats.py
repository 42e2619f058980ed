"""Parameter counts and shapes of AnyStory on SDXL, from the shipped configs on the meta device (no weights).

    python -m anystory.stats [--size sdxl|tiny] [--json]

Paper Table 1: SDXL UNet 2.57 B parameters → simplified ReferenceNet 2.02 B; §4.1: 70 cross-attention layers;
§3.2: subject tokens 64 × 2048.
"""

from __future__ import annotations

import argparse
import json

import torch

from anystory import builders
from anystory.builders import count_parameters
from anystory.model import AnyStoryModel
from anystory.reference_net import simplified_reference_unet


def model_stats(size: str = "sdxl") -> dict:
    with torch.device("meta"):
        model = AnyStoryModel.build(size)
        plain_reference = simplified_reference_unet(builders.build_unet(size), mask_channels=0)
        clip_tokens = model.clip.vision_model.embeddings.num_positions
    procs = model._processors
    subject_kv = sum(count_parameters(p) for p in procs[1::2])
    reference_kv = sum(count_parameters(p) for p in procs[0::2])
    qformer = model.subject_qformer.config
    return {
        "size": size,
        "unet": {"parameters": count_parameters(model.unet) - subject_kv - reference_kv,
                 "cross_attention_layers": len(model.layer_names)},
        "reference_net": {"parameters_without_mask_channel": count_parameters(plain_reference),
                          "parameters": count_parameters(model.reference_net),
                          "mask_channels": model.reference_net.config.mask_channels},
        "subject_encoder": {"clip_vision": count_parameters(model.clip),
                            "subject_qformer": count_parameters(model.subject_qformer),
                            "subject_kv": subject_kv, "reference_kv": reference_kv},
        "router": {"parameters": count_parameters(model.router),
                   "routing_qformer": count_parameters(model.router.routing_qformer),
                   "routing_heads": count_parameters(model.router.layers)},
        "clip_tokens": [clip_tokens, model.clip.config.hidden_size],
        "subject_tokens": [qformer.num_queries, qformer.output_dims],
    }


def _table(stats: dict) -> str:
    rows = [("UNet (base, frozen)", stats["unet"]["parameters"]),
            ("  cross-attention layers", stats["unet"]["cross_attention_layers"]),
            ("Simplified ReferenceNet, no mask channel", stats["reference_net"]["parameters_without_mask_channel"]),
            ("Simplified ReferenceNet + mask channel", stats["reference_net"]["parameters"]),
            ("CLIP image encoder (frozen)", stats["subject_encoder"]["clip_vision"]),
            ("Subject QFormer", stats["subject_encoder"]["subject_qformer"]),
            ("Subject k/v (Eq. 5)", stats["subject_encoder"]["subject_kv"]),
            ("Reference k/v (Eq. 6)", stats["subject_encoder"]["reference_kv"]),
            ("Router", stats["router"]["parameters"]),
            ("  routing QFormer", stats["router"]["routing_qformer"]),
            ("  routing heads", stats["router"]["routing_heads"]),
            ("CLIP tokens", " × ".join(map(str, stats["clip_tokens"]))),
            ("Subject tokens", " × ".join(map(str, stats["subject_tokens"])))]
    width = max(len(name) for name, _ in rows)
    return "\n".join([f"AnyStory ({stats['size']}), from shipped configs"] +
                     [f"{name:<{width}}  {f'{value:,}' if isinstance(value, int) else value:>15}"
                      for name, value in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=builders.SIZES, default="sdxl")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    stats = model_stats(args.size)
    print(json.dumps(stats, indent=2) if args.json else _table(stats))


if __name__ == "__main__":
    main()
