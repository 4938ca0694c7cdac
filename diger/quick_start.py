"""``run()`` and ``evaluate_checkpoint()``: RecBole's lower-level pipeline for our models and RecBole's own
(RecBole 1.2.1 ``recbole/quick_start/quick_start.py``): Config -> seed/logger -> dataset -> dataloaders -> model -> trainer.fit -> evaluate.

Multi-process training follows RecBole's ``recbole.quick_start.run``: the config keys ``nproc``
(processes on this machine), ``world_size`` (all processes; default ``nproc``), ``ip``, ``port`` and
``offset`` (global rank of this machine's first process) make :func:`run` start ``nproc`` workers
with ``torch.multiprocessing.spawn``; each gets ``local_rank`` and joins the process group (gloo on
CPU, NCCL on CUDA, :mod:`diger.compat`). Rank 0 writes the logs, ``run.json``, checkpoints and
``result.json``, and its result is returned.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Union

from . import compat
from . import distributed as ddist
from .data.atomic import check_header_line
from .config import ConfigError, DigerConfig, check_mappings, check_value_types, warn_unknown_keys
from .models import BASELINES, MODELS
from .tokenizer import torch_threads
from .infra import atomic_write_json
from .trainer import CheckpointError, GenRecTrainer, SafeCheckpointTrainer, load_checkpoint, portable_run_config

from recbole.data import create_dataset, data_preparation
from recbole.utils import ModelType, get_model, init_logger, init_seed

logger = logging.getLogger(__name__)


current_run_dir: Optional[str] = None  # the run folder of the run in progress in this process


class UnknownModelError(ValueError):
    """The model name is neither one of ours nor one of RecBole's."""


def resolve_model(model: Union[str, type]) -> type:
    """A model class from a name (ours first: TIGER, DIGER, SASRecBCE; then RecBole's) or a class.

    Raises:
        UnknownModelError: naming the model and listing ours.
    """
    if isinstance(model, type):
        return model
    if model in MODELS:
        return MODELS[model]
    if model in BASELINES:
        return BASELINES[model]
    try:
        return get_model(model)
    except (ValueError, ImportError, AttributeError) as exc:
        raise UnknownModelError(
            f"unknown model {model!r}: not one of ours ({', '.join([*MODELS, *BASELINES])}) nor a RecBole model (e.g. SASRec, GRU4Rec, Pop)"
        ) from exc


def trainer_class(model_class: type) -> type:
    """Our trainer for semantic-ID models, RecBole's trainer with safe checkpoints for the rest."""
    from .models.tiger import SemanticIDRecommender

    if issubclass(model_class, SemanticIDRecommender):  # the trainer-model contract of that base class
        return GenRecTrainer
    from recbole.utils import get_trainer

    from recbole.trainer import Trainer

    base = get_trainer(model_class.type, model_class.__name__)
    if base is Trainer:
        return SafeCheckpointTrainer
    if issubclass(base, Trainer):
        # A RecBole model with a trainer of its own: keep it, with our checkpoint writer in front.
        return type(f"Safe{base.__name__}", (SafeCheckpointTrainer, base), {})
    return base


def _check_data(config) -> None:
    path = Path(config["data_path"])
    inter = path / f"{config['dataset']}.inter"
    bench = config["benchmark_filename"]
    if bench:
        missing = [str(path / f"{config['dataset']}.{b}.inter") for b in bench if not (path / f"{config['dataset']}.{b}.inter").is_file()]
        if missing:
            raise FileNotFoundError(f"dataset {config['dataset']!r}: missing {', '.join(missing)}")
    elif not inter.is_file():
        raise FileNotFoundError(
            f"dataset {config['dataset']!r} not found: expected the atomic file {inter} "
            f"(set --data_path to the folder holding {config['dataset']}/, or prepare it with `diger data prepare`)"
        )
    separator = config["field_separator"] or "\t"
    for suffix in ("inter", "item", "user"):
        for f in sorted({*path.glob(f"{config['dataset']}.{suffix}"), *path.glob(f"{config['dataset']}.*.{suffix}")}):
            check_header_line(f, separator)


def make_config(model: Union[str, type] = "DIGER", dataset: str = "ml-100k",
                config_file_list: Optional[List[str]] = None, config_dict: Optional[Dict] = None) -> DigerConfig:
    """Build the RecBole config (see :mod:`diger.config` for the precedence) and check the data exists."""
    model_class = resolve_model(model)
    config = DigerConfig(model=model_class, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    warn_unknown_keys(config, config_file_list)
    check_value_types(config)
    check_mappings(config)
    if hasattr(model_class, "check_config"):
        model_class.check_config(config)
    # RecBole's TraditionalTrainer (Pop, ItemKNN) always fits for exactly one epoch
    if model_class.type != ModelType.TRADITIONAL and config["epochs"] is not None and config["epochs"] <= 0:
        warnings.warn(f"epochs={config['epochs']}: nothing is trained; the untrained model is evaluated",
                      UserWarning, stacklevel=2)
    threads = config["torch_num_threads"] if "torch_num_threads" in config else None
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"config key 'torch_num_threads' expects a positive integer (torch.set_num_threads) "
                          f"or None (keep torch's default), got {threads!r}")
    _check_data(config)
    return config


def _finite(obj):
    """``obj`` with non-finite floats (RecBole's ``-inf`` best score of an unevaluated run) as ``None``: strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _write_json(path: Path, obj: Dict) -> None:
    atomic_write_json(path, _finite(obj))


def _output_dir(config) -> Path:
    out = config["output_dir"] if "output_dir" in config else None
    if not out:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = os.path.join("runs", f"{config['model']}-{config['dataset']}-{stamp}")
        out, n = base, 1
        while True:  # reserve atomically: two runs started in the same second must not share a folder
            try:
                os.makedirs(out)
                break
            except FileExistsError:
                n += 1
                out = f"{base}-{n}"
    return Path(out)


def run(model: Union[str, type] = "DIGER", dataset: str = "ml-100k", config_file_list: Optional[List[str]] = None,
        config_dict: Optional[Dict] = None, saved: bool = True) -> Dict:
    """Train and evaluate ``model`` on ``dataset``; write ``<output_dir>/result.json``; return it.

    ``output_dir`` (config key) defaults to ``runs/<model>-<dataset>-<time>``; the checkpoint
    (``checkpoint_dir``) goes there too unless set. ``<output_dir>/run.json`` records the run's
    configuration at the start, and ``<checkpoint_dir>/last.pth`` the state after every evaluated
    epoch, so a killed run continues with :func:`resume`. The result holds ``best_valid_result``,
    ``test_result`` (RecBole metric names), ``best_valid_score``, ``config``, ``wall_clock_seconds``,
    ``checkpoint`` and, for semantic-ID models, ``codebook`` statistics per epoch.

    Raises:
        UnknownModelError, ConfigError, FileNotFoundError: for a bad model, config or dataset.
    """
    start = time.time()
    config = make_config(model, dataset, config_file_list, config_dict)
    reserved = not (config["output_dir"] if "output_dir" in config else None)
    out_dir = _output_dir(config)
    try:
        return _run_in(config, model, dataset, config_file_list, config_dict, saved, start, out_dir)
    except BaseException:
        if reserved and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a run that failed before writing anything leaves no folder behind
        raise


def _run_in(config, model, dataset, config_file_list, config_dict, saved, start, out_dir):
    if "checkpoint_dir" not in (config_dict or {}) and "checkpoint_dir" not in config.file_config_dict:
        config["checkpoint_dir"] = str(out_dir)
    config["checkpoint_dir"] = os.path.abspath(config["checkpoint_dir"])
    nproc, world = process_counts(config)
    if world > 1 and "local_rank" not in (config_dict or {}):  # the launcher (workers carry local_rank)
        shared = {**(config_dict or {}), "output_dir": str(out_dir.resolve()), "checkpoint_dir": config["checkpoint_dir"]}
        return _spawn(model, dataset, config_file_list, shared, saved, start, nproc, world, config)
    return _execute(config, resolve_model(model), out_dir, saved, start)


def process_counts(config) -> "tuple[int, int]":
    """``(nproc, world_size)`` from the config keys ``nproc`` (default 1) and ``world_size`` (default ``nproc``).

    Raises:
        ValueError: for ``nproc < 1`` or ``world_size < nproc``.
    """
    nproc = config["nproc"] if "nproc" in config else None
    nproc = 1 if nproc is None else int(nproc)
    world = config["world_size"] if "world_size" in config else None
    world = nproc if world is None or int(world) <= 0 else int(world)
    if nproc < 1 or world < nproc:
        raise ValueError(f"need 1 <= nproc <= world_size, got nproc={nproc}, world_size={world}")
    return nproc, world


def _spawn(model, dataset, config_file_list, config_dict: Dict, saved: bool, start: float, nproc: int, world: int,
           config, resume_file: Optional[str] = None) -> Optional[Dict]:
    """Start ``nproc`` workers (RecBole's launch: ``torch.multiprocessing.spawn``); rank 0's result, or ``None``
    on a machine without global rank 0 (``offset`` > 0)."""
    import torch.multiprocessing as mp

    shared = {**config_dict, "nproc": nproc, "world_size": world,
              "ip": config["ip"] if "ip" in config and config["ip"] else "localhost",
              "port": str(config["port"]) if "port" in config and config["port"] else "5678",
              "offset": int(config["offset"] or 0) if "offset" in config else 0}
    queue = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(_worker, args=(model, dataset, config_file_list, shared, saved, start, queue, resume_file),
                 nprocs=nproc, join=True)
    except mp.ProcessRaisedException as exc:
        # One line, like a one-process run: the worker's own error (its traceback's last line).
        lines = [l for l in str(exc).strip().splitlines() if l.strip()]
        raise RuntimeError(f"process {exc.error_index} of {nproc} failed: {lines[-1] if lines else exc}") from None
    return None if queue.empty() else queue.get()


def _worker(local_rank: int, model, dataset, config_file_list, config_dict: Dict, saved: bool, start: float,
            queue, resume_file: Optional[str]) -> None:
    """One process of a multi-process run (spawned by :func:`_spawn`); puts rank 0's result on ``queue``."""
    import torch.distributed as dist

    config = make_config(model, dataset, config_file_list, {**config_dict, "local_rank": local_rank})
    try:
        result = _execute(config, resolve_model(model), Path(config_dict["output_dir"]), saved, start,
                          resume_file=resume_file)
        if ddist.is_main():
            queue.put(result)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def resume(run_dir: str) -> Dict:
    """Continue a killed :func:`run` from ``<run_dir>/run.json`` and its ``last.pth`` (the last evaluated epoch).

    Model, optimiser, LR schedule, uncertainty-decay state, semantic-ID table, early-stopping
    counters and RNG states are restored, so the run ends as the uninterrupted one would.

    Raises:
        FileNotFoundError: when ``run.json`` is missing; CheckpointError: for a missing or truncated ``last.pth``.
    """
    start = time.time()
    meta_file = Path(run_dir) / "run.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"cannot resume: {meta_file} not found (was {run_dir} written by `diger run`?)")
    meta = json.loads(meta_file.read_text())
    cfg = dict(meta["run_config"])
    if os.path.abspath(meta["checkpoint_dir"]) == os.path.abspath(cfg.get("output_dir") or ""):
        # Checkpoints inside the run folder: follow the folder if it was moved or copied.
        here = str(Path(run_dir).resolve())
        cfg.update(output_dir=here, checkpoint_dir=here)
        meta["checkpoint_dir"] = here
    last = os.path.join(meta["checkpoint_dir"], SafeCheckpointTrainer.LAST)
    saved = load_checkpoint(last).get("saved_model_file")  # a missing or truncated last.pth fails here
    mine = meta.get("best_checkpoint_name")
    if mine and saved and os.path.basename(str(saved)) != mine:
        raise CheckpointError(f"cannot resume {run_dir}: {last} belongs to another run (its best checkpoint is "
                              f"{os.path.basename(str(saved))}, this run's is {mine}); runs that share a "
                              f"checkpoint_dir overwrite each other's last.pth: give each run its own checkpoint_dir "
                              f"(the default is the run folder)")
    config = make_config(meta["model"], meta["dataset"], None, cfg)
    nproc, world = process_counts(config)
    if world > 1:  # a multi-process run continues with the same processes (each rank's RNG streams restored)
        return _spawn(meta["model"], meta["dataset"], None, cfg, True, start, nproc, world, config, resume_file=last)
    return _execute(config, resolve_model(meta["model"]), Path(run_dir), True, start, resume_file=last)


def _init_logging(config) -> None:
    """RecBole's logger (console and ``./log/...``) on rank 0; errors to stderr only on the other ranks.

    Raises:
        ConfigError: when ``./log`` or ``./log_tensorboard`` in the working directory is a file (RecBole writes
            folders of those names there), naming the path.
    """
    for name in ("log", "log_tensorboard"):
        if os.path.lexists(name) and not os.path.isdir(name):
            raise ConfigError(f"{os.path.abspath(name)} is a file, but RecBole writes its logs into the folder "
                              f"./{name}/ of the working directory; run from another folder or move the file")
    if ddist.is_main():
        init_logger(config)
    else:
        logging.basicConfig(level=logging.ERROR, force=True)


_FILTER_KEYS = ("user_inter_num_interval", "item_inter_num_interval", "val_interval", "unused_col")


def load_dataset(config):
    """RecBole's ``create_dataset`` with a clear error when filtering leaves nothing.

    Raises:
        ValueError: naming the dataset, its folder and the filtering keys when no interactions are left
            (RecBole itself only says "Some feat is empty").
    """
    try:
        ds = create_dataset(config)
    except ValueError as err:
        if "is empty" not in str(err):
            raise
        ds = None
    if ds is None or ds.inter_num == 0:
        keys = ", ".join(f"{k}={config[k]!r}" for k in _FILTER_KEYS if config[k] is not None)
        raise ValueError(f"dataset {config['dataset']!r} ({config['data_path']}): no interactions left after "
                         f"filtering ({keys}); loosen these keys")
    order_by_exact_time(ds, config)
    return ds


def order_by_exact_time(ds, config) -> None:
    """Sort the interactions by their exact (float64) timestamp, ties in file order, in place.

    RecBole keeps timestamps as float32 once the dataset is built, which resolves only 64 s around
    8.8e8 (MovieLens' epoch seconds), and then sorts stably in file order: interactions less than a
    minute apart keep their file order even when it is the wrong one (on ML-100K 83 of 943 users,
    4 test targets). Sorting here, while the timestamps are still float64 in the DataFrame, fixes
    that: float32 rounding is monotone, so RecBole's later stable sorts keep this order. Only for
    ``eval_args.order: TO`` with a time field loaded, and not for pre-split ``benchmark_filename`` files
    (their rows are split by file length).
    """
    time_field = config["TIME_FIELD"]
    order = (config["eval_args"] or {}).get("order", "RO")
    frame = getattr(ds, "inter_feat", None)
    if order != "TO" or config["benchmark_filename"] or not time_field or frame is None or time_field not in getattr(frame, "columns", ()):
        return
    ds.inter_feat = frame.sort_values(time_field, kind="stable").reset_index(drop=True)


def _build_model(model_class, config, dataset, checkpoint_file: Optional[str] = None):
    """The model, with stage 0 resolved before its constructor runs (data flows dataset -> SIDs -> model).

    A TIGER / DIGER model restored from ``checkpoint_file`` takes its item embeddings, tokenizer and SID table
    from the checkpoint (nothing is recomputed); a new one from :func:`diger.artifact.resolve_stage0`.
    """
    from .artifact import provide_stage0, resolve_stage0, stage0_from_state_dict
    from .models.tiger import SemanticIDRecommender

    if not (isinstance(model_class, type) and issubclass(model_class, SemanticIDRecommender)):
        return model_class(config, dataset)
    if checkpoint_file:
        tokens = dataset.field2id_token[config["ITEM_ID_FIELD"]]
        art = stage0_from_state_dict(load_checkpoint(checkpoint_file)["state_dict"], config, tokens, checkpoint_file)
    else:
        art = resolve_stage0(config, dataset)
    with provide_stage0(art):
        return model_class(config, dataset)


def _execute(config, model_class, out_dir: Path, saved: bool, start: float, resume_file: Optional[str] = None) -> Dict:
    threads = config["torch_num_threads"] if "torch_num_threads" in config else None
    # intra-op threads of this run only; the caller's count comes back
    with torch_threads(int(threads)) if threads is not None else contextlib.nullcontext():
        return _execute_run(config, model_class, out_dir, saved, start, resume_file)


def _execute_run(config, model_class, out_dir: Path, saved: bool, start: float, resume_file: Optional[str]) -> Dict:
    init_seed(config["seed"], config["reproducibility"])
    _init_logging(config)
    log = logging.getLogger()
    log.info(config)
    ds = load_dataset(config)
    log.info(ds)
    train_data, valid_data, test_data = data_preparation(config, ds)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = _build_model(model_class, config, train_data._dataset, resume_file).to(config["device"])
    log.info(net)
    trainer = trainer_class(model_class)(config, net)
    global current_run_dir
    current_run_dir = str(out_dir.resolve())  # for the CLI's resume hint on Ctrl-C
    this_process = start
    if resume_file:
        trainer.resume_last(resume_file, train_data)
        start -= trainer.elapsed_before  # count the time spent before the interruption too
    elif ddist.is_main():  # written once the model is built, so a bad config leaves no run folder behind
        _write_json(out_dir / "run.json", {
            "model": config["model"], "dataset": config["dataset"], "checkpoint_dir": str(config["checkpoint_dir"]),
            "best_checkpoint_name": os.path.basename(str(trainer.saved_model_file)),
            "run_config": portable_run_config({**config.external_config_dict, "output_dir": str(out_dir.resolve()),
                                               "checkpoint_dir": str(config["checkpoint_dir"])}),
        })
    trainer.run_start = start
    show = bool(config["show_progress"])
    best_score, best_valid = trainer.fit(train_data, valid_data, saved=saved, show_progress=show)
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=show)
    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": float(best_score),
        "best_valid_result": compat.to_plain(dict(best_valid or {})),
        "test_result": compat.to_plain(dict(test_result or {})),
        "wall_clock_seconds": round(time.time() - start, 2),  # a resumed run: up to its last checkpoint + since
        "wall_clock_seconds_this_process": round(time.time() - this_process, 2),
        "checkpoint": trainer.saved_model_file if saved else None,
        "training": trainer.training_summary(),
        "resumed_from": resume_file,
        "protocol": {
            "split": "leave-one-out by timestamp (RecBole LS valid_and_test, order TO; ties keep file order)",
            "ranking": "full",
            "exclude_history": bool(config["exclude_history"]),
            "max_history": config["MAX_ITEM_LIST_LENGTH"],
        },
        "config": compat.config_to_plain(config),
    }
    if hasattr(net, "codebook_statistics"):
        result["semantic_ids"] = {
            "gradient_path": getattr(net, "gradient_path", "frozen (TIGER)"),
            "assign_mode": getattr(net, "assign_mode", None),
            "constrained_decoding": net.constrained,
            "num_beams": net.num_beams,
            "tokenizer_pretraining": compat.to_plain(net.pretrain_info),
        }
        result["codebook"] = {"final": net.codebook_statistics(), "history": trainer.codebook_history}
    if not config["single_spec"]:
        result["distributed"] = {"world_size": ddist.world_size(), "backend": compat.dist_backend(config)}
    log.info("best valid: %s", result["best_valid_result"])
    log.info("test result: %s", result["test_result"])
    if ddist.is_main():
        _write_json(out_dir / "result.json", result)
        log.info("result written to %s", out_dir / "result.json")
    return result


def rebuild_from_checkpoint(path: str, overrides: Optional[Dict] = None):
    """Config, dataset, splits and model of the run saved in checkpoint ``path`` (weights not yet loaded).

    The dataset is re-read and split with the saved config and seed; semantic-ID models skip stage 0: their
    item embeddings, tokenizer and SID table come from the checkpoint (:func:`_build_model`).

    Returns:
        ``(ckpt, config, dataset, (train_data, valid_data, test_data), model)``.

    Raises:
        CheckpointError: for a missing or unreadable checkpoint.
    """
    ckpt = load_checkpoint(path)
    run_config = dict(ckpt.get("run_config") or {})
    saved_cfg = ckpt.get("config") or {}
    run_config.update({"checkpoint_dir": os.path.dirname(os.path.abspath(path))})
    if saved_cfg.get("data_path") and ckpt["dataset"] != "ml-100k":
        run_config["data_path"] = os.path.dirname(saved_cfg["data_path"].rstrip("/"))
    run_config.update(overrides or {})
    config = make_config(ckpt["model"], ckpt["dataset"], None, run_config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    ds = load_dataset(config)
    splits = data_preparation(config, ds)
    net = _build_model(resolve_model(ckpt["model"]), config, splits[0]._dataset, path).to(config["device"])
    return ckpt, config, ds, splits, net


def evaluate_checkpoint(path: str, overrides: Optional[Dict] = None) -> Dict:
    """Rebuild the run saved in checkpoint ``path`` and evaluate its test split (same seed, same split).

    Nothing is recomputed from the text model or the tokenizer: the SID table, item embeddings and
    weights come from the checkpoint. Returns ``{"test_result": ..., "checkpoint": path}``.

    Raises:
        CheckpointError: for a missing or unreadable checkpoint.
    """
    ckpt, config, ds, (train_data, valid_data, test_data), net = rebuild_from_checkpoint(path, overrides)
    trainer = trainer_class(resolve_model(ckpt["model"]))(config, net)
    test_result = trainer.evaluate(test_data, load_best_model=True, model_file=path,
                                   show_progress=bool(config["show_progress"]))
    return {"model": ckpt["model"], "dataset": ckpt["dataset"], "checkpoint": path,
            "test_result": compat.to_plain(dict(test_result))}
