"""Padding-free batches: whole sentences packed into rows of one width, each attending only to itself.

SST-2's sentences average 13 tokens (the longest 66): padded to a batch's longest row, most of what the model
computes is padding. Packed (``batching.PackCollate``), a batch's sentences lie end to end in rows of one width
(``bins``: first-fit decreasing, whole sentences only), each with its own position ids from 0 and a block-diagonal
attention mask, so every sentence's hidden states are the ones it would have alone; each is classified from its own
first token through its model family's own head (``PackedClassifier``), with the model's own modules and weights.
Packing changes how a batch is laid out, never the model: the saved model is the ordinary one.

The mask reaches the model as a 4-D tensor, which transformers passes through as it is: no forward looks at a
2-D padding mask on the host.
"""

from __future__ import annotations

import math

import torch

FAMILIES = ("distilbert", "bert")  # encoders whose classification head is known here (all-MiniLM-L6-v2 is a BERT)


def supported(model_type: str) -> bool:
    return model_type in FAMILIES


def pack_width(longest: int, multiple: int = 8) -> int:
    """The packed rows' width: the longest sentence the run can meet, rounded up to ``multiple`` (one width for the
    whole run, so a row holds any sentence)."""
    return math.ceil(longest / multiple) * multiple


def bins(lengths, width: int) -> list[list[int]]:
    """Sentence positions (into ``lengths``) grouped into rows of at most ``width`` tokens: first-fit decreasing,
    longest first (ties in order), each sentence whole."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -int(lengths[i])):
        n = int(lengths[i])
        if n > width:
            raise ValueError(f"a sentence of {n} tokens does not fit a packed row of {width}")
        row = next((r for r, left in enumerate(room) if left >= n), None)
        if row is None:
            rows.append([i])
            room.append(width - n)
        else:
            rows[row].append(i)
            room[row] -= n
    return rows


def block_mask(segments: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4-D attention mask [R, 1, W, W] of packed rows: a token attends to the tokens of its own sentence.
    A padding token attends to itself alone (a query that may attend to nothing gives NaN in softmax). Boolean
    (True: attend) for torch's attention kernels, additive for transformers' eager attention."""
    width = segments.shape[1]
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] > 0)
    allowed = same | torch.eye(width, dtype=torch.bool, device=segments.device)
    allowed = allowed[:, None]
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed


class PackedClassifier(torch.nn.Module):
    """``model`` (a DistilBERT or BERT sequence classifier) on packed batches: its encoder over the packed rows,
    then its own head on each sentence's first token. Called like the model (``input_ids``, ``attention_mask``:
    the segments, ``position_ids``, ``starts``), it returns the sentences' logits; wrap this, not ``model``, in
    DDP or torch.compile."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        if not supported(model.config.model_type):
            raise ValueError(f"packing supports {', '.join(FAMILIES)} models, not {model.config.model_type}")
        self.model = model
        self.family = model.config.model_type

    def forward(self, input_ids, attention_mask, position_ids, starts):
        # imported here: transformers at import time would load tqdm.auto into every kernel that imports the kit
        from transformers.modeling_outputs import SequenceClassifierOutput

        m = self.model
        encoder = m.distilbert if self.family == "distilbert" else m.bert
        dtype = encoder.embeddings.word_embeddings.weight.dtype
        mask = block_mask(attention_mask, m.config._attn_implementation, dtype)
        hidden = encoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        first = hidden.reshape(-1, hidden.shape[-1])[starts]  # each sentence's first token ([CLS])
        if self.family == "distilbert":  # DistilBertForSequenceClassification's head
            logits = m.classifier(m.dropout(torch.relu(m.pre_classifier(first))))
        else:  # BertForSequenceClassification's: the pooler on the first token, dropout, classifier
            logits = m.classifier(m.dropout(encoder.pooler.activation(encoder.pooler.dense(first))))
        return SequenceClassifierOutput(logits=logits)
