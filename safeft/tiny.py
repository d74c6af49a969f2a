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
