"""The model and data of bench/real_shape.py, built locally (no hub): Qwen2.5-0.5B's shape, random init.

- Model: Qwen2.5-0.5B's config (hidden 896, 14 heads, 2 KV heads, intermediate 4864, vocabulary
  151,936, tied embeddings, rope theta 1e6, RMS eps 1e-6) with `layers` of its 24 layers, random
  init (seed 0), float32. A random-init model almost never samples EOS (1 token in 151,936), so
  every completion would run to the length limit; a trained one stops at varied lengths, and
  that is what decides how much decoding a finished row costs. So the EOS row of the (tied)
  embedding is set to a multiple of the mean direction of the final hidden states, the multiple
  chosen so that at the median position EOS has probability `eos_rate`. Both sides load these files.
- Tokenizer: alignlab's tiny byte-level tokenizer (one token per byte, the chat template and
  specials of `alignlab.model.tiny`) with its vocabulary filled to 151,936 by tokens that encoding
  never produces (no merges) but that decode to bytes, so every sampled id decodes.
- DPO data: `num_pairs` pairs of ~140 tokens per sequence (a ~90-byte prompt of words, responses of
  ~45 bytes), as alignlab rows and as TRL rows (prompt rendered by the chat template, responses
  ending with <|im_end|>: the same token ids). GRPO data: addition prompts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

VOCAB = 151_936
SHAPE = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
             vocab_size=VOCAB, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    from alignlab.model.tiny import CHAT_TEMPLATE, ROLE_TOKENS, SPECIAL_TOKENS, TASK_TOKENS

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    added = TASK_TOKENS + ROLE_TOKENS + SPECIAL_TOKENS
    i = 0
    while len(vocab) < VOCAB - len(added):  # 2- then 3-byte fillers: decodable, never produced by encoding
        token = alphabet[i % 256] + alphabet[(i // 256) % 256] + (alphabet[(i // 65536) % 256] if i >= 65536 else "")
        vocab.setdefault(token, len(vocab))
        i += 1
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_tokens(TASK_TOKENS + ROLE_TOKENS)
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, padding_side="left", chat_template=CHAT_TEMPLATE, model_max_length=32768)


def build_model_dir(out: Path, layers: int, eos_rate: float, seed: int = 0) -> dict:
    """Write the model and tokenizer to `out` (kept if already there); returns their description."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    info_file = out / "real_shape.json"
    if info_file.is_file():
        return json.loads(info_file.read_text())
    tokenizer = build_tokenizer()
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=layers, **SHAPE, **ids)).eval()
    model.generation_config = GenerationConfig(**ids)
    scale = calibrate_eos(model, tokenizer, eos_rate)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"layers": layers, "parameters": sum(p.numel() for p in model.parameters()), "eos_rate": eos_rate,
            "eos_scale": scale, "seed": seed}
    info_file.write_text(json.dumps(info))
    return info


def calibrate_eos(model, tokenizer, rate: float) -> float:
    """Set the EOS embedding row to c * (mean final hidden state direction), c such that EOS gets
    probability `rate` at the median position of prompts followed by random tokens."""
    import torch

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "37+48=?"}], add_generation_prompt=True,
                                           tokenize=True)["input_ids"]
    generator = torch.Generator().manual_seed(1)
    ids = torch.tensor([prompt + torch.randint(0, VOCAB, (40,), generator=generator).tolist() for _ in range(6)])
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[:, len(prompt):].reshape(-1, model.config.hidden_size)
        direction = hidden.mean(0) / hidden.mean(0).norm()
        logits = hidden @ model.lm_head.weight.T  # [positions, V]
        along = hidden @ direction

        def median_rate(c: float) -> float:
            scaled = logits.clone()
            scaled[:, eos] = c * along
            return float(scaled.softmax(-1)[:, eos].median())

        low, high = 0.0, 10.0
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if median_rate(mid) < rate else (low, mid)
        model.lm_head.weight[eos] = mid * direction  # tied: the input embedding of EOS too (never fed: masked)
    return mid


WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def write_data(work: Path, num_pairs: int, num_prompts: int, seed: int, tokenizer) -> dict:
    """DPO pairs (alignlab and TRL formats), GRPO prompts, and the GRPO reward file."""
    from alignlab.commands.demo.tasks import TASKS, make_splits, write_jsonl
    from alignlab.data.templates import Templater

    rng = random.Random(seed)
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    rows = [{"prompt": f"Summarise: {words(13)}.", "chosen": words(7), "rejected": words(7)} for _ in range(num_pairs)]
    templater = Templater(tokenizer)
    eos = tokenizer.eos_token

    def trl_row(row):
        def response(text):
            rendered = templater.response_text(row["prompt"], text)
            return rendered[: rendered.index(eos) + len(eos)]  # what alignlab trains: through <|im_end|>

        return {"prompt": templater.prompt_text(row["prompt"]), "chosen": response(row["chosen"]),
                "rejected": response(row["rejected"])}

    write_jsonl(rows, work / "dpo_ours.jsonl")
    (work / "dpo_trl.json").write_text(json.dumps([trl_row(r) for r in rows]))
    splits = make_splits(TASKS["addition"], seed)
    write_jsonl([{"prompt": r["prompt"], "answer": r["answer"]} for r in splits["train"][:num_prompts]], work / "prompts.jsonl")
    (work / "reward.py").write_text(REWARD)
    lengths = [len(templater.ids(templater.prompt_text(r["prompt"]) + templater.response_text(r["prompt"], r["chosen"])))
               for r in rows]
    prompt_lengths = [len(templater.ids(templater.prompt_text(r["prompt"]))) for r in rows]
    grpo_lengths = [len(templater.ids(templater.prompt_text(r["prompt"]))) for r in splits["train"][:64]]
    return {"pairs": len(rows), "tokens_per_sequence": sum(lengths) / len(lengths),
            "prompt_tokens": sum(prompt_lengths) / len(prompt_lengths), "grpo_prompt_tokens": sum(grpo_lengths) / 64,
            "example_ours": rows[0], "example_trl": trl_row(rows[0])}


# GRPO's reward, the same function on both sides: a random-init model writes no answers, so the
# task rewards would all be 0 (no advantage, no gradient); a hash of the text spreads them.
REWARD = '''import zlib


def spread(completions, **_):
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]  # TRL: conversational messages
    return [float(zlib.crc32(t.encode("utf-8", "replace")) % 1000) / 1000 for t in texts]
'''
