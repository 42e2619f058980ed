"""Tiny random models of the real architectures, built from config classes (no hub, no weights).

For tests and ``--models tiny`` smoke runs: every builder returns the same kind of objects the real loader does
(model + processor), seeded, so each stage runs its real code path. The captioner and the detector share one
small English vocabulary, so random captions hold words the detector's tokenizer knows and spaCy can parse.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from functools import partial

import torch

SEED = 0

# Mostly nouns: a random caption drawn from these still yields noun phrases for the rest of the chain.
WORDS = (
    "a an the of with and in on at is two person man woman child girl boy dog cat horse bird car bicycle "
    "ball chair table cup bottle bag hat shirt dress toy box red blue green white black yellow small large "
    "walking sitting standing holding street park room grass water tree wall"
).split()
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
PROMPT_WORDS = ["user", "assistant", "system", ".", ",", "?", "describe", "this", "image", "photo", "one",
                "sentence", "naming", "people", "animals", "objects", "it"]
# Qwen2-VL's chat format, reduced to what the captioner sends (one image + text per user turn).
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@contextlib.contextmanager
def seeded(seed: int = SEED):
    """Deterministic weights without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def word_tokenizer():
    """A word-level fast tokenizer with Qwen2-VL's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*QWEN_SPECIAL, "[UNK]", *WORDS, *PROMPT_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>", additional_special_tokens=QWEN_SPECIAL)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def qwen2_vl():
    """Qwen2-VL (2 text layers, 1 vision block) and its processor, images resized to 56–112 px."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    tok = word_tokenizer()
    ids = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            # multimodal rope: the sections must sum to head_dim / 2 (head_dim = 64 / 2 heads = 32)
            rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    with seeded():
        model = Qwen2VLForConditionalGeneration(config)
    pixels = 28 * 28
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=4 * pixels, max_pixels=16 * pixels),
        tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_CHAT_TEMPLATE,
    )
    return model.eval(), processor


def bert_tokenizer():
    """An uncased WordPiece tokenizer over ``WORDS`` (Grounding DINO's text side)."""
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *WORDS]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


def _bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)


def grounding_dino():
    """transformers' GroundingDinoForObjectDetection (Swin + BERT, 1 encoder / 2 decoder layers, 30 queries)."""
    from transformers import (GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor,
                              GroundingDinoProcessor, SwinConfig)

    tok = bert_tokenizer()
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 1, 1], window_size=4, out_indices=[2, 3, 4]),
        text_config=_bert_config(len(tok)),
        num_queries=30, encoder_layers=1, decoder_layers=2,  # the decoder needs at least 2 layers
        encoder_ffn_dim=64, decoder_ffn_dim=64, d_model=32, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_n_points=2, decoder_n_points=2, max_text_len=64,
    )
    with seeded():
        model = GroundingDinoForObjectDetection(config)
    # Short side 72, not 64: a square image at 64 px shrinks to 1×1 at the extra feature level, where GroupNorm
    # (one channel per group at this width) has a single value and fails.
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 72, "longest_edge": 96}), tokenizer=tok)
    return model.eval(), processor


def grounding_dino_official():
    """groundingdino-py's GroundingDINO with small layers; its text encoder is a tiny BERT saved to a temp dir
    (the package builds BERT and tokenizer from a path or hub name). Width stays 256: the package hard-codes
    256 in its text position embedding."""
    import groundingdino
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig
    from transformers import BertModel

    from datagen.labeling.grounding_dino_compat import official_bert_compat

    args = SLConfig.fromfile(os.path.join(os.path.dirname(groundingdino.__file__), "config",
                                          "GroundingDINO_SwinT_OGC.py"))
    with tempfile.TemporaryDirectory() as bert_dir, seeded():
        tok = bert_tokenizer()
        BertModel(_bert_config(len(tok))).save_pretrained(bert_dir)
        tok.save_pretrained(bert_dir)
        args.text_encoder_type = bert_dir
        args.device = "cpu"
        args.enc_layers, args.dec_layers, args.nheads, args.dim_feedforward = 1, 2, 2, 64
        args.num_queries, args.max_text_len = 30, 64
        args.use_checkpoint = args.use_transformer_ckpt = False
        with official_bert_compat():
            model = build_model(args)
    return model.eval()


def sam():
    """transformers' SamModel (1-layer ViT on 64 px) and a SamProcessor resizing to 64 px."""
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    width = 16
    config = SamConfig(
        # the shared positional embedding has num_pos_feats = prompt width / 2
        vision_config=SamVisionConfig(hidden_size=32, output_channels=width, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=64, patch_size=8, mlp_dim=64,
                                      global_attn_indexes=[0], window_size=4, num_pos_feats=width // 2),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=width, image_size=64, patch_size=8,
                                                     mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                                                 mlp_dim=32, iou_head_hidden_dim=16),
    )
    with seeded():
        model = SamModel(config)
    processor = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16}))
    return model.eval(), processor


def sam_official():
    """segment-anything's ``Sam`` assembled from its classes with small widths (its builders make full sizes)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    size, patch, width = 64, 8, 16
    with seeded():
        model = Sam(
            image_encoder=ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=32, depth=1, num_heads=2,
                                          out_chans=width, window_size=4, global_attn_indexes=(0,), use_rel_pos=True,
                                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
            prompt_encoder=PromptEncoder(embed_dim=width, image_embedding_size=(size // patch, size // patch),
                                         input_image_size=(size, size), mask_in_chans=4),
            mask_decoder=MaskDecoder(transformer_dim=width, num_multimask_outputs=3, iou_head_depth=1,
                                     iou_head_hidden_dim=16,
                                     transformer=TwoWayTransformer(depth=1, embedding_dim=width, mlp_dim=32,
                                                                   num_heads=2)),
            pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
        )
    return model.eval()


def dinov2():
    """DINOv2 (1 layer, 56 px crops) and its image processor."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    with seeded():
        model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                         image_size=56, patch_size=14))
    processor = BitImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    return model.eval(), processor


def clip_vision():
    """CLIP vision tower with projection (1 layer, 56 px crops) and its image processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with seeded():
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=56,
            patch_size=14, projection_dim=16))
    processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    return model.eval(), processor
