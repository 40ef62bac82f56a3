"""Step 05's scorer: lm-eval's ``HFLM`` computing each shared prefix once and reusing its key/value cache.

The leaderboard's requests repeat long prefixes: every TruthfulQA question follows the same six-question primer,
every question of an MMLU subject follows the same five examples, and the choices of one question share its whole
context (4 for ARC, HellaSwag and MMLU, up to a dozen for TruthfulQA MC2). Plain ``HFLM`` runs the full
context + continuation for every request. :class:`PrefixCachingHFLM` changes only how the log-likelihoods of a
batch of requests are computed (``_loglikelihood_tokens``), so tasks, prompts, tokenisation, metrics and
aggregation stay lm-eval's:

1. requests are grouped by their context tokens; contexts are sorted, so contexts sharing a prefix are adjacent;
2. a prefix shared with the next context (at least :data:`MIN_SHARED_PREFIX` tokens) is run once and its cache kept
   while following contexts share it;
3. each context's remaining tokens are run on top of that cache, once for all its continuations;
4. the continuations (minus their last token) are run together on top of the context's cache.

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
        contexts = sorted(by_context)
        results: list[Optional[tuple[float, bool]]] = [None] * len(requests)
        anchor: tuple[tuple[int, ...], KV] = ((), [])
        with torch.no_grad():
            for j, ctx in enumerate(contexts):
                # The last context token is always run with the rest: its logits predict the first answer token.
                shared = min(common_prefix_length(anchor[0], ctx), len(ctx) - 1)
                ahead = min(common_prefix_length(ctx, contexts[j + 1]), len(ctx) - 1) if j + 1 < len(contexts) else 0
                if ahead > shared and ahead >= MIN_SHARED_PREFIX:
                    anchor = (ctx[:ahead], self._extend(_crop(anchor[1], shared), ctx[shared:ahead])[0])
                    shared = ahead
                elif shared < MIN_SHARED_PREFIX:
                    shared = 0
                kv, last_logits = self._extend(_crop(anchor[1], shared), ctx[shared:])
                indices = by_context[ctx]
                for i, answer in zip(indices, self._continuations(kv, last_logits,
                                                                  [requests[i][2] for i in indices])):
                    results[i] = answer
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return results  # type: ignore[return-value]

    def _extend(self, past: KV, tokens: tuple[int, ...]) -> tuple[KV, torch.Tensor]:
        """Run ``tokens`` after the cached ``past``; returns the longer cache and the last position's logits."""
        from transformers import DynamicCache

        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        cache = DynamicCache(ddp_cache_data=past) if past else DynamicCache()
        # Only the last position's logits are needed: skipping the vocabulary projection of the others is most of
        # the saving on a small model with a 49k vocabulary.
        out = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in out.cache.layers], out.logits[0, -1]

    def _continuations(self, kv: KV, last_logits: torch.Tensor,
                       continuations: list[list[int]]) -> list[tuple[float, bool]]:
        """Log-likelihood and greediness of every continuation of one context, run as one batch on its cache."""
        from transformers import DynamicCache

        longest = max(len(c) for c in continuations)
        logits = last_logits.expand(len(continuations), 1, -1)
        if longest > 1:
            # Right padding needs no mask: a causal model's real positions never attend to the pads after them.
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            ids = torch.tensor([c[:-1] + [pad] * (longest - len(c)) for c in continuations], dtype=torch.long,
                               device=self.device)
            batch = [(k.expand(len(continuations), -1, -1, -1), v.expand(len(continuations), -1, -1, -1))
                     for k, v in kv]
            out = self.model(input_ids=ids, cache=DynamicCache(ddp_cache_data=batch), use_cache=True)
            logits = torch.cat([logits, out.logits], dim=1)
        logprobs = F.log_softmax(logits.to(self.softmax_dtype or logits.dtype), dim=-1)
        answers = []
        for b, cont in enumerate(continuations):
            target = torch.tensor(cont, dtype=torch.long, device=self.device)
            rows = logprobs[b, : len(cont)]
            answers.append((float(rows.gather(-1, target[:, None]).sum()),
                            bool((rows.argmax(dim=-1) == target).all())))
        return answers


def _crop(kv: KV, length: int) -> KV:
    return [(k[:, :, :length], v[:, :, :length]) for k, v in kv] if length else []
