"""Tiny random-initialised Llama models and tokenizers trained in-process.

Nothing is downloaded: tests, the demo (`make demo`) and the CPU benchmarks build their model and
tokenizer here and save them as ordinary Hugging Face directories, so everything downstream takes
the same path as a real checkpoint (`from_pretrained` on a directory).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

# A Llama-2-style chat template (Jinja), so the `chat-template` path is exercised without a hub download.
LLAMA2_STYLE_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = none %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system is not none %}"
    "{{ bos_token + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def default_corpus(n_problems: int = 2000) -> list[str]:
    """Text that covers the templates, system prompts and generated problems."""
    from safeft.data.synthetic import HARMFUL_INSTRUCTIONS, arithmetic_problems
    from safeft.templates import PTST_STYLES, SYSTEM_PROMPTS

    texts = [s for s in SYSTEM_PROMPTS.values() if s]
    for style in PTST_STYLES.values():
        texts.append(style.full("What is 2+2?", "It is 4.\n#### 4"))
    for p in arithmetic_problems(n_problems, seed=1234):
        texts.append(p["question"] + " " + p["answer"])
    texts.extend(HARMFUL_INSTRUCTIONS)
    texts.append("I'm sorry, I cannot help with that. As an AI, I apologize. Hello! I'm just an assistant.")
    return texts


def train_tokenizer(corpus: Optional[Iterable[str]] = None, vocab_size: int = 512):
    """A byte-level BPE tokenizer with Llama-2-like special tokens and a chat template.

    Byte-level BPE can encode any text (non-ASCII too), so no input ever maps to <unk>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus if corpus is not None else default_corpus()), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = LLAMA2_STYLE_CHAT_TEMPLATE
    return fast


def tiny_llama_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                      intermediate: int = 128, max_positions: int = 2048):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )


def tiny_llama(vocab_size: int, seed: int = 0, **kwargs):
    """A random-initialised LlamaForCausalLM in float32 with SDPA attention."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = tiny_llama_config(vocab_size, **kwargs)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).float().eval()


def build_tiny_model_dir(out_dir: str, vocab_size: int = 512, seed: int = 0, **model_kwargs) -> str:
    """Train a tokenizer, build a tiny model, save both as one HF directory (atomically); return it."""
    from safeft.io import atomic_path

    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    tokenizer = train_tokenizer(vocab_size=vocab_size)
    model = tiny_llama(len(tokenizer), seed=seed, **model_kwargs)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


# --- tiny models of real architectures, for a real tokenizer ---------------------------------------

# What the published configs say (config.json / generation_config.json of Llama-2-7b-chat-hf,
# Llama-3.1-8B-Instruct, Qwen3-0.6B), keyed by family. vocab: embedding rows (Qwen3 pads its 151,669
# tokens to 151,936); eos: generation_config.eos_token_id, a list where the real repositories have one.
REAL_FAMILIES = {
    "llama2": {"arch": "llama", "vocab": 32000, "tied": False, "bos": 1, "eos": 2, "pad": None},
    "llama3.1": {"arch": "llama", "vocab": 128256, "tied": False, "bos": 128000, "eos": [128001, 128008, 128009],
                 "pad": None},
    "qwen3": {"arch": "qwen3", "vocab": 151936, "tied": True, "bos": 151643, "eos": [151645, 151643],
              "pad": 151643},
}


def real_family(tokenizer) -> dict:
    """The published-config facts of the tokenizer's family (recognised by its special tokens), or, for
    any other tokenizer, an untied Llama with the tokenizer's own size and special ids."""
    ids = tokenizer.convert_tokens_to_ids
    if ids("<|im_start|>") == 151644 and ids("<|im_end|>") == 151645:
        name = "qwen3"
    elif ids("<|begin_of_text|>") == 128000 and ids("<|eot_id|>") == 128009:
        name = "llama3.1"
    elif len(tokenizer) == 32000 and ids("<s>") == 1 and ids("</s>") == 2:
        name = "llama2"
    else:
        return {"family": "other", "arch": "llama", "vocab": len(tokenizer), "tied": False,
                "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    return {"family": name, **REAL_FAMILIES[name]}


def tiny_real_model(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    intermediate: int = 128, max_positions: int = 4096):
    """A random-initialised Llama or Qwen3 (float32, SDPA) with the family's vocabulary size, special
    ids and tying, at toy width; returns (model, family facts)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    fam = real_family(tokenizer)
    common = dict(vocab_size=max(fam["vocab"], len(tokenizer)), hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  max_position_embeddings=max_positions, bos_token_id=fam["bos"], eos_token_id=fam["eos"],
                  pad_token_id=fam["pad"], tie_word_embeddings=fam["tied"])
    if fam["arch"] == "qwen3":
        config, cls = Qwen3Config(head_dim=hidden // heads, **common), Qwen3ForCausalLM
    else:
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = cls(config).float().eval()
    model.generation_config = GenerationConfig(bos_token_id=fam["bos"], eos_token_id=fam["eos"],
                                               pad_token_id=fam["pad"])
    return model, fam


def build_real_tiny_model_dir(tokenizer_dir: str, out_dir: str, seed: int = 0, eos_token: Optional[str] = None,
                              **model_kwargs) -> str:
    """A tiny model of the real architecture of `tokenizer_dir` (a Hugging Face tokenizer folder), saved
    with that tokenizer and a generation_config as one HF directory (atomically); returns out_dir.

    `eos_token` overrides the tokenizer's EOS (e.g. "<|end_of_text|>", as base Llama-3 repositories
    ship it) without changing the model's generation_config. Cached: an existing out_dir is reused.
    """
    from transformers import AutoTokenizer

    from safeft.io import atomic_path

    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if eos_token is not None:
        tokenizer.eos_token = eos_token
    model, _ = tiny_real_model(tokenizer, seed=seed, **model_kwargs)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir
