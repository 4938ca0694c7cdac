"""softthink's behaviour pinned by values recorded before the issue-16 restructuring (tests/softthink/data/).

For fixed seeds, each case runs 3 training steps of :class:`SoftGRPOTrainer` on a tiny random Qwen2 (or one
inference rollout) and compares with ``tests/softthink/data/golden.json``: the rollout tokens, mixed ids,
recorded noise (perturbed log-probabilities, embedding noise), the rollout's log-likelihoods, the step losses
and the weights after the last step. Integers must be equal; floats equal within ``rtol 1e-4`` on another
machine (BLAS kernels round differently), and bitwise with ``SOFTTHINK_GOLDEN_EXACT=1`` on the machine that
recorded them. ``python -m tests.softthink.test_golden --record``, run from the repository root, rewrites the
file (only when the behaviour is meant to change).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from softthink.testing import base_config, make_model, make_tokenizer
from tests.softthink.helpers import frac_low_ids_reward

GOLDEN = Path(__file__).resolve().parent / "data" / "golden.json"
PROMPTS = [f"w{5 + i} w{20 + i} w{40 + i}" for i in range(8)]
COMMON = dict(num_generations=4, generation_batch_size=8, per_device_train_batch_size=2, gradient_accumulation_steps=2,
              max_completion_length=10, max_steps=3, learning_rate=1e-2, seed=3, save_model=False, top_k=5,
              top_p=0.95, max_think_tokens=5)
#: name -> SoftGRPOConfig overrides; together they run every noise variant, both think-end matchers, the thinking
#: budget, Cold Stop, forced answer tokens, a reference model, off-policy iterations and both loss types.
TRAIN_CASES = {
    "gumbel": dict(beta=0.02, num_iterations=2, answer_prefix="w10 w11"),
    "dirichlet": dict(soft_noise="dirichlet", loss_type="sequence_mean"),
    "gaussian": dict(soft_noise="gaussian"),
    "embedding_gaussian": dict(soft_noise="embedding_gaussian"),
    "discrete": dict(soft_thinking=False, discrete_think=True, answer_prefix="w12"),
    "string_marker_cold_stop": dict(think_end="w13 w14", think_end_match="string", cold_stop_entropy=10.0,
                                    cold_stop_steps=2),
}
#: name -> config of one inference rollout (no training): plain Soft Thinking (no noise) and top-k/top-p answers.
ROLLOUT_CASES = {
    "soft_thinking_no_noise": dict(soft_noise="none"),
}
TRAJ_FIELDS = ("tok", "ids", "y", "is_soft", "forced", "answer_phase", "resp_mask", "rollout_ell", "emb_noise",
               "think_len", "think_ended", "budget_hit", "eos", "cold_stopped")
LOSS_KEYS = ("loss", "policy_loss", "kl", "entropy", "grad_norm", "reward", "num_tokens",
             "soft/rollout_replay_abs_diff")


def _plain(t: torch.Tensor):
    t = t.detach().cpu()
    return t.tolist() if t.dtype != torch.bool else t.long().tolist()


def _traj_record(traj) -> dict:
    return {f: _plain(getattr(traj, f)) for f in TRAJ_FIELDS}


def run_train_case(name: str, tmp: Path) -> dict:
    from softthink.trainer import SoftGRPOTrainer

    torch.set_num_threads(1)
    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(**{**COMMON, **TRAIN_CASES[name], "output_dir": str(tmp / name)})
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS], reward_funcs=[frac_low_ids_reward])
    trajs = []
    generate = tr.rollout.generate

    def recording_generate(*a, **k):
        traj = generate(*a, **k)
        trajs.append(_traj_record(traj))
        return traj

    tr.rollout.generate = recording_generate
    steps = [tr.step() for _ in range(cfg.max_steps)]
    weights = {n: p.detach() for n, p in model.named_parameters()}
    return {
        "trajectories": trajs,
        "metrics": [{k: m.get(k) for k in LOSS_KEYS} for m in steps],
        "advantages": _plain(tr.last_batch["advantages"]),
        "weights_sha256": hashlib.sha256(b"".join(w.contiguous().numpy().tobytes() for w in weights.values()))
        .hexdigest(),
        "weights_sample": {n: _plain(w.reshape(-1)[:6]) for n, w in weights.items()},
        "weights_abs_sum": {n: float(w.abs().sum()) for n, w in weights.items()},
    }


def run_rollout_case(name: str) -> dict:
    from softthink.rollout import SoftRollout
    from softthink.testing import left_padded_prompts

    torch.set_num_threads(1)
    tok, model = make_tokenizer(), make_model(seed=1)
    cfg = base_config(**{**COMMON, **ROLLOUT_CASES[name]})
    ids, mask = left_padded_prompts(tok, PROMPTS[:4])
    traj = SoftRollout(model, tok, cfg).generate(ids, mask, generator=torch.Generator().manual_seed(5))
    return {"trajectories": [_traj_record(traj)]}


def _compare(want, got, where: str, exact: bool) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(want) == sorted(got), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            if exact or k != "weights_sha256":
                _compare(want[k], got[k], f"{where}.{k}", exact)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(want) == len(got), f"{where}: length {len(got)} != {len(want)}"
        for i, (a, b) in enumerate(zip(want, got)):
            _compare(a, b, f"{where}[{i}]", exact)
    elif isinstance(want, float) and not isinstance(got, bool):
        if exact or want != want:  # NaN must stay NaN
            assert repr(want) == repr(float(got)), f"{where}: {got!r} != {want!r}"
        else:
            assert abs(want - got) <= 1e-4 * max(1.0, abs(want)), f"{where}: {got!r} != {want!r}"
    else:
        assert want == got, f"{where}: {got!r} != {want!r}"


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", sorted(TRAIN_CASES))
def test_three_training_steps_match_the_recorded_values(name, tmp_path):
    _compare(_golden()[name], json.loads(json.dumps(run_train_case(name, tmp_path))), name,
             os.environ.get("SOFTTHINK_GOLDEN_EXACT") == "1")


@pytest.mark.parametrize("name", sorted(ROLLOUT_CASES))
def test_inference_rollout_matches_the_recorded_values(name):
    _compare(_golden()[name], json.loads(json.dumps(run_rollout_case(name))), name,
             os.environ.get("SOFTTHINK_GOLDEN_EXACT") == "1")


def test_golden_cases_exercise_every_path():
    g = _golden()
    for name in TRAIN_CASES:
        soft = [any(any(r) for r in t["is_soft"]) for t in g[name]["trajectories"]]
        assert any(soft) == (name != "discrete"), name
        assert len(g[name]["trajectories"]) == 3 and len(g[name]["metrics"]) == 3
    forced = [any(any(r) for r in t["forced"]) for t in g["gumbel"]["trajectories"]]
    assert any(forced)  # the budget ran out and the marker + answer cue were fed
    assert any(any(t["cold_stopped"]) for t in g["string_marker_cold_stop"]["trajectories"])
    assert any(any(x != 0 for row in t["emb_noise"] for pos in row for x in pos)
               for t in g["embedding_gaussian"]["trajectories"])


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for n in TRAIN_CASES:
            out[n] = run_train_case(n, Path(d))
    for n in ROLLOUT_CASES:
        out[n] = run_rollout_case(n)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(out))
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
