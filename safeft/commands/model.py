"""`safeft model import FILE.gguf [OUT]`, `safeft model list`: real models from GGUF files (safeft.model_import)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("model", help="import a GGUF model (or a named default) as a plain Hugging Face directory")
    actions = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    i = actions.add_parser("import", help="GGUF file -> HF directory (float32 safetensors, tokenizer, chat template, "
                                          "generation_config with every end id); checked, cached by the file's hash")
    i.add_argument("source", metavar="FILE_OR_NAME", help="a .gguf file, or a named default (safeft model list)")
    i.add_argument("out", metavar="OUT", nargs="?", default=None,
                   help="output directory (default: the model cache, $SAFEFT_MODEL_CACHE or ~/.cache/safeft/models)")
    i.add_argument("--force", action="store_true", help="import again even if OUT holds this file's import")
    i.set_defaults(func=_import)
    ls = actions.add_parser("list", help="the named defaults and where each comes from")
    ls.set_defaults(func=_list)


def _import(args) -> int:
    import json
    import os

    from safeft.model_import import IMPORT_RECORD, NAMED_MODELS, import_gguf, named_gguf

    source = named_gguf(args.source) if args.source in NAMED_MODELS else args.source
    out = import_gguf(source, args.out, force=args.force)
    with open(os.path.join(out, IMPORT_RECORD), encoding="utf-8") as f:
        record = json.load(f)
    print(f"{out}\n  {record['architecture']}, {record['parameters'] / 1e6:.1f}M parameters, float32 "
          f"(from {', '.join(f'{k} x{v}' for k, v in record['tensor_types'].items())}); end ids {record['end_ids']}; "
          f"checks: special tokens ok, chat template {record['checks']['chat_template']}\n"
          "  note: the quantization rounding is permanent (dequantized, not the released weights)")
    return 0


def _list(args) -> int:
    from safeft.errors import SafeftError
    from safeft.model_import import NAMED_MODELS, named_gguf

    for name, spec in NAMED_MODELS.items():
        try:
            where = named_gguf(name)
        except SafeftError:
            where = f"not installed: {spec.install}"
        print(f"{name}\n  file: {where}\n  full precision (hub): {spec.hub}")
    return 0
