"""Dataset files for softthink train / eval (issue 18): every format, held-out split, bad rows named."""
import json

import pytest

from softthink.cli import main
from softthink.config import SoftGRPOConfig
from softthink.data import load_dataset_file, make_train_eval_datasets

ROWS = [{"prompt": f"Calculate {a} + {b}.", "answer": str(a + b), "level": a % 2} for a in range(4) for b in range(3)]


def _write(tmp_path, fmt, rows=ROWS):
    import pandas as pd

    p = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        p.write_text(json.dumps(rows))
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(p)
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(p, index=False)
    return p


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_every_file_format_loads_with_the_right_columns(tmp_path, fmt):
    ds = load_dataset_file(str(_write(tmp_path, fmt)), system_prompt="Be brief.", suffix=" Box it.")
    assert len(ds) == 12 and {"prompt", "question", "answer", "solution", "level"} <= set(ds.column_names)
    assert ds[4]["prompt"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Calculate 1 + 1. Box it."}]
    assert ds[4]["answer"] == ds[4]["solution"] == "2" and ds[4]["question"] == "Calculate 1 + 1."
    assert len(load_dataset_file(str(_write(tmp_path, fmt)), max_rows=5)) == 5


def test_chat_messages_folders_splits_and_slices(tmp_path):
    from datasets import Dataset, DatasetDict

    msgs = [{"prompt": [{"role": "user", "content": "2 + 2?"}], "answer": "4"},
            {"prompt": [{"role": "user", "content": "3 + 3?"}], "answer": "6"}]
    ds = load_dataset_file(str(_write(tmp_path, "jsonl", msgs)))
    assert ds[1]["prompt"] == [{"role": "user", "content": "3 + 3?"}] and ds[1]["question"] == "3 + 3?"
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:3])}).save_to_disk(tmp_path / "dd")
    assert len(load_dataset_file(str(tmp_path / "dd"), split="test")) == 3
    with pytest.raises(ValueError, match="no split 'dev'.*'test', 'train'"):
        load_dataset_file(str(tmp_path / "dd"), split="dev")
    assert len(load_dataset_file(str(_write(tmp_path, "jsonl")), split="train[:4]")) == 4


def test_bad_files_and_rows_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_dataset_file(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown dataset file type '.txt'"):
        load_dataset_file(str(tmp_path / "x.txt"))
    p = _write(tmp_path, "jsonl", [{"question": "1+1", "answer": "2"}])
    with pytest.raises(ValueError, match=r"no column 'prompt' \(prompt_column\); its columns: \['question', 'answer'\]"):
        load_dataset_file(str(p))
    assert load_dataset_file(str(p), prompt_column="question")[0]["answer"] == "2"
    bad = ROWS[:2] + [{"prompt": "  ", "answer": "1", "level": 0}]
    with pytest.raises(ValueError, match=r"data.jsonl row 2 \(0-based, header excluded\): empty or malformed prompt"):
        load_dataset_file(str(_write(tmp_path, "jsonl", bad)))
    bad = ROWS[:3] + [{"prompt": "Calculate 9 + 9.", "answer": "", "level": 1}]
    with pytest.raises(ValueError, match=r"data.jsonl row 3 \(0-based, header excluded\): empty answer in column 'answer'"):
        load_dataset_file(str(_write(tmp_path, "jsonl", bad)))


def test_empty_and_malformed_files_name_the_cause(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: empty file, no rows"):
        load_dataset_file(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl: not a readable json file \((?!DatasetGenerationError)"):
        load_dataset_file(str(tmp_path / "bad.jsonl"))


def test_held_out_rows_are_the_tail_and_never_trained_on(tmp_path):
    rows = ROWS + [dict(ROWS[0])]  # the last (held-out) prompt also occurs in training
    cfg = SoftGRPOConfig(dataset_path=str(_write(tmp_path, "jsonl", rows)), eval_dataset_size=3,
                         num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                         gradient_accumulation_steps=1)
    train, ev = make_train_eval_datasets(cfg)
    assert ev["question"] == [r["prompt"] for r in rows[-3:]]
    assert len(train) == len(rows) - 3 - 1 and not set(train["question"]) & set(ev["question"])
    other = _write(tmp_path, "csv", ROWS[:2])
    cfg = SoftGRPOConfig(dataset_path=cfg.dataset_path, eval_dataset_path=str(other), eval_dataset_size=5,
                         num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                         gradient_accumulation_steps=1)
    train, ev = make_train_eval_datasets(cfg)
    assert len(ev) == 2 and len(train) == len(rows) - 3  # ROWS[0], ROWS[1] and the copy of ROWS[0] held out
    with pytest.raises(ValueError, match="max_rows"):
        SoftGRPOConfig(max_rows=0, num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                         gradient_accumulation_steps=1)


def test_cli_train_and_eval_on_a_dataset_file(tmp_path):
    import yaml

    from softthink.testing import save_tiny_model

    save_tiny_model(tmp_path / "tiny")
    data = _write(tmp_path, "jsonl")
    cfg = dict(model_name_or_path=str(tmp_path / "tiny"), output_dir=str(tmp_path / "run"), max_steps=1,
               num_generations=2, generation_batch_size=4, per_device_train_batch_size=4, gradient_accumulation_steps=1,
               max_completion_length=6, max_think_tokens=2, eval_dataset_size=2, reward_funcs=["math_verify"],
               torch_num_threads=1, save_model=True)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--dataset", str(data)]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["dataset_path"] == str(data)
    assert main(["eval", "--model", str(tmp_path / "run"), "--mode", "discrete", "--num-samples", "2", "--k", "1,2",
                 "--dataset", str(data), "--split", "train[:5]", "--output", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["num_problems"] == 5
    assert main(["eval", "--model", str(tmp_path / "run"), "--split", "train"]) == 2  # --split needs --dataset


def test_cli_names_a_bad_dataset_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """A dataset file without the prompt column fails in `softthink train` and `softthink eval` before any model is
    loaded (the model path does not even exist here)."""
    import yaml

    import softthink.models

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the dataset was checked")

    monkeypatch.setattr(softthink.models, "load_policy", no_model)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1", "answer": "2"}\n' * 4)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(dict(model_name_or_path=str(tmp_path / "missing"),
                                                         output_dir=str(tmp_path / "run"))))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--dataset", str(bad)]) == 2
    assert "prompt" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "softthink_config.yaml").write_text((tmp_path / "c.yaml").read_text())
    assert main(["eval", "--model", str(tmp_path / "m"), "--dataset", str(bad)]) == 2
    assert "prompt" in capsys.readouterr().err
