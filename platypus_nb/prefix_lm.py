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
3. the contexts' remaining tokens are run on top of it, ``batch_size`` contexts per forward pass, once for all their
   continuations;
4. the continuations (minus their last token) are run on top of their contexts' caches, ``batch_size`` per pass.

On a CPU a forward pass of a small model costs about the same for 20 tokens as for 200 (reading the weights
dominates), so batching across questions matters as much as running fewer tokens.

The log-probabilities are those of the same token sequences through the same causal model, so they equal plain
``HFLM``'s up to float rounding (tested within 1e-4 on real SmolLM2 requests of every task). Anything this path does
not cover (an encoder-decoder model, a request longer than the model's window) goes to ``HFLM``'s own code.
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
        too_long = any(len(ctx) + len(cont) > self.max_length + 1 or not cont for _, ctx, cont in requests)
        if self.backend != "causal" or too_long:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (_, ctx, _) in enumerate(requests):
            by_context[tuple(ctx)].append(i)
        batch = int(override_bs or self.batch_size) if str(self.batch_size) != "auto" else 8
        results: list[Optional[tuple[float, bool]]] = [None] * len(requests)
        with torch.no_grad():
            for shared, contexts in prefix_groups(sorted(by_context)):
                prefix = self._prefix_cache(contexts[0][:shared]) if shared else []
                for start in range(0, len(contexts), batch):
                    chunk = contexts[start:start + batch]
                    rows = [(b, i) for b, ctx in enumerate(chunk) for i in by_context[ctx]]
                    answers = self._score_chunk(prefix, shared, chunk, [requests[i][2] for _, i in rows],
                                                [b for b, _ in rows], batch)
                    for (_, i), answer in zip(rows, answers):
                        results[i] = answer
                        if requests[i][0] is not None:
                            self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return results  # type: ignore[return-value]

    def _prefix_cache(self, tokens: tuple[int, ...]) -> KV:
        """The key/value cache of one shared prefix (its logits are not needed: one position kept)."""
        from transformers import DynamicCache

        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, cache=DynamicCache(), use_cache=True, logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in out.cache.layers]

    def _score_chunk(self, prefix: KV, shared: int, contexts: list[tuple[int, ...]], continuations: list[list[int]],
                     owners: list[int], batch: int) -> list[tuple[float, bool]]:
        """Contexts (after their shared prefix) as one right-padded batch, then their continuations in batches.

        Right padding needs no mask in the context pass (a causal model's real positions never attend to the pads
        after them); the continuation pass masks each row's context pads and gives the true positions.
        """
        from transformers import DynamicCache

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rests = [ctx[shared:] for ctx in contexts]
        width = max(len(r) for r in rests)
        ids = torch.tensor([list(r) + [pad] * (width - len(r)) for r in rests], dtype=torch.long, device=self.device)
        past = [(k.expand(len(rests), -1, -1, -1), v.expand(len(rests), -1, -1, -1)) for k, v in prefix]
        # Only each row's last context position predicts an answer token: keep those logits alone (the vocabulary
        # projection of every other position is most of a small model's cost).
        keep = sorted({len(r) - 1 for r in rests})
        out = self.model(input_ids=ids, cache=DynamicCache(ddp_cache_data=past) if past else DynamicCache(),
                         use_cache=True, logits_to_keep=torch.tensor(keep, device=self.device))
        last = torch.stack([out.logits[b, keep.index(len(r) - 1)] for b, r in enumerate(rests)])
        kv = [(layer.keys, layer.values) for layer in out.cache.layers]
        answers: list[tuple[float, bool]] = []
        for start in range(0, len(continuations), batch):
            conts, rows = continuations[start:start + batch], owners[start:start + batch]
            logits = last[rows][:, None, :]
            longest = max(len(c) for c in conts)
            if longest > 1:
                index = torch.tensor(rows, device=self.device)
                cont_ids = torch.tensor([c[:-1] + [pad] * (longest - len(c)) for c in conts], dtype=torch.long,
                                        device=self.device)
                mask = torch.zeros(len(conts), shared + width + longest - 1, dtype=torch.long, device=self.device)
                for j, b in enumerate(rows):
                    mask[j, : shared + len(rests[b])] = 1
                mask[:, shared + width:] = 1
                starts = torch.tensor([shared + len(rests[b]) for b in rows], device=self.device)
                positions = starts[:, None] + torch.arange(longest - 1, device=self.device)[None, :]
                cache = DynamicCache(ddp_cache_data=[(k.index_select(0, index), v.index_select(0, index))
                                                     for k, v in kv])
                more = self.model(input_ids=cont_ids, attention_mask=mask, position_ids=positions, cache=cache,
                                  use_cache=True).logits
                logits = torch.cat([logits, more], dim=1)
            logprobs = F.log_softmax(logits.to(self.softmax_dtype or logits.dtype), dim=-1)
            for j, cont in enumerate(conts):
                target = torch.tensor(cont, dtype=torch.long, device=self.device)
                rows_lp = logprobs[j, : len(cont)]
                answers.append((float(rows_lp.gather(-1, target[:, None]).sum()),
                                bool((rows_lp.argmax(dim=-1) == target).all())))
        return answers


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
