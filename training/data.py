"""Supervised fine-tuning data: JSONL rows -> token ids with labels only on what the model should learn.

Two row shapes, one per line:
  {"prompt": "...", "completion": "..."}               loss on the completion (+ EOS)
  {"messages": [{"role": "user", "content": "..."}, ...]}  loss on every assistant turn, rendered by the
                                                        tokenizer's chat template (turn-end tokens included)
Labels are -100 (ignored by the loss) everywhere else, and on padding.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # same length; IGNORE_INDEX where no loss is taken


def load_examples(path: str | os.PathLike, tokenizer, max_length: int) -> tuple[list[Example], int]:
    """Tokenize every row of a JSONL file; returns (examples, rows skipped because truncation left no label).

    Raises ValueError naming the line for a malformed row.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to end completions with")
    examples, skipped = [], 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)} line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e})") from None
            ex = tokenize_row(row, tokenizer, max_length, where=where)
            if all(label == IGNORE_INDEX for label in ex.labels):
                skipped += 1
            else:
                examples.append(ex)
    if not examples:
        raise ValueError(f"{os.fspath(path)}: no usable rows (empty file, or every completion truncated away)")
    return examples, skipped


def tokenize_row(row: object, tokenizer, max_length: int, *, where: str = "row") -> Example:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row and ("prompt" in row or "completion" in row):
        raise ValueError(f"{where}: give either 'messages' or 'prompt'/'completion', not both")
    if "messages" in row:
        ids, labels = _chat(row["messages"], tokenizer, where)
    elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        ids, labels = _prompt_completion(row["prompt"], row["completion"], tokenizer)
    else:
        raise ValueError(f"{where}: expected string fields 'prompt' and 'completion', or a 'messages' list")
    return Example(input_ids=ids[:max_length], labels=labels[:max_length])


def _prompt_completion(prompt: str, completion: str, tokenizer) -> tuple[list[int], list[int]]:
    # Tokenized separately so the boundary is exact; the prompt gets the tokenizer's BOS if it adds one.
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


def _chat(messages: object, tokenizer, where: str) -> tuple[list[int], list[int]]:
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in messages)):
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role': str, 'content': str}}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: 'messages' has no assistant turn to learn from")

    def render(msgs: list, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    # Character spans of the assistant turns: the text a turn adds after its generation prompt.
    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = render(messages[:i], True), render(messages[:i + 1], False)
        if not (full.startswith(before) and full.startswith(through) and len(before) <= len(through)):
            raise ValueError(f"{where}: the chat template does not render conversation prefixes as prefixes "
                             "of the whole conversation, so assistant turns cannot be located")
        spans.append((len(before), len(through)))

    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    # A token is learned when it starts inside an assistant span.
    labels = [tok if any(s <= start < e for s, e in spans) else IGNORE_INDEX
              for tok, (start, _) in zip(ids, enc["offset_mapping"])]
    return ids, labels


def collate(examples: list[Example], pad_id: int, pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row (rounded up to a multiple, which keeps shapes few for compiled code).

    Returns input_ids, attention_mask, labels: [batch, T] int64.
    """
    longest = max(len(e.input_ids) for e in examples)
    t = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), t), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), t), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token, or EOS when it has none (padding is masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a pure function of (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one would."""
    digest = hashlib.sha256(f"lorifold.epoch_order|{seed}|{epoch}".encode()).digest()
    g = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.randperm(n_examples, generator=g).tolist()
