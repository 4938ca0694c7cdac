"""Reward functions with TRL's signature ``f(prompts, completions, **columns) -> list[float | None]``.

Boxed-answer policy (pinned; the last box, like SofT-GRPO's training reward ``verl/utils/reward_score/math_reward.py``):

1. Only the *answer part* is searched: the text after the last occurrence of the think-end marker
   (``think_end`` keyword, default ``"</think>"``) when the completion contains it, else the whole completion.
2. The **last complete** ``\\boxed{...}`` (braces matched, so nested braces are fine), ``\\boxed x`` (a
   space-delimited token) or ``\\fbox{...}`` counts. An unclosed trailing ``\\boxed{`` is ignored, so an earlier
   complete box still counts. Earlier boxes never count even if they are right (a revised answer is judged
   by its final value), which also avoids math-verify merging several boxes into a set.
3. No box: reward ``0.0`` (the format is part of the task).
4. The extracted expression is compared with the gold answer by math-verify (``verify(gold, pred)``, gold
   parsed with its default configuration). An unparseable gold gives ``None`` ("not applicable", ignored by
   the trainer's nan-aware sum), as TRL's ``accuracy_reward`` does.

Completions may be strings or TRL conversational lists ``[{"role": "assistant", "content": ...}]``.

Dataset columns: a reward function may declare the columns it reads as ``f.dataset_columns``, a tuple of
requirements, each a tuple of alternative column names (``math_verify_reward``: ``(("answer", "solution"),)``);
:func:`required_columns` reads it (or, without it, the required named parameters of ``f``), and the trainer and
``softthink eval`` check them against the dataset before anything is generated.
"""
from __future__ import annotations

import inspect
import json
import re
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .prompts import is_conversational, preview

#: A reward function (TRL's signature): keyword arguments in, one float (or None = not applicable) per completion.
RewardFunc = Callable[..., List[Optional[float]]]

__all__ = [
    "RewardFunc",
    "RewardFunctionError",
    "check_reward_columns",
    "score_completions",
    "extract_boxed",
    "last_boxed_answer",
    "answer_part",
    "math_verify_reward",
    "task_scorer_reward",
    "get_reward_funcs",
    "required_columns",
    "REWARD_FUNCS",
]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")


def _content(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):
        return str(c[-1].get("content", ""))
    if isinstance(c, dict):
        return str(c.get("content", ""))
    raise TypeError(f"completion must be a string or a list of chat messages, got {type(c).__name__}")


def extract_boxed(text: str) -> List[str]:
    """All complete boxed expressions in ``text``, in order.

    Handles ``\\boxed{...}`` with nested braces, ``\\boxed x`` (up to the next whitespace or ``$``) and
    ``\\fbox{...}``; unclosed ``\\boxed{`` occurrences are skipped.

    >>> extract_boxed(r"a \\boxed{\\frac{1}{2}} b \\boxed 5 c \\boxed{3")
    ['\\\\frac{1}{2}', '5']
    """
    out: List[str] = []
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text):
            continue
        if text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth == 0 and j < len(text):
                out.append(text[i + 1 : j].strip())
        elif i > m.end():  # "\boxed 5": a space, then a token
            tokm = re.match(r"[^\s$]+", text[i:])
            if tokm:
                out.append(tokm.group(0).rstrip(".,;"))
    return [s for s in out if s]


def answer_part(text: str, think_end: Optional[str] = "</think>") -> str:
    """The text after the last ``think_end`` marker, or all of ``text`` when it has none."""
    if think_end and think_end in text:
        return text.rsplit(think_end, 1)[1]
    return text


def last_boxed_answer(text: str, think_end: Optional[str] = "</think>") -> Optional[str]:
    """The expression that counts under the boxed-answer policy (module docstring), or None."""
    boxes = extract_boxed(answer_part(text, think_end))
    return boxes[-1] if boxes else None


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _verify(gold: str, expr: str) -> Optional[float]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.parser import NormalizationConfig

    timeout = 5 if _main_thread() else None  # signal.alarm only works in the main thread
    gold_parsed = parse(str(gold), parsing_timeout=timeout)
    if not gold_parsed:
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    if not gold_parsed:
        return None
    pred_cfg = [
        LatexExtractionConfig(
            boxed_match_priority=0,
            normalization_config=NormalizationConfig(basic_latex=True, units=True, malformed_operators=False,
                                                     nits=False, boxed="all", equations=False),
        ),
        ExprExtractionConfig(),
    ]
    pred = parse(f"\\boxed{{{expr}}}", extraction_config=pred_cfg, parsing_timeout=timeout)
    if not pred:
        return 0.0
    return 1.0 if verify(gold_parsed, pred, timeout_seconds=timeout) else 0.0


def math_verify_reward(prompts: Sequence[Any], completions: Sequence[Any], *, answer: Optional[Sequence[str]] = None,
                       solution: Optional[Sequence[str]] = None, think_end: Optional[str] = "</think>",
                       **_: Any) -> List[Optional[float]]:
    """1.0 if the counted boxed answer equals the gold under math-verify, else 0.0 (None: unparseable gold).

    Args:
        prompts: unused (TRL signature).
        completions: strings or conversational completions.
        answer: gold answers (dataset column ``answer``); ``solution`` (TRL's name) is accepted instead.
        think_end: marker that separates thinking from the answer (see the module docstring).
    Raises:
        ValueError: when neither ``answer`` nor ``solution`` is given or lengths differ.
    """
    gold = answer if answer is not None else solution
    if gold is None:
        raise ValueError("math_verify_reward needs an 'answer' (or 'solution') dataset column")
    if len(gold) != len(completions):
        raise ValueError(f"math_verify_reward: {len(completions)} completions but {len(gold)} answers")
    out: List[Optional[float]] = []
    for c, g in zip(completions, gold):
        expr = last_boxed_answer(_content(c), think_end)
        out.append(0.0 if expr is None else _verify(str(g), expr))
    return out


def task_scorer_reward(prompts: Sequence[Any], completions: Sequence[Any], *, entry: Sequence[str],
                       think_end: Optional[str] = "</think>", **_: Any) -> List[Optional[float]]:
    """The reasoning-gym task's own scorer, applied to the counted boxed answer (same policy as
    :func:`math_verify_reward`: last complete box of the answer part; no box gives 0.0).

    The scorer, not math-verify, decides equality; e.g. ``basic_arithmetic`` gives 1.0 for an exact string
    match and partial credit ``len(gold) / len(answer)`` when the gold is a substring. Unlike math-verify it
    does not evaluate expressions, so boxing the question (``\\boxed{8+2}``) earns nothing.

    Args:
        entry: JSON-serialised reasoning-gym entries (dataset column ``entry``, written by
            :mod:`softthink.data`); the scorer is looked up from ``metadata.source_dataset``.
    Returns:
        The scorer's value in [0, 1] per completion.
    """
    from reasoning_gym import get_score_answer_fn

    out: List[Optional[float]] = []
    for c, e in zip(completions, entry):
        ent = json.loads(e) if isinstance(e, str) else e
        fn = get_score_answer_fn(ent["metadata"]["source_dataset"])
        text = _content(c)
        ans = last_boxed_answer(text, think_end)
        # No box: 0.0. (Scoring the bare text instead let a first run farm partial credit with short
        # unboxed "a + b = c" completions that stop before the answer phase.)
        out.append(0.0 if ans is None else float(fn(ans, ent)))
    return out


math_verify_reward.dataset_columns = (("answer", "solution"),)
task_scorer_reward.dataset_columns = (("entry",),)

#: Keyword arguments every reward call gets besides the dataset columns (TRL's reward signature plus ``think_end``).
REWARD_ARGS = ("prompts", "completions", "completion_ids", "think_end")


def required_columns(func: Callable) -> Tuple[Tuple[str, ...], ...]:
    """Dataset columns ``func`` reads: its declared ``dataset_columns`` (tuples of alternative names), else each
    required named parameter of its signature that is not one of :data:`REWARD_ARGS` (a ``**kwargs`` reader
    declares nothing and is checked only when it is called).

    >>> required_columns(math_verify_reward)
    (('answer', 'solution'),)
    """
    declared = getattr(func, "dataset_columns", None)
    if declared is not None:
        return tuple(tuple(alt) for alt in declared)
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins / C callables without a signature
        return ()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple((p.name,) for p in params
                 if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in REWARD_ARGS)


REWARD_FUNCS: Dict[str, Callable[..., List[Optional[float]]]] = {
    "math_verify": math_verify_reward,
    "task_scorer": task_scorer_reward,
}


def get_reward_funcs(names: Sequence[str]) -> List[Callable[..., List[Optional[float]]]]:
    """Resolve reward names to callables: a name from ``REWARD_FUNCS``, or the import path of a function with
    TRL's reward signature, ``"package.module.function"`` (TRL's ``reward_funcs`` convention).

    Raises:
        ValueError: naming the unknown reward and the known ones, or the import path that cannot be resolved.
    """
    import importlib

    out = []
    for n in names:
        if n in REWARD_FUNCS:
            out.append(REWARD_FUNCS[n])
            continue
        if "." not in n:
            raise ValueError(f"unknown reward {n!r}; known rewards: {sorted(REWARD_FUNCS)} (or a function's "
                             "import path, 'package.module.function')")
        mod, _, attr = n.rpartition(".")
        try:
            f = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"unknown reward {n!r}: cannot import {attr!r} from {mod!r} ({exc})") from None
        if not callable(f):
            raise ValueError(f"reward {n!r} is not callable")
        out.append(f)
    return out


class RewardFunctionError(RuntimeError):
    """A reward function raised or returned something unusable; the message names it and the dataset row."""


def check_reward_columns(reward_funcs: Sequence[RewardFunc], names: Sequence[str], columns: Sequence[str],
                         where: str = "train_dataset") -> None:
    """Check that the dataset has every column the reward functions read (:func:`softthink.rewards.required_columns`).

    Raises:
        ValueError: naming the reward, the column (and its alternatives), ``where`` and the columns present.
    """
    have = set(columns)
    for f, name in zip(reward_funcs, names):
        for alts in required_columns(f):
            if not have & set(alts):
                need = repr(alts[0]) + "".join(f" or {a!r}" for a in alts[1:])
                raise ValueError(f"reward {name!r} reads the dataset column {need}, which {where} does not have "
                                 f"(its columns: {sorted(have)})")


def score_completions(reward_funcs: Sequence[RewardFunc], names: Sequence[str], rows: List[Dict[str, Any]],
                      completions: List[str], completion_ids: List[List[int]], *, think_end: str,
                      row_ids: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Call each reward function once on the batch, with exactly the arguments of training and ``softthink eval``
    (TRL's signature): ``prompts``, ``completions`` (``[{"role": "assistant", "content": text}]`` when the
    prompts are chat messages, else the texts), ``completion_ids`` (the response ids up to and including the
    stop token), ``think_end`` and every other dataset column as a keyword argument (one value per completion).

    Args:
        rows: ``N`` dataset rows (one per completion, all with the same columns).
        completions: ``N`` decoded texts; completion_ids: ``N`` id lists.
        row_ids: dataset row of each completion (named in errors; default the batch position).
    Returns:
        ``[N, F]`` float32, one column per function; NaN where a function returned None ("not applicable").
    Raises:
        RewardFunctionError: when a function raises (a ``KeyError`` naming a column the rows lack says so, with
            the row and the columns present), returns the wrong number of values or a value that is not a number
            or None; the message names the function and the dataset row at fault.
    """
    row_ids = list(row_ids) if row_ids is not None else list(range(len(rows)))
    prompts = [r["prompt"] for r in rows]
    conv = is_conversational(prompts[0])
    comps = [[{"role": "assistant", "content": c}] for c in completions] if conv else completions
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    per = torch.full((len(rows), len(reward_funcs)), float("nan"))

    def call(f, idx):
        return f(prompts=[prompts[b] for b in idx], completions=[comps[b] for b in idx],
                 completion_ids=[completion_ids[b] for b in idx], think_end=think_end,
                 **{k: [v[b] for b in idx] for k, v in columns.items()})

    for j, f in enumerate(reward_funcs):
        name = names[j]
        try:
            vals = call(f, range(len(rows)))
        except Exception as exc:
            bad = None  # find the row at fault by calling the function one row at a time
            for b in range(len(rows)):
                try:
                    call(f, [b])
                except Exception:
                    bad = b
                    break
            key = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
            if isinstance(key, str) and key.isidentifier() and key not in rows[0]:  # most likely kwargs[column]
                b = bad or 0
                raise RewardFunctionError(
                    f"reward function {name!r} raised KeyError: {key!r} on dataset row {row_ids[b]}: the dataset has "
                    f"no column {key!r} (the row's columns: {sorted(rows[b])})") from exc
            where = (f"dataset row {row_ids[bad]} (prompt {preview(prompts[bad])}, completion "
                     f"{preview(completions[bad])})") if bad is not None else \
                f"the batch of dataset rows {sorted(set(row_ids))} (no single row fails on its own)"
            raise RewardFunctionError(f"reward function {name!r} raised {type(exc).__name__}: {exc} "
                                      f"on {where}") from exc
        if vals is None or len(vals) != len(rows):
            raise RewardFunctionError(f"reward function {name!r} returned "
                                      f"{'None' if vals is None else len(vals)} values for {len(rows)} "
                                      f"completions (dataset rows {sorted(set(row_ids))})")
        for b, v in enumerate(vals):
            try:
                per[b, j] = float("nan") if v is None else float(v)
            except (TypeError, ValueError):
                raise RewardFunctionError(f"reward function {name!r} returned {v!r} (not a number or None) "
                                          f"for dataset row {row_ids[b]}") from None
    return per
