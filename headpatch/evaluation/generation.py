"""Question prompts in the model's chat template and greedy short answers."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any

import torch

from headpatch.qrhead.prompt import uses_chat_template
from headpatch.runtime import input_device


def question_prompt(instruction: str, context: str, question: str) -> str:
    """The question before and after the context: small models answer far more often when it comes last as well."""
    return f"{instruction}\n\nQuestion: {question}\n\n{context}\n\nQuestion: {question}\nAnswer briefly."


def prompt_ids(tokenizer: Any, content: str) -> list[int]:
    """Token ids of `content` as a user turn with the generation prompt, or as plain text ending in 'Answer:'."""
    if uses_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template already holds BOS
    return list(tokenizer(f"{content}\nAnswer:", add_special_tokens=True)["input_ids"])


def answer_in(tokenizer: Any, continuation: str) -> str:
    """The answer a greedy continuation gives. A chat model ends its turn, so the whole turn; after a plain-text
    prompt ending in 'Answer:' a pretrained model goes on writing lines of its own (further 'Answer: …' lines, new
    questions), so its first non-empty line, where a few-shot harness would stop generating at the newline."""
    if uses_chat_template(tokenizer):
        return continuation
    return next((line.strip() for line in continuation.splitlines() if line.strip()), "")


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _until_stop(tokens: list[int], stop: list[int]) -> list[int]:
    ends = [i for i, token in enumerate(tokens) if token in stop]
    return tokens[: ends[0]] if ends else tokens


def length_batches(prompts: Sequence[list[int]], batch_tokens: int) -> Iterator[list[int]]:
    """Prompt indices, shortest first, in groups whose padded size (count × longest) stays within `batch_tokens`."""
    group: list[int] = []
    for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):
        if group and (len(group) + 1) * len(prompts[i]) > batch_tokens:
            yield group
            group = []
        group.append(i)
    if group:
        yield group


@torch.no_grad()
def greedy_answers(
    model: Any, tokenizer: Any, prompts: Sequence[list[int]], max_new_tokens: int, batch_tokens: int,
    answered: Collection[int] = frozenset(),
) -> Iterator[dict[int, str]]:
    """Each batch's answers by prompt index as the batch finishes: greedy, at most `max_new_tokens` tokens.

    Prompts of similar length share a left-padded batch of at most `batch_tokens` tokens (a longer prompt goes alone):
    a decoding step reads every weight once whatever the batch size, so batching divides the decoding time, while the
    budget bounds the padded attention masks of long prompts. Batches depend only on the prompts, so results are
    deterministic; a batch whose every prompt is in `answered` (answers kept from an earlier run) is not run, and the
    others are the same batches as in a run that answers everything.
    """
    stop = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)
    device = input_device(model)
    for chosen in length_batches(prompts, batch_tokens):
        if all(i in answered for i in chosen):
            continue
        width = max(len(prompts[i]) for i in chosen)
        ids = torch.full((len(chosen), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chosen):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        output = model.generate(
            ids.to(device), attention_mask=mask.to(device), do_sample=False, max_new_tokens=max_new_tokens,
            eos_token_id=stop or None, pad_token_id=pad,
        )
        yield {i: tokenizer.decode(_until_stop(output[row, width:].tolist(), stop), skip_special_tokens=True).strip()
               for row, i in enumerate(chosen)}
