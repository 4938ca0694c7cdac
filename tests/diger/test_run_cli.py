"""`diger run` / `diger evaluate` end to end on the synthetic dataset, checkpoints and bad input (issue #2)."""
import json

import pytest
import torch
import yaml

from diger.testing import small_config

METRIC_KEYS = {"recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr@10", "hit@10"}


def _overrides(root, **extra):
    cfg = small_config(root, **extra)
    return [f"--{k}={json.dumps(v)}" for k, v in cfg.items()]


@pytest.mark.parametrize("model", ["DIGER", "SASRec"])
def test_run_writes_result_and_evaluate_reproduces_it(toy_root, model, capsys):
    from diger.cli import main

    out = toy_root / f"run-{model}"
    extra = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "loss_type": "CE", "train_neg_sample_args": None} if model == "SASRec" else {}
    assert main(["run", "--model", model, "--dataset", "toy", *_overrides(toy_root, output_dir=str(out),
                                                                                 checkpoint_dir=str(out), **extra)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert METRIC_KEYS <= set(result["test_result"]) and METRIC_KEYS <= set(result["best_valid_result"])
    assert result["wall_clock_seconds"] > 0 and result["config"]["model"] == model
    # Recall@K = Hit@K with one target per user; metrics are probabilities
    assert result["test_result"]["recall@10"] == pytest.approx(result["test_result"]["hit@10"])
    if model == "DIGER":
        levels = result["codebook"]["final"]["levels"]
        assert len(levels) == 2 and all(lv["used"] >= 1 for lv in levels)
        # Sinkhorn-balanced table: the argmin-distance usage is reported beside it, within [1, K] per level
        near = result["codebook"]["final"]["nearest_used"]
        assert len(near) == 2 and all(1 <= n <= len(lv["counts"]) for n, lv in zip(near, levels))
        assert all("nearest_used" in h for h in result["codebook"]["history"])
        assert [h["epoch"] for h in result["codebook"]["history"]] == [-1, 0]
        assert main(["plot", str(out)]) == 0
        for png in ("codebook_usage.png", "code_histogram.png"):
            data = (out / png).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    ckpt = torch.load(result["checkpoint"], weights_only=True)  # plain data only
    assert "state_dict" in ckpt and isinstance(ckpt["config"], dict)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", result["checkpoint"], "--output", str(out / "eval.json")]) == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["test_result"] == result["test_result"]


def test_truncated_checkpoint_is_a_clear_error(toy_root):
    from diger.trainer import CheckpointError, atomic_torch_save, load_checkpoint

    path = toy_root / "c.pth"
    atomic_torch_save({"state_dict": {"w": torch.ones(1000)}}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="c.pth"):
        load_checkpoint(str(path))
    assert not list(toy_root.glob(".tmp-*"))


def test_unknown_model_is_a_clear_error(toy_root, capsys):
    from diger.cli import main

    assert main(["run", "--model", "NoSuchModel", "--dataset", "toy", f"--data_path={toy_root}"]) == 2
    assert "unknown model 'NoSuchModel'" in capsys.readouterr().err


def test_a_file_named_log_in_the_working_directory_is_a_clear_error(toy_root, capsys):
    from diger.cli import main

    (toy_root / "log").write_text("my notes")
    assert main(["run", "--model", "Pop", "--dataset", "toy", f"--data_path={toy_root}"]) == 2
    err = capsys.readouterr().err
    assert f"{toy_root / 'log'} is a file" in err and "./log/" in err
    assert (toy_root / "log").read_text() == "my notes"


def test_missing_dataset_is_a_clear_error(toy_root, capsys):
    from diger.cli import main

    assert main(["run", "--model", "TIGER", "--dataset", "nope", f"--data_path={toy_root}"]) == 2
    err = capsys.readouterr().err
    assert "dataset 'nope' not found" in err and "nope.inter" in err


def test_missing_text_field_is_a_clear_error(toy_root, capsys):
    from diger.cli import main

    args = _overrides(toy_root, item_emb_file=None, text_fields=["title", "director"])
    assert main(["run", "--model", "TIGER", "--dataset", "toy", *args]) == 2
    err = capsys.readouterr().err
    assert "'director'" in err and "toy.item" in err


def test_items_without_text_are_named_unless_filled(toy_root):
    from diger.testing import write_dataset

    from diger.text import ItemTextError, build_item_texts, read_item_table

    write_dataset(toy_root, "holes", with_text=False)
    table = read_item_table(toy_root / "holes" / "holes.item", "item_id", ["title", "genre"])
    tokens = ["[PAD]"] + [f"i{i}" for i in range(24)]
    with pytest.raises(ItemTextError, match=r"5 item\(s\) have no text .*: i0, i5, i10, i15, i20"):
        build_item_texts(tokens, table, ["title", "genre"])
    texts = build_item_texts(tokens, table, ["title", "genre"], fill="unknown item")
    assert texts[1] == "unknown item" and texts[2] == "title: Movie number 1; genre: Drama"


def test_real_text_embeddings_are_cached(toy_root):
    from diger.text import embed_texts

    texts = ["", "title: Toy Story; genre: Animation", "title: Heat; genre: Action"]
    a = embed_texts(texts, cache_dir=toy_root / "emb", show_progress=False)
    assert a.shape == (3, 384) and (a[0] == 0).all()
    assert abs(float((a[1] ** 2).sum()) - 1.0) < 1e-3  # MiniLM normalises
    files = list((toy_root / "emb").glob("*.npy"))
    assert len(files) == 1
    b = embed_texts(texts, cache_dir=toy_root / "emb", model="all-MiniLM-L6-v2")
    assert (a == b).all()


def test_bad_config_file_and_override_are_clear_errors(toy_root):
    from diger.config import ConfigError, check_config_files, parse_overrides

    bad = toy_root / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml must hold a mapping"):
        check_config_files([str(bad)])
    with pytest.raises(ConfigError, match="not found: .*missing.yaml"):
        check_config_files([str(toy_root / "missing.yaml")])
    assert parse_overrides(["--epochs=3", "--topk=[5, 10]", "--x=__import__('os')"]) == {
        "epochs": 3, "topk": [5, 10], "x": "__import__('os')"}
    with pytest.raises(ConfigError, match="--key=value"):
        parse_overrides(["epochs"])
    # YAML 1.1 reads 1e-3 as text; RecBole's file loader reads a float, and so do overrides
    assert parse_overrides(["--lr_id=1e-3", "--x=2E5", "--name=e5"]) == {"lr_id": 0.001, "x": 200000.0, "name": "e5"}


def test_text_for_a_numeric_key_names_the_key(toy_root):
    from diger.config import ConfigError
    from diger.quick_start import make_config

    with pytest.raises(ConfigError, match=r"'epochs' expects an integer \(default \d+\), got 'abc'"):
        make_config("DIGER", "toy", config_dict=small_config(toy_root, epochs="abc"))
    with pytest.raises(ConfigError, match=r"'gumbel_tau' expects a number"):
        make_config("DIGER", "toy", config_dict=small_config(toy_root, gumbel_tau="warm"))
    with pytest.warns(UserWarning, match="epochs=0: nothing is trained"):
        make_config("DIGER", "toy", config_dict=small_config(toy_root, epochs=0))
    for bad, kind in [(1.5, "an integer"), ([1], "an integer"), ("abc", "an integer")]:
        with pytest.raises(ConfigError, match=f"'epochs' expects {kind}"):
            make_config("SASRec", "toy", config_dict=small_config(toy_root, epochs=bad))
    with pytest.raises(ConfigError, match="'show_progress' expects true or false"):
        make_config("DIGER", "toy", config_dict=small_config(toy_root, show_progress="maybe"))
    assert make_config("DIGER", "toy", config_dict=small_config(toy_root, gumbel_tau=2))["gumbel_tau"] == 2


def test_flow_mapping_without_spaces_is_an_error(toy_root):
    """YAML reads {distribution:uniform} as the single key 'distribution:uniform': refuse it by name."""
    from diger.config import ConfigError, parse_overrides
    from diger.quick_start import make_config

    cfg = {**small_config(toy_root), **parse_overrides(["--train_neg_sample_args={distribution:uniform,sample_num:3}"])}
    with pytest.raises(ConfigError, match="train_neg_sample_args: 'distribution:uniform'.*space after each ':'"):
        make_config("SASRecBCE", "toy", config_dict=cfg)


def test_sasrecbce_config_is_checked_before_data_loads(toy_root, monkeypatch):
    import diger.quick_start as qs

    monkeypatch.setattr(qs, "_check_data", lambda config: pytest.fail("data checked before the model's config"))
    with pytest.raises(ValueError, match="loss_type must be 'BCE'"):
        qs.make_config("SASRecBCE", "toy", config_dict=small_config(toy_root, loss_type="CE", train_neg_sample_args=None))


def test_ctrl_c_prints_the_resume_command(toy_root, monkeypatch, capsys):
    import diger.quick_start as qs
    from diger.cli import main

    out = toy_root / "run"
    from diger.trainer import SafeCheckpointTrainer

    real_save = SafeCheckpointTrainer._save_last

    def save_then_interrupt(self, epoch, train_data):
        real_save(self, epoch, train_data)
        raise KeyboardInterrupt  # as if Ctrl-C arrived right after the first evaluated epoch

    monkeypatch.setattr(SafeCheckpointTrainer, "_save_last", save_then_interrupt)
    args = [f"--{k}={json.dumps(v)}" for k, v in small_config(
        toy_root, output_dir=str(out), checkpoint_dir=str(out), epochs=2, hidden_size=16, inner_size=32,
        n_layers=1, n_heads=1, loss_type="CE", train_neg_sample_args=None).items()]
    assert main(["run", "--model", "SASRec", "--dataset", "toy", *args]) == 130
    err = capsys.readouterr().err
    assert f"diger run --resume {out.resolve()}" in err and "Traceback" not in err


def test_resume_with_other_options_is_refused(toy_root, capsys):
    from diger.cli import main

    assert main(["run", "--resume", str(toy_root), "--model", "TIGER"]) == 2
    assert "drop the other options" in capsys.readouterr().err


def test_torch_num_threads_key_sets_threads_for_the_run_only(toy_root, monkeypatch):
    """`torch_num_threads: 1` runs the whole job on one intra-op thread and gives the caller's count back;
    a bad value is refused before any data is read."""
    from diger import quick_start
    from diger.config import ConfigError

    for bad in (0, -2, 1.5, "two", True):
        with pytest.raises(ConfigError, match=f"'torch_num_threads' expects a positive integer.*got {bad!r}"):
            quick_start.make_config("SASRec", "toy", config_dict=small_config(toy_root, torch_num_threads=bad))
    seen = []
    monkeypatch.setattr(quick_start, "_execute_run", lambda *a, **k: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cfg = quick_start.make_config("SASRec", "toy", config_dict=small_config(toy_root, torch_num_threads=1))
        quick_start._execute(cfg, quick_start.resolve_model("SASRec"), toy_root, False, 0.0)
        assert seen == [1] and torch.get_num_threads() == 2
        cfg = quick_start.make_config("SASRec", "toy", config_dict=small_config(toy_root))
        quick_start._execute(cfg, quick_start.resolve_model("SASRec"), toy_root, False, 0.0)
        assert seen == [1, 2]  # unset: torch's count is left alone
    finally:
        torch.set_num_threads(before)


def test_default_run_folders_are_unique_within_a_second(toy_root, monkeypatch):
    """Two runs named in the same second get two folders (the second gets -2); a failed reservation is removed."""
    from diger import quick_start

    class Frozen:
        @staticmethod
        def now():
            import datetime as dt

            return dt.datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(quick_start, "datetime", Frozen)
    cfg = quick_start.make_config("Pop", "toy", config_dict=small_config(toy_root))
    a, b = quick_start._output_dir(cfg), quick_start._output_dir(cfg)
    assert a.name == "Pop-toy-20260102-030405" and b.name == "Pop-toy-20260102-030405-2" and a.is_dir() and b.is_dir()
    monkeypatch.setattr(quick_start, "_run_in", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        quick_start.run("Pop", "toy", None, small_config(toy_root))
    assert not (toy_root / "runs" / "Pop-toy-20260102-030405-3").exists()


def test_keys_lists_the_model_chain_with_defaults(capsys):
    from diger.cli import main

    assert main(["keys", "--model", "DIGER"]) == 0
    out = capsys.readouterr().out
    assert "diger/properties/model/TIGER.yaml" in out and "diger/properties/model/DIGER.yaml" in out
    assert out.index("TIGER.yaml") < out.index("DIGER.yaml")  # later files override earlier ones
    for key in ("sid_seed:", "backbone:", "decoder_train:", "decoder_layers:", "dropout_impl:", "target_use:",
                "lr_id_scale:"):
        assert key in out
    assert main(["keys", "--model", "NoSuchModel"]) == 2
