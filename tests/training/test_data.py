import json

import pytest

from tests import factories
from training.data import IGNORE_INDEX, collate, epoch_order, load_examples, tokenize_row


@pytest.fixture(scope="module")
def tok():
    return factories.make_tokenizer()


def _learned_text(tok, example):
    return tok.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


def test_prompt_completion_labels_only_the_completion_and_eos(tok):
    ex = tokenize_row({"prompt": "3+4=", "completion": "7"}, tok, max_length=64)
    prompt_len = len(tok("3+4=")["input_ids"])
    assert ex.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert ex.labels[prompt_len:] == ex.input_ids[prompt_len:]
    assert ex.input_ids[-1] == tok.eos_token_id
    assert _learned_text(tok, ex) == "7<|end|>"


def test_messages_label_every_assistant_turn_and_nothing_else(tok):
    row = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4"}]}
    ex = tokenize_row(row, tok, max_length=256)
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(row["messages"], tokenize=False)
    assert _learned_text(tok, ex) == "hello<|end|>4<|end|>"


def test_truncation_and_collate_padding(tok):
    ex = tokenize_row({"prompt": "1+1=", "completion": "2 is the answer"}, tok, max_length=6)
    assert len(ex.input_ids) == len(ex.labels) == 6
    short = tokenize_row({"prompt": "1+1=", "completion": "2"}, tok, max_length=6)
    batch = collate([ex, short], pad_id=tok.pad_token_id, pad_to_multiple_of=4)
    assert batch["input_ids"].shape == (2, 8)
    n = len(short.input_ids)
    assert batch["attention_mask"][1].tolist() == [1] * n + [0] * (8 - n)
    assert (batch["labels"][1, n:] == IGNORE_INDEX).all() and (batch["input_ids"][1, n:] == tok.pad_token_id).all()
    assert batch["labels"][0, :6].tolist() == ex.labels


@pytest.mark.parametrize("line,message", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"prompt": "a"}', "'prompt' and 'completion'"),
    ('{"prompt": 1, "completion": "b"}', "'prompt' and 'completion'"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "user"}]}', "non-empty list"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
    ('{"messages": [], "prompt": "a", "completion": "b"}', "not both"),
])
def test_malformed_rows_name_the_line(tmp_path, tok, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"line 3: .*{message}"):
        load_examples(path, tok, max_length=32)


def test_rows_with_nothing_left_to_learn_are_skipped(tmp_path, tok):
    path = factories.write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x" * 40, "completion": "y"},
                                                        {"prompt": "a", "completion": "b"}])
    examples, skipped = load_examples(path, tok, max_length=16)
    assert len(examples) == 1 and skipped == 1


def test_epoch_order_is_a_seeded_permutation():
    assert sorted(epoch_order(10, 0, 0)) == list(range(10))
    assert epoch_order(10, 0, 0) == epoch_order(10, 0, 0)
    assert epoch_order(10, 0, 0) != epoch_order(10, 0, 1)
