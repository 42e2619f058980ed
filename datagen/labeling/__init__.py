"""Labeling models and rules, one module each: captions (Qwen2-VL), entities (spaCy), detection (Grounding DINO),
segmentation (SAM), matching (Hungarian on embeddings), the Subject-Diffusion B.1 filters, the router rules, and
``chain``, which runs them in order over a unit's frames."""
