"""Load the policy and tokenizer (hub id, local dir, run dir or "tiny"), apply LoRA/QLoRA, save and merge."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
import shutil
from pathlib import Path
from typing import Optional

import torch

from alignlab.errors import AlignlabError
from alignlab.hub import endpoint, hub_offline, hub_reachable
from alignlab.model.run_files import save_model

log = logging.getLogger("alignlab")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}

# LoRA targets by architecture: every linear layer of attention and MLP, as QLoRA recommends.
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}
for _name in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mistral", "mixtral", "gemma", "gemma2", "gemma3_text", "olmo2", "smollm3", "phi3"):
    LORA_TARGETS[_name] = LORA_TARGETS["llama"]


EXPECTED = ("a model directory (with config.json, or adapter_config.json for a LoRA adapter), a run directory "
            "(with final/ or a checkpoint-*/), a hub id like org/name, or tiny (the offline model alignlab builds)")
# A hub id is `name` or `org/name`; anything else that does not exist is a path that is not there.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def resolve_model_path(name_or_path: str) -> str:
    """What to load: a model or adapter directory as it is; a run directory's final/ (merged
    weights), else its latest checkpoint's model/; a hub id as it is. Anything else fails with
    what was expected there and what is missing."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or _is_adapter_dir(str(path)):
            return str(path)
        if (path / "config.yaml").is_file():  # a run directory
            if (path / "final").is_dir():
                return str(path / "final")
            from alignlab.model.run_files import latest_checkpoint

            latest = latest_checkpoint(path)
            if latest is None:
                raise AlignlabError(
                    f"run directory {path} has no final/ and no checkpoint-*/: its run saved no model yet (checkpoints "
                    "come every train.save_every steps and at the end). Give a run that saved one, or a model directory"
                )
            return str(latest / "model")
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        listing = f"it holds {', '.join(found[:8])}{', ...' if len(found) > 8 else ''}" if found else "it is empty"
        raise AlignlabError(f"{path} is not a model: no config.json, adapter_config.json, final/ or checkpoint-*/ in "
                            f"it ({listing}). Expected {EXPECTED}")
    if path.exists():
        raise AlignlabError(f"{path} is a file, not a model. Expected {EXPECTED}")
    if not HUB_ID.match(name_or_path) or ".." in name_or_path:
        raise AlignlabError(f"model not found: {name_or_path} does not exist. Expected {EXPECTED}")
    return name_or_path


def hub_options(path: str, revision: Optional[str] = None) -> dict:
    """from_pretrained's options for `path` (after resolve_model_path): none for a local directory;
    for a hub id, the cached copy when the hub cannot be reached, or an error saying what to do."""
    if Path(path).exists():
        return {}
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(path, "config.json", revision=revision), str)
    if hub_offline():
        if cached:
            return {}
        raise AlignlabError(_hub_message(path, "HF_HUB_OFFLINE is set"))
    if hub_reachable():
        return {}
    if cached:
        log.warning("the hub cannot be reached: loading %s from the local cache", path)
        return {"local_files_only": True}
    raise AlignlabError(_hub_message(path, f"{endpoint()} cannot be reached (offline?)"))


def _hub_message(name: str, why: str) -> str:
    return (f"cannot load '{name}': there is no such local directory, so it was taken for a hub id, but {why} and it "
            "is not in the local hub cache. Give a local model directory (with config.json) or a run directory, or, "
            "offline, use `tiny` (the model alignlab builds) or write a small one with `alignlab tiny-model DIR`")


def _load_error(what: str, name: str, path: str, exc: Exception) -> AlignlabError:
    """A loading failure as one message: what was asked for, and transformers' reason (first line)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = ""
    if what == "tokenizer" and Path(path).is_dir() and not any(
            (Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        hint = f" ({path} has no tokenizer.json or tokenizer_config.json: save the tokenizer next to the model)"
    elif not Path(path).exists() and hub_offline():
        hint = " (HF_HUB_OFFLINE is set: give a local model directory, or write one with `alignlab tiny-model DIR`)"
    shown = name if name == path else f"{name} ({path})"
    return AlignlabError(f"cannot load a {what} from {shown}: {reason}{hint}")


def disable_dropout(model) -> None:
    """Every dropout of the model off: its modules (LoRA's included) and attention dropout in the config."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # attention layers copy it from the config
            module.attention_dropout = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if isinstance(getattr(config, key, None), (int, float)):
            setattr(config, key, 0.0)


def ensure_tiny_model(name_or_path: str, cache_root: str = "runs") -> str:
    """`tiny` means the offline demo model: written once under runs/.tiny-model."""
    if name_or_path != "tiny":
        return name_or_path
    from alignlab.model.tiny import write_tiny_model

    path = Path(cache_root) / ".tiny-model"
    if not (path / "config.json").is_file():
        # Written aside and renamed into place: several processes (torchrun) may get here at once.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_tiny_model(tmp)
        try:
            os.rename(tmp, path)
        except OSError:  # another process's copy (identical) is already in place, or a broken leftover
            if (path / "config.json").is_file():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(path, ignore_errors=True)
                os.replace(tmp, path)
    refresh_tiny_template(path)
    return str(path)


def refresh_tiny_template(path: Path) -> None:
    """A tiny model cached by an older alignlab gets the current chat template (it now renders tools):
    the template is the only part of the tiny model that changed, and its weights are untouched."""
    from alignlab.model.tiny import CHAT_TEMPLATE

    template = path / "chat_template.jinja"
    if template.is_file() and template.read_text() != CHAT_TEMPLATE:
        tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        tmp.write_text(CHAT_TEMPLATE)
        os.replace(tmp, template)  # atomic: a concurrent reader sees the old or the new template


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(ensure_tiny_model(name_or_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **hub_options(path))
    except (OSError, ValueError) as exc:  # ValueError: no tokenizer files (its advice, install sentencepiece, misleads)
        raise _load_error("tokenizer", name_or_path, path, exc) from None
    if len(tokenizer) < 2:  # transformers builds an empty one from config.json alone when the files are missing
        raise _load_error("tokenizer", name_or_path, path, ValueError("the tokenizer it builds is empty"))
    if tokenizer.pad_token is None:
        # Padding is always masked out, so any existing token works as pad.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS plus the generation config's `eos_token_id`
    (one id or several: Qwen2.5-Instruct stops at <|im_end|> and <|endoftext|>, Llama 3 at
    <|eot_id|> and <|end_of_text|>)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def model_stop_ids(model_cfg, tokenizer) -> list[int]:
    """`stop_token_ids` for a model not loaded yet (data is encoded first), from its generation config."""
    from transformers import GenerationConfig

    path = resolve_model_path(ensure_tiny_model(model_cfg.name_or_path))
    try:
        config = GenerationConfig.from_pretrained(path, revision=model_cfg.revision,
                                                  **hub_options(path, model_cfg.revision))
    except (OSError, ValueError):  # none saved: the tokenizer's EOS is all there is
        config = None
    return stop_token_ids(tokenizer, config)


def _is_adapter_dir(path: str) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_model(model_cfg, lora_cfg=None, *, for_training: bool = True, gradient_checkpointing: bool = False):
    """The policy model, with LoRA applied when `lora_cfg.enabled`."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(ensure_tiny_model(model_cfg.name_or_path))
    kwargs = dict(dtype=DTYPES[model_cfg.dtype], trust_remote_code=model_cfg.trust_remote_code,
                  **hub_options(path, model_cfg.revision))
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if model_cfg.load_in_4bit:
        kwargs["quantization_config"] = _four_bit_config(lora_cfg)
    try:
        if _is_adapter_dir(path):
            from peft import AutoPeftModelForCausalLM

            # A saved adapter: merge it so training starts from the adapted weights.
            model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error("model", model_cfg.name_or_path, path, exc) from None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = model.generation_config.eos_token_id
    if gradient_checkpointing:
        # transformers 5.24 renamed it activation checkpointing; older 5.x has only the first name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora_cfg is not None and lora_cfg.enabled and for_training:
        model = apply_lora(model, lora_cfg, quantized=model_cfg.load_in_4bit)
    return model


def _four_bit_config(lora_cfg):
    if not torch.cuda.is_available():
        raise AlignlabError("model.load_in_4bit=true (QLoRA) needs a CUDA GPU, and none is available here")
    if lora_cfg is None or not lora_cfg.enabled:
        raise AlignlabError("model.load_in_4bit=true trains LoRA adapters on a frozen 4-bit base: set lora.enabled=true")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise AlignlabError("model.load_in_4bit=true needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True
    )


def lora_targets(model, configured: Optional[list[str]]) -> list[str] | str:
    if configured:
        return configured
    return LORA_TARGETS.get(getattr(model.config, "model_type", ""), "all-linear")


def apply_lora(model, lora_cfg, *, quantized: bool = False):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    with quiet_peft_deprecations():
        if quantized:
            model = prepare_model_for_kbit_training(model)
        config = LoraConfig(
            r=lora_cfg.r,
            lora_alpha=lora_cfg.alpha,
            lora_dropout=lora_cfg.dropout,
            target_modules=lora_targets(model, lora_cfg.target_modules),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)


@contextlib.contextmanager
def quiet_peft_deprecations():
    """peft reads transformers' `is_gradient_checkpointing`, which transformers 5.24 deprecates: the
    warning is about peft's code, not the user's, so it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


@contextlib.contextmanager
def merged_lora(model, enabled: bool = True):
    """The LoRA adapters merged into the base weights while inside (peft's merge_adapter, in place),
    unmerged after: a decoding step then runs one matmul per adapted layer instead of three and
    skips the adapter's per-layer work (opt-in in `generate`: see its `merge_lora`). Yields whether
    it merged. Only where unmerging gives the weights back: float32 base weights
    held whole by this process (not bf16 / fp16, which would come back changed by up to an ulp of
    their own, 0.4%; not 4-bit, not FSDP or ZeRO-3 shards). In float32 unmerging rounds too: about
    one weight in ten comes back one float32 ulp (~1e-7 relative) off."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)] if enabled and is_peft(model) else []
    weights = [layer.get_base_layer().weight for layer in layers]
    if not layers or any(layer.merged for layer in layers) or not all(
            type(w.data) is torch.Tensor and w.dtype == torch.float32 and w.numel() > 0 for w in weights):
        yield False
        return
    with torch.no_grad():
        model.merge_adapter()
    try:
        yield True
    finally:
        with torch.no_grad():
            model.unmerge_adapter()


def save_merged(model, tokenizer, out_dir: Path, model_cfg=None) -> None:
    """Weights loadable by plain transformers: the LoRA adapter merged into the base.

    With `model_cfg` (the run's model section) the live model is left as it is. On an accelerator
    the base is loaded afresh on the CPU, unquantised (bfloat16 for a QLoRA run, else the run's
    dtype), and the trained adapter is merged there: the live model on the GPU is neither copied
    (which doubled its memory at the end of a run) nor, for QLoRA, merged into 4-bit weights that
    would be re-quantised and saved as a bitsandbytes checkpoint. On the CPU the saved model shares
    the live model's base weights, and only the adapted layers' merged weights are new (a fresh copy
    would hold the whole model twice in RAM). Without it (a model that is a copy already) the
    adapter is merged in place."""
    if not is_peft(model):
        save_model(model, tokenizer, out_dir)
        return
    if model_cfg is None:
        save_model(model.merge_and_unload(), tokenizer, out_dir)
        return
    seq_cls = str(getattr(model.peft_config["default"], "task_type", "")).endswith("SEQ_CLS")
    if not model_cfg.load_in_4bit and (seq_cls or all(p.device.type == "cpu" for p in model.parameters())):
        # A reward model's head is not a causal LM's: it is merged on the live weights on any device.
        save_model(merged_on_live_weights(model), tokenizer, out_dir)
        return
    from dataclasses import replace

    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    adapter = {name: tensor.detach().to("cpu") for name, tensor in get_peft_model_state_dict(model).items()}
    dtype = "bfloat16" if model_cfg.load_in_4bit else model_cfg.dtype
    base = load_model(replace(model_cfg, load_in_4bit=False, dtype=dtype), None, for_training=False)
    with quiet_peft_deprecations():
        fresh = get_peft_model(base, model.peft_config["default"])
    set_peft_model_state_dict(fresh, adapter)
    merged = fresh.merge_and_unload()
    merged.generation_config = model.generation_config
    save_model(merged, tokenizer, out_dir)


def merged_on_live_weights(model):
    """A plain transformers model holding `model`'s base weights (the same tensors, not copies),
    except that each LoRA layer's weight is base + the adapter's delta (a new tensor): the merged
    model, for saving, at the memory of the adapted layers alone. `model` is left unchanged."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    base = model.get_base_model()
    state = {}
    wrapped = ("lora_", ".base_layer.", ".original_module.", ".modules_to_save.")
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                layer = module.get_base_layer()
                delta = module.get_delta_weight(model.active_adapter)
                state[f"{name}.weight"] = layer.weight.detach() + delta.to(layer.weight.dtype)
                if getattr(layer, "bias", None) is not None:
                    state[f"{name}.bias"] = layer.bias.detach()
            elif isinstance(module, ModulesToSaveWrapper):  # trained whole, e.g. a reward model's score head
                trained = module.modules_to_save[model.active_adapter]
                state.update({f"{name}.{key}": t.detach() for key, t in trained.named_parameters()})
        for name, tensor in base.named_parameters():
            if not any(part in name for part in wrapped):
                state[name] = tensor.detach()
    with torch.device("meta"):
        # The base's own class: a causal LM, or a sequence classifier (`alignlab rm`).
        plain = type(base)._from_config(base.config)
    plain.load_state_dict(state, strict=False, assign=True)
    plain.tie_weights()  # the LM head of a tied model is the embedding again
    missing = [name for name, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise AlignlabError(f"merging the adapter for saving left {missing[:3]} without weights")
    if getattr(base, "generation_config", None) is not None:  # a sequence classifier has none
        plain.generation_config = model.generation_config
    return plain


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def model_slug(name_or_path: str) -> str:
    return Path(name_or_path.rstrip("/")).name.replace(".", "-") or "model"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
