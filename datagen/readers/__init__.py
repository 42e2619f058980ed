"""Per-dataset readers: each turns its inputs (video files, Objaverse objects, DeepFashion2 and COCO-format sets,
URL lists) into deterministic work units and one unit into frames. ``download`` is the fetcher of URL inputs."""
