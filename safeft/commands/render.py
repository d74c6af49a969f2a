"""`safeft render --template NAME [--system S] [--tokenizer PATH] [--answer A] QUESTION`."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("render", help="print the exact prompt (or training text) a template produces")
    p.add_argument("question", nargs="?", metavar="QUESTION")
    p.add_argument("--template", default="chat:llama", help="template name (default chat:llama); --list shows all")
    p.add_argument("--system", default=None, help="chat-template only: none, llama2, llama2-short, mpt, alpaca or text")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or hub name (needed by chat-template)")
    p.add_argument("--answer", default=None, help="render the full training text for this answer")
    p.add_argument("--list", action="store_true", help="list template names and exit")
    p.set_defaults(func=_render)


def _render(args) -> int:
    from safeft.errors import SafeftError
    from safeft.templates import get_template, template_names

    if args.list:
        print("\n".join(template_names()))
        return 0
    if args.question is None:
        raise SafeftError("render needs a QUESTION (or --list)")
    tokenizer = None
    if args.tokenizer:
        from safeft.model import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    template = get_template(args.template, tokenizer=tokenizer, system=args.system)
    text = template.prompt(args.question) if args.answer is None else template.full(args.question, args.answer)
    sys.stdout.write(text + "\n")
    return 0
