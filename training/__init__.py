"""AnyStory's two-stage trainer (AnyStory §3.4) over shard format v2 (docs/format.md).

Loader: ``streams`` (which shards each rank and worker reads, weighted rounds), ``plan`` (pair choice, aspect bucket,
condition drop, from meta.json only), ``augment`` (target crop + micro-conditioning, routing ground truth, reference
augmentation), ``loader`` (the composed stream, exact resume position). Training: ``config``, ``trainer`` (both
stages on accelerate), ``checkpoints`` (adapter-only weights + resume state), ``train`` (the CLI).
"""
