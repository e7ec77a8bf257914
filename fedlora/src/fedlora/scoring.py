"""Multiple-choice scoring of HellaSwag items for both model families.

Encoder: the 4 (context, ending) pairs go through `AutoModelForMultipleChoice`; the scores are
its 4 logits. Decoder: score_c = mean log-probability of the tokens of " " + ending_c given the
context (length-normalised). The decoder runs the shared context once and reuses its KV cache
for the 4 endings (`shared_context=True`, the default); `packed=True` also runs each context
once, in one pass: an item is one row (context, then its 4 endings), each ending masked from
the others, so endings are not padded to the batch's longest (`row_tokens` puts several items in
one row, each masked from the others, so items are not padded to the longest either);
`shared_context=False` scores the 4 full sequences in one padded batch. All give the same scores
(up to float rounding), and gradients flow through the context in every path.

Items are tokenised once (`encode`) and padded per batch (`Encoded.batch`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

NUM_CHOICES = 4


@dataclass
class EncoderBatch:
    input_ids: Tensor  # (B, 4, T)
    attention_mask: Tensor  # (B, 4, T)
    token_type_ids: Tensor | None  # (B, 4, T)
    labels: Tensor  # (B,)


@dataclass
class DecoderBatch:
    context_ids: Tensor  # (B, Tc), right-padded
    context_mask: Tensor  # (B, Tc)
    context_len: Tensor  # (B,)
    ending_ids: Tensor  # (B, 4, Te), right-padded
    ending_mask: Tensor  # (B, 4, Te)
    labels: Tensor  # (B,)


Batch = EncoderBatch | DecoderBatch


def batch_to(batch: Batch, device: torch.device | str) -> Batch:
    values = {f.name: getattr(batch, f.name) for f in fields(batch)}
    return type(batch)(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in values.items()})


def _pad(rows: Sequence[Sequence[int]], width: int, value: int) -> Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


@dataclass
class Encoded:
    """Pre-tokenised items of one family; `batch(indices)` pads a selection into tensors."""

    family: str
    pad_id: int
    labels: list[int]
    pairs: list[list[list[int]]] | None = None  # encoder: item -> 4 token id lists
    pair_types: list[list[list[int]]] | None = None  # encoder: token type ids (or None)
    contexts: list[list[int]] | None = None  # decoder: context ids per item
    endings: list[list[list[int]]] | None = None  # decoder: item -> 4 ending id lists

    def __len__(self) -> int:
        return len(self.labels)

    def length(self, i: int) -> int:
        """Padded width item `i` needs (longest choice for the encoder, context + longest ending)."""
        if self.family == "encoder":
            return max(len(seq) for seq in self.pairs[i])
        return len(self.contexts[i]) + max(len(e) for e in self.endings[i])

    def batch(self, indices: Sequence[int]) -> Batch:
        labels = torch.as_tensor([self.labels[i] for i in indices], dtype=torch.long)
        if self.family == "encoder":
            rows = [seq for i in indices for seq in self.pairs[i]]
            width = max(len(r) for r in rows)
            ids = _pad(rows, width, self.pad_id).view(len(indices), NUM_CHOICES, width)
            mask = _pad([[1] * len(r) for r in rows], width, 0).view_as(ids)
            types = None
            if self.pair_types is not None:
                types = _pad([t for i in indices for t in self.pair_types[i]], width, 0).view_as(ids)
            return EncoderBatch(ids, mask, types, labels)
        ctx = [self.contexts[i] for i in indices]
        ends = [e for i in indices for e in self.endings[i]]
        tc, te = max(len(c) for c in ctx), max(len(e) for e in ends)
        end_ids = _pad(ends, te, self.pad_id).view(len(indices), NUM_CHOICES, te)
        return DecoderBatch(
            context_ids=_pad(ctx, tc, self.pad_id),
            context_mask=_pad([[1] * len(c) for c in ctx], tc, 0),
            context_len=torch.as_tensor([len(c) for c in ctx], dtype=torch.long),
            ending_ids=end_ids,
            ending_mask=_pad([[1] * len(e) for e in ends], te, 0).view_as(end_ids),
            labels=labels,
        )


def encode(items: Sequence[Any], tokenizer: Any, family: str, max_length: int) -> Encoded:
    """Tokenise `items` (objects with .context, .endings, .label) once for `family`."""
    if family not in ("encoder", "decoder"):
        raise ValueError(f"family must be 'encoder' or 'decoder', got {family!r}")
    for i, item in enumerate(items):
        if len(item.endings) != NUM_CHOICES:
            raise ValueError(f"item {i}: expected {NUM_CHOICES} endings, got {len(item.endings)}")
    labels = [int(item.label) for item in items]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if not items:
        return Encoded(family, pad_id, labels, pairs=[], contexts=[], endings=[])
    if family == "encoder":
        return _encode_pairs(items, tokenizer, max_length, labels, pad_id)
    return _encode_prefix_endings(items, tokenizer, max_length, labels, pad_id)


def _encode_pairs(items, tokenizer, max_length, labels, pad_id) -> Encoded:
    firsts = [item.context for item in items for _ in range(NUM_CHOICES)]
    seconds = [ending for item in items for ending in item.endings]
    enc = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
    group = lambda rows: [rows[i : i + NUM_CHOICES] for i in range(0, len(rows), NUM_CHOICES)]  # noqa: E731
    types = group(enc["token_type_ids"]) if "token_type_ids" in enc else None
    return Encoded("encoder", pad_id, labels, pairs=group(enc["input_ids"]), pair_types=types)


def _encode_prefix_endings(items, tokenizer, max_length, labels, pad_id) -> Encoded:
    ctx_ids = tokenizer([item.context for item in items], add_special_tokens=True)["input_ids"]
    end_ids = tokenizer([" " + e for item in items for e in item.endings], add_special_tokens=False)["input_ids"]
    contexts, endings = [], []
    for i, ctx in enumerate(ctx_ids):
        ends = [e[: max_length - 1] for e in end_ids[NUM_CHOICES * i : NUM_CHOICES * (i + 1)]]
        if not ctx or any(not e for e in ends):
            raise ValueError(f"item {i}: context and every ending need at least one token")
        # Keep the context's end (nearest the ending) when the longest choice exceeds max_length.
        keep = max_length - max(len(e) for e in ends)
        contexts.append(ctx[-keep:])
        endings.append(ends)
    return Encoded("decoder", pad_id, labels, contexts=contexts, endings=endings)


def _causal_parts(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone, lm_head) of a causal LM, unwrapping PEFT; LoRA layers live inside the backbone."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def _cache_keyword(backbone: torch.nn.Module) -> str:
    """transformers 5 renames `past_key_values` to `cache`; accept either."""
    params = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _ending_logprob_mean(lm_head, hidden: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean log p(target) over masked positions; hidden (N, Te, H) predicts targets (N, Te)."""
    real = mask.bool()
    # The vocabulary projection and its softmax only on real ending tokens (M of them): padding
    # is up to half the rows, and these (M, V) logits are the largest tensor of the pass.
    logits = _at_least_float32(lm_head(hidden[real]))  # (M, V)
    real_lp = -F.cross_entropy(logits, targets[real], reduction="none")  # (M,) = log p(target)
    token_lp = torch.zeros(targets.shape, dtype=real_lp.dtype, device=real_lp.device)
    token_lp = token_lp.masked_scatter(real, real_lp)  # (N, Te), zero at padding
    return token_lp.sum(-1) / mask.sum(-1)


def _decoder_scores_shared(model: Any, b: DecoderBatch) -> Tensor:
    backbone, lm_head = _causal_parts(model)
    n, te = b.labels.shape[0], b.ending_ids.shape[-1]
    cache = DynamicCache(config=backbone.config)
    cache_kw = _cache_keyword(backbone)
    out = backbone(input_ids=b.context_ids, attention_mask=b.context_mask, use_cache=True, **{cache_kw: cache})
    last = out.last_hidden_state[torch.arange(n, device=b.context_ids.device), b.context_len - 1]
    cache.batch_repeat_interleave(NUM_CHOICES)  # every ending reads the same context keys/values
    ctx_len = b.context_len.repeat_interleave(NUM_CHOICES)
    positions = ctx_len[:, None] + torch.arange(te, device=ctx_len.device)
    mask = torch.cat([b.context_mask.repeat_interleave(NUM_CHOICES, 0), b.ending_mask.view(n * NUM_CHOICES, te)], 1)
    ends = backbone(input_ids=b.ending_ids.view(-1, te), attention_mask=mask, position_ids=positions,
                    use_cache=True, **{cache_kw: cache}).last_hidden_state
    # Token t of an ending is predicted from the hidden state just before it.
    predictors = torch.cat([last.repeat_interleave(NUM_CHOICES, 0)[:, None], ends[:, :-1]], 1)
    scores = _ending_logprob_mean(lm_head, predictors, b.ending_ids.view(-1, te), b.ending_mask.view(-1, te).float())
    return scores.view(n, NUM_CHOICES)


def pack_rows(sizes: list[int], row_tokens: int) -> list[list[int]]:
    """Items (by index, in order) cut into rows: each item alone (`row_tokens` 0), or as many
    consecutive items as fit in max(row_tokens, the longest item) tokens."""
    if row_tokens <= 0:
        return [[i] for i in range(len(sizes))]
    cap, rows, used = max(row_tokens, max(sizes)), [[]], 0
    for i, size in enumerate(sizes):
        if rows[-1] and used + size > cap:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += size
    return rows


def _packed_rows(b: DecoderBatch, row_tokens: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Items as rows of context, then its 4 endings (one item per row, or several: see `pack_rows`).
    Returns ids (R, L), position ids (R, L) (every ending continues its context's positions), a
    boolean attention mask (R, 1, L, L) in which a token sees the earlier tokens of its own item's
    context and of its own ending only, and, for every ending token, the flat index into (R * L)
    of the hidden state that predicts it (B, 4, Te)."""
    n, te = b.labels.shape[0], b.ending_ids.shape[-1]
    ctx_len, end_len = b.context_len.tolist(), b.ending_mask.sum(-1).tolist()
    rows = pack_rows([ctx_len[i] + sum(end_len[i]) for i in range(n)], row_tokens)
    width = max(sum(ctx_len[i] + sum(end_len[i]) for i in row) for row in rows)
    ids, items, parts, positions = [], [], [], []
    predictor = torch.zeros(n, NUM_CHOICES, te, dtype=torch.long)  # 0 at padding: gathered, masked out
    for r, row in enumerate(rows):
        row_ids, row_items, row_parts, row_pos = [], [], [], []
        for i in row:
            c, ctx_end = ctx_len[i], r * width + len(row_ids) + ctx_len[i] - 1
            row_ids += b.context_ids[i, :c].tolist()
            row_items += [i] * c
            row_parts += [0] * c
            row_pos += list(range(c))
            for j in range(NUM_CHOICES):
                length, start = end_len[i][j], r * width + len(row_ids)
                predictor[i, j, 0] = ctx_end  # the first ending token is predicted by the context's end
                predictor[i, j, 1:length] = torch.arange(start, start + length - 1)
                row_ids += b.ending_ids[i, j, :length].tolist()
                row_items += [i] * length
                row_parts += [j + 1] * length
                row_pos += list(range(c, c + length))
        ids.append(row_ids)
        items.append(row_items)
        parts.append(row_parts)
        positions.append(row_pos)
    item, part = _pad(items, width, -1), _pad(parts, width, -1)  # part: 0 context, 1-4 ending, -1 padding
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_item = (item[:, None, :] == item[:, :, None]) & (item[:, None, :] >= 0)  # (R, Lq, Lk)
    visible = (part[:, None, :] == 0) | (part[:, None, :] == part[:, :, None])
    mask = causal & same_item & visible
    mask |= torch.eye(width, dtype=torch.bool)  # padding queries see themselves: no empty softmax row
    return _pad(ids, width, 0), _pad(positions, width, 0), mask[:, None], predictor


def _decoder_scores_packed(model: Any, b: DecoderBatch, row_tokens: int = 0) -> Tensor:
    backbone, lm_head = _causal_parts(model)
    attention = getattr(backbone.config, "_attn_implementation", None)
    if attention != "sdpa":  # the boolean block mask goes to SDPA as it is; other kernels read it otherwise
        raise ValueError(f"packing needs the model's attention implementation 'sdpa', got {attention!r}; "
                         "turn train.packing / eval.packing off")
    n, te = b.labels.shape[0], b.ending_ids.shape[-1]
    device = b.context_ids.device
    ids, positions, mask, predictor = (t.to(device) for t in _packed_rows(b, row_tokens))
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=positions,
                      use_cache=False).last_hidden_state  # (R, L, H)
    predictors = hidden.reshape(-1, hidden.shape[-1])[predictor.view(-1)].view(n * NUM_CHOICES, te, -1)
    scores = _ending_logprob_mean(lm_head, predictors, b.ending_ids.view(-1, te), b.ending_mask.view(-1, te).float())
    return scores.view(n, NUM_CHOICES)


def _decoder_scores_full(model: Any, b: DecoderBatch) -> Tensor:
    backbone, lm_head = _causal_parts(model)
    n, tc = b.context_ids.shape
    te = b.ending_ids.shape[-1]
    rows = n * NUM_CHOICES
    ctx_len = b.context_len.repeat_interleave(NUM_CHOICES)
    end_len = b.ending_mask.view(rows, te).sum(-1)
    seq = torch.cat([b.context_ids.repeat_interleave(NUM_CHOICES, 0), b.ending_ids.new_full((rows, te), 0)], 1)
    end_pos = ctx_len[:, None] + torch.arange(te, device=seq.device)  # where ending tokens go
    seq.scatter_(1, end_pos, b.ending_ids.view(rows, te))
    total = ctx_len + end_len
    mask = (torch.arange(tc + te, device=seq.device)[None] < total[:, None]).long()
    seq = seq * mask
    hidden = backbone(input_ids=seq, attention_mask=mask, use_cache=False).last_hidden_state
    predictors = hidden.gather(1, (end_pos - 1)[..., None].expand(-1, -1, hidden.shape[-1]))
    targets, mask = b.ending_ids.view(rows, te), b.ending_mask.view(rows, te).float()
    scores = _ending_logprob_mean(lm_head, predictors, targets, mask)
    return scores.view(n, NUM_CHOICES)


def choice_scores(model: Any, family: str, batch: Batch, shared_context: bool = True,
                  packed: bool = False, row_tokens: int = 0) -> Tensor:
    """Scores (B, 4) of the choices; cross-entropy over them is the training loss.
    `shared_context` and `packed` choose the decoder's path (see the module's docstring);
    `row_tokens` > 0 packs several items per row, up to that many tokens."""
    if family == "encoder":
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None:
            kwargs["token_type_ids"] = batch.token_type_ids
        return _at_least_float32(model(**kwargs).logits)  # fp32 under bf16 autocast too
    if family == "decoder":
        if packed:
            return _decoder_scores_packed(model, batch, row_tokens)
        return (_decoder_scores_shared if shared_context else _decoder_scores_full)(model, batch)
    raise ValueError(f"family must be 'encoder' or 'decoder', got {family!r}")


def _at_least_float32(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def choice_loss(scores: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy over the 4 choice scores (computed in at least float32)."""
    return F.cross_entropy(_at_least_float32(scores), labels, reduction=reduction)
