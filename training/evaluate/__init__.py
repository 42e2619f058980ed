"""Evaluation of a trained AnyStory run (``python -m training.evaluate``): CLIP-I, DINO, CLIP-T, M-DINO and a
blending rate, against base SDXL (and IP-Adapter Plus) on the same prompts and seeds, with an HTML report.

Modules: ``sets`` (spec files, DreamBench folders, held-out shards), ``encoders`` (CLIP ViT-B/32, DINO ViT-S/16),
``metrics``, ``run`` (generation and scoring), ``report`` (metrics.json, parquet, HTML), ``during_training``
(``train.eval_every``).
"""
