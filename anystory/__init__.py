"""AnyStory on SDXL (diffusers): subject encoder (CLIP ViT-H/14 + subject QFormer, simplified ReferenceNet),
decoupled instance-aware router, routed attention processors, inference pipeline and routing-map helpers.

Modules: ``builders`` (shipped configs → components), ``encoder`` (QFormers, Eq. 2), ``reference_net`` (Eq. 3),
``router`` (§3.3, Eq. 4), ``attention`` (Eq. 5–8), ``model`` (training forward, stages, adapters), ``pipeline``,
``visualize``, ``stats`` (``python -m anystory.stats``), ``generate`` (``python -m anystory.generate``).
"""

from anystory.attention import RoutingState, SubjectConditions
from anystory.builders import (
    build_clip_vision,
    build_scheduler,
    build_text_encoders_and_tokenizers,
    build_unet,
    build_vae,
    load_config,
)
from anystory.encoder import RoutingQFormer, SubjectQFormer
from anystory.model import AnyStoryModel, AnyStoryOutput, MissingAdapterPart, SubjectBatch
from anystory.pipeline import AnyStoryPipeline, AnyStoryPipelineOutput, segment_subject
from anystory.reference_net import ReferenceNet, reference_latents, simplified_reference_unet
from anystory.router import SubjectRouter, routing_loss
from anystory.visualize import routing_grid, routing_overlay, segment_from_routing_maps

__all__ = [
    "AnyStoryModel", "AnyStoryOutput", "AnyStoryPipeline", "AnyStoryPipelineOutput", "MissingAdapterPart",
    "ReferenceNet", "RoutingQFormer", "RoutingState", "SubjectBatch", "SubjectConditions", "SubjectQFormer",
    "SubjectRouter", "build_clip_vision", "build_scheduler", "build_text_encoders_and_tokenizers", "build_unet", "build_vae", "load_config",
    "reference_latents", "routing_grid", "routing_loss", "routing_overlay", "segment_from_routing_maps",
    "segment_subject", "simplified_reference_unet",
]
