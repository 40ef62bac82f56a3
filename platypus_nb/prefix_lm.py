"""Step 05's scorer: lm-eval's ``HFLM`` computing each shared prefix once and reusing its key/value cache.

The leaderboard's requests repeat long prefixes: every TruthfulQA question follows the same six-question primer,
every question of an MMLU subject follows the same five examples, and the choices of one question share its whole
context (4 for ARC, HellaSwag and MMLU, up to a dozen for TruthfulQA MC2). Plain ``HFLM`` runs the full
context + continuation for every request. :class:`PrefixCachingHFLM` changes only how the log-likelihoods of a
batch of requests are computed (``_loglikelihood_tokens``), so tasks, prompts, tokenisation, metrics and
aggregation stay lm-eval's:

1. requests are grouped by their context tokens; contexts are sorted, so contexts sharing a prefix are adjacent, and
   split into runs sharing at least :data:`MIN_SHARED_PREFIX` tokens (:func:`prefix_groups`);
2. each run's shared prefix is run once;
3. on top of its cache, ``batch_size`` contexts go through the model in one pass, each as one row holding the
   context's remaining tokens followed by all its continuations (each but its last token), with a 4-D attention mask
   that keeps the continuations from seeing one another (:meth:`PrefixCachingHFLM._score_rows`). The rows of a run
   are sorted by length first, so little of a pass is padding;
4. logits are computed only where a continuation token is predicted, not over the contexts.

On a CPU the number of forward passes matters as much as the number of tokens (each pass reads every weight and
runs some hundred small operations per layer), hence one pass per batch of contexts with all their answers, and a
shared prefix is cached only when it spares enough tokens to pay for its own pass (:data:`MIN_TOKENS_SPARED`).

The log-probabilities are those of the same token sequences through the same causal model, so they equal plain
``HFLM``'s up to float rounding (tested within 1e-4 on real SmolLM2 requests of every task). Anything this path does
not cover (an encoder-decoder model, a request longer than the model's window or its sliding attention window, an
attention implementation that takes no 4-D mask) goes to ``HFLM``'s own code.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM

# Shorter shared prefixes (an MMLU description's first words) are not worth a separate forward pass.
MIN_SHARED_PREFIX = 16
# A cached prefix costs a forward pass of its own; it pays when it spares more tokens than that. Measured on 2 CPU
# cores (benchmarks/README.md): an MMLU subject's 1-shot prefix (~80 tokens) shared by 4 questions (240 tokens
# spared) was slower than batching the 4 contexts whole; TruthfulQA's primer (~170 tokens) pays from 3 questions.
# (Measured with this scorer's earlier version, which ran the answers in passes of their own; not re-measured.)
MIN_TOKENS_SPARED = 256

KV = list[tuple[torch.Tensor, torch.Tensor]]


def common_prefix_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCachingHFLM(HFLM):
    """``HFLM`` whose log-likelihood requests reuse the key/value cache of shared prefixes (module docstring)."""

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                              override_bs: Optional[int] = None) -> list[tuple[float, bool]]:
        if not self._packable(requests):
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (_, ctx, _) in enumerate(requests):
            by_context[tuple(ctx)].append(i)
        batch = int(override_bs or self.batch_size) if str(self.batch_size) != "auto" else 8
        results: list[Optional[tuple[float, bool]]] = [None] * len(requests)
        with torch.inference_mode():
            for shared, contexts in prefix_groups(sorted(by_context)):
                prefix = self._prefix_cache(contexts[0][:shared]) if shared else []
                # Rows of like length share a pass: less padding (the prefix is common to the whole group anyway).
                contexts.sort(key=lambda c: (row_length(c, shared, [requests[i][2] for i in by_context[c]]), c))
                for start in range(0, len(contexts), batch):
                    chunk = contexts[start:start + batch]
                    owners = [by_context[ctx] for ctx in chunk]
                    answers = self._score_rows(prefix, shared, chunk, [[requests[i][2] for i in o] for o in owners])
                    for i, answer in zip((i for o in owners for i in o), answers):
                        results[i] = answer
                        if requests[i][0] is not None:
                            self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return results  # type: ignore[return-value]

    def _packable(self, requests: list[tuple[Any, list[int], list[int]]]) -> bool:
        """Whether :meth:`_score_rows` gives ``HFLM``'s numbers: a decoder-only model whose attention takes a
        custom 4-D mask (sdpa, eager), no request truncated by ``HFLM`` (longer than the model's window) and none
        longer than a sliding attention window (the packed mask would replace it)."""
        config = self.model.config
        longest = max((len(ctx) + len(cont) for _, ctx, cont in requests), default=0)
        window = getattr(config, "sliding_window", None)
        return (self.backend == "causal" and bool(requests) and all(cont for _, _, cont in requests)
                and longest <= self.max_length + 1 and (window is None or longest <= window)
                and getattr(config, "_attn_implementation", "eager") in ("sdpa", "eager"))

    def _prefix_cache(self, tokens: tuple[int, ...]) -> KV:
        """The key/value cache of one shared prefix (its logits are not needed: one position kept)."""
        from transformers import DynamicCache

        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, cache=DynamicCache(), use_cache=True, logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in out.cache.layers]

    def _score_rows(self, prefix: KV, shared: int, contexts: list[tuple[int, ...]],
                    continuations: list[list[list[int]]]) -> list[tuple[float, bool]]:
        """One forward pass over the prefix's cache for several contexts and all their continuations.

        Row ``b`` holds context ``b``'s tokens after the shared prefix, then each of its continuations but the last
        token, one after the other, left-padded to the chunk's longest row. A 4-D mask lets every token see the
        prefix, its own context up to itself and, within a continuation, that continuation's earlier tokens; the
        position ids are those each token has in its own request. So every token sees exactly what it sees in
        ``HFLM``'s pass over context + continuation, and the context is run once for all its continuations.
        Logits are computed for the rows' last positions only (the context's last token and the continuations),
        which left padding puts in the same columns.
        """
        from transformers import DynamicCache

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows, segments, positions = [], [], []
        for ctx, conts in zip(contexts, continuations):
            tokens, segment, position = list(ctx[shared:]), [0] * (len(ctx) - shared), list(range(shared, len(ctx)))
            for j, cont in enumerate(conts, start=1):
                tokens += cont[:-1]
                segment += [j] * (len(cont) - 1)
                position += range(len(ctx), len(ctx) + len(cont) - 1)
            rows.append(tokens)
            segments.append(segment)
            positions.append(position)
        width = max(len(r) for r in rows)
        lefts = [width - len(r) for r in rows]
        dev = self.device
        ids = torch.tensor([[pad] * n + r for n, r in zip(lefts, rows)], dtype=torch.long, device=dev)
        pos = torch.tensor([[0] * n + p for n, p in zip(lefts, positions)], dtype=torch.long, device=dev)
        # Padding is segment -1: a pad sees only the pads before it (no row is fully masked), and no real token
        # sees a pad.
        seg = torch.tensor([[-1] * n + s for n, s in zip(lefts, segments)], dtype=torch.long, device=dev)
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        allowed = causal & ((seg[:, None, :] == seg[:, :, None]) | (seg[:, None, :] == 0))
        allowed = torch.cat([allowed.new_ones(len(rows), width, shared), allowed], dim=2)
        if self.model.config._attn_implementation == "sdpa":
            mask = allowed  # sdpa takes a boolean mask (True: attend), as transformers' own masks are
        else:  # eager attention adds its mask to the scores
            mask = torch.zeros(allowed.shape, device=dev).masked_fill_(~allowed, torch.finfo(torch.float32).min)
        # Positions whose logits are needed: each row's last context token and its continuation tokens.
        needed = [1 + sum(len(c) - 1 for c in conts) for conts in continuations]
        keep = max(needed)
        past = [(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1)) for k, v in prefix]
        logits = self.model(input_ids=ids, attention_mask=mask[:, None], position_ids=pos,
                            cache=DynamicCache(ddp_cache_data=past) if past else DynamicCache(), use_cache=True,
                            logits_to_keep=keep).logits
        # Unique (row, column) of the needed logits, then for every continuation token the one that predicts it.
        row_of, col_of = [], []
        for b, n in enumerate(needed):
            row_of += [b] * n
            col_of += range(keep - n, keep)
        logprobs = F.log_softmax(logits[row_of, col_of].to(self.softmax_dtype or logits.dtype), dim=-1)
        greedy = logprobs.argmax(dim=-1)
        which, targets, lengths = [], [], []
        base = 0
        for n, conts in zip(needed, continuations):
            first = base  # the context's last token predicts every continuation's first token
            offset = base + 1
            for cont in conts:
                which += [first, *range(offset, offset + len(cont) - 1)]
                targets += cont
                lengths.append(len(cont))
                offset += len(cont) - 1
            base += n
        which_t = torch.tensor(which, dtype=torch.long, device=dev)
        target_t = torch.tensor(targets, dtype=torch.long, device=dev)
        token_lp = logprobs[which_t, target_t].split(lengths)
        token_hit = (greedy[which_t] == target_t).split(lengths)
        return [(float(lp.sum()), bool(hit.all())) for lp, hit in zip(token_lp, token_hit)]


def row_length(context: tuple[int, ...], shared: int, continuations: list[list[int]]) -> int:
    """Tokens of a context's packed row (:meth:`PrefixCachingHFLM._score_rows`): after the prefix, plus each
    continuation but its last token."""
    return len(context) - shared + sum(len(c) - 1 for c in continuations)


def prefix_groups(contexts: list[tuple[int, ...]]) -> list[tuple[int, list[tuple[int, ...]]]]:
    """Sorted contexts split into runs sharing a prefix of at least :data:`MIN_SHARED_PREFIX` tokens that spares
    at least :data:`MIN_TOKENS_SPARED` tokens.

    Returns (shared length, contexts) per run; contexts sharing nothing worth caching form one run with length 0
    (they are still batched together). A shared prefix always leaves each context at least its last token.
    """
    groups: list[tuple[int, list[tuple[int, ...]]]] = []
    alone: list[tuple[int, ...]] = []
    run: list[tuple[int, ...]] = []
    shared = 0
    for ctx in contexts + [()]:
        if run:
            common = min(shared, common_prefix_length(run[0], ctx), len(ctx) - 1) if len(run) > 1 else \
                min(common_prefix_length(run[0], ctx), len(run[0]) - 1, len(ctx) - 1)
            if common >= MIN_SHARED_PREFIX and ctx:
                run.append(ctx)
                shared = common
                continue
            if len(run) > 1 and shared * (len(run) - 1) >= MIN_TOKENS_SPARED:
                groups.append((shared, run))
            else:
                alone.extend(run)
        run, shared = [ctx], 0
    if alone:
        groups.append((0, alone))
    return groups
