"""groundingdino-py 0.4 on transformers 5: its BERT wrapper uses internals transformers 5 removed. A module of its
own so the detector and the tiny-model builders (``datagen.tiny``) both use it without importing each other."""

from __future__ import annotations

import contextlib

import torch


class _BertForGroundingDino(torch.nn.Module):
    """groundingdino-py 0.4 wraps BERT with internals transformers 5 removed (``get_extended_attention_mask``,
    the old encoder signature). This wrapper keeps the same submodule names (checkpoints load unchanged) and
    calls the model itself, passing GroundingDINO's per-phrase self-attention mask as a prepared 4D mask."""

    def __init__(self, bert_model):
        super().__init__()
        self.config = bert_model.config
        self.embeddings, self.encoder, self.pooler = bert_model.embeddings, bert_model.encoder, bert_model.pooler
        self.__dict__["_bert"] = bert_model  # shares the modules above; not registered twice

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **_):
        if attention_mask is not None and attention_mask.dim() == 3:  # (batch, tokens, tokens), True = attend
            dtype = self.embeddings.word_embeddings.weight.dtype
            additive = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
            attention_mask = additive.masked_fill(~attention_mask.bool(), torch.finfo(dtype).min)[:, None]
        return self._bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          position_ids=position_ids)


@contextlib.contextmanager
def official_bert_compat():
    """Build groundingdino-py models with the BERT wrapper above (only while building)."""
    import groundingdino.models.GroundingDINO.groundingdino as gd

    original = gd.BertModelWarper
    gd.BertModelWarper = _BertForGroundingDino
    try:
        yield
    finally:
        gd.BertModelWarper = original
