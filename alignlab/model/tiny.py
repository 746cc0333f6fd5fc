"""The tiny offline model: a random-init Qwen2-architecture causal LM and a byte-level tokenizer.

Built entirely locally (no hub access) and saved in standard Hugging Face format, so plain
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` load it.

Tokenizer: one token per byte (so any Unicode text round-trips exactly and every digit is one
token), plus the tags our tasks use as single *non-special* tokens (they survive
`skip_special_tokens=True`), plus the chat markers as special tokens.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

from alignlab.errors import AlignlabError

# Single tokens that are text the model writes: task format tags (seed 004's <answer>, seed 000's \boxed{).
TASK_TOKENS = ["<answer>", "</answer>", "<think>", "</think>", "\\boxed{"]
# Chat roles as single tokens: halves the template's share of every short demo sequence.
ROLE_TOKENS = ["system", "user", "assistant"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, like Qwen's, but without a default system prompt: fewer tokens per example on CPU. Tools
# (their JSON schemas) are listed in one short system turn, name(arguments); a tool's result is a
# `tool` turn; the model calls a tool by writing <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\nTools:' }}"
    "{% for tool in tools %}{% set f = tool['function'] if 'function' in tool else tool %}"
    "{{ ' ' + f['name'] + '(' + (f['parameters']['properties'] | join(', ')) + ')' }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer():
    """A byte-level tokenizer with no merges: 256 byte tokens + task tags + chat specials."""
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins for raw bytes
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    # use_regex=False: never split text before mapping bytes, so no spaces are added or lost.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_tokens(TASK_TOKENS + ROLE_TOKENS)
    backend.add_special_tokens(SPECIAL_TOKENS)
    # padding_side must be given to the constructor: setting it afterwards is not saved (transformers 5).
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_model(tokenizer, *, layers: int = 4, hidden: int = 128, heads: int = 4, seed: int = 0):
    """A random-init Qwen2 causal LM sized by `layers` and `hidden` (defaults: about 1M parameters)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if hidden % heads:
        raise AlignlabError(f"hidden size {hidden} must be divisible by the number of heads {heads}")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    # A model built from a config gets a default generation config without our token ids.
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )
    return model


def write_tiny_model(out_dir: str | Path, *, layers: int = 4, hidden: int = 128, heads: int = 4, seed: int = 0) -> Path:
    """Build and save the tiny model and tokenizer to `out_dir`; returns the path."""
    from alignlab.model.run_files import save_model

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, layers=layers, hidden=hidden, heads=heads, seed=seed)
    save_model(model, tokenizer, out)
    return out
