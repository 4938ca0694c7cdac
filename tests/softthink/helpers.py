"""Test-only helpers of the softthink tests: reward functions with TRL's signature.

Importable by ``reward_funcs`` import path (``"tests.softthink.helpers.frac_low_ids_reward"``) when the
repository root is on ``sys.path`` (pytest puts it there; subprocesses get it through ``PYTHONPATH``). The tiny
tokenizers and models are in :mod:`softthink.testing`.
"""


def frac_low_ids_reward(prompts, completions, completion_ids, **kw):
    """Share of completion ids below 34 (a graded reward, so groups have non-zero advantages).

    Importable as ``tests.softthink.helpers.frac_low_ids_reward`` (``reward_funcs`` import path) when the
    repository root is on ``sys.path``. If ``SOFTTHINK_TEST_KILL_AT=N`` is set, the process SIGKILLs itself in its
    N-th call (used to kill a run mid-step).
    """
    import os
    import signal

    frac_low_ids_reward.calls = getattr(frac_low_ids_reward, "calls", 0) + 1
    if os.environ.get("SOFTTHINK_TEST_KILL_AT") == str(frac_low_ids_reward.calls):
        os.kill(os.getpid(), signal.SIGKILL)
    return [sum(1 for i in ids if i < 34) / max(1, len(ids)) for ids in completion_ids]


def first_id_low_reward(prompts, completions, completion_ids, **kw):
    """1.0 if the first completion id is below 34 (about half the samples of the random model), else 0.0."""
    return [1.0 if ids and ids[0] < 34 else 0.0 for ids in completion_ids]


def always_one_reward(prompts, completions, **kw):
    """1.0 for every completion (a stand-in for a format reward)."""
    return [1.0] * len(completions)


def recording_reward(**kwargs):
    """Records the keyword arguments of every call in ``recording_reward.calls``; scores 0.0."""
    recording_reward.calls = getattr(recording_reward, "calls", []) + [kwargs]
    return [0.0] * len(kwargs["completions"])
