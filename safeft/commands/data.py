"""`safeft data prepare CONFIG [--out DIR]` and `safeft data preview CONFIG [-n 3]`."""

from __future__ import annotations

import sys


def register(sub) -> None:
    from safeft.cli import add_config_args

    p = sub.add_parser("data", help="prepare (tokenise + pack) or preview the training data of a config")
    group = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = group.add_parser("prepare", help="build the packed training set and stats.json (cached by fingerprint)")
    add_config_args(prep)
    prep.add_argument("--out", default=None, metavar="DIR", help="output directory (default: data.cache_dir/<key>)")
    prep.set_defaults(func=_prepare)
    prev = group.add_parser("preview", help="show rendered training examples with the trained span marked")
    add_config_args(prev)
    prev.add_argument("-n", type=int, default=3, help="how many examples (default 3)")
    prev.add_argument("--plain", action="store_true", help="mark trained spans with [[...]] even on a terminal")
    prev.set_defaults(func=_preview)


def _prepare(args) -> int:
    from safeft.config import load_config
    from safeft.data.pipeline import prepare

    cfg = load_config(args.config, args.overrides)
    prepared = prepare(cfg, out_dir=args.out)
    s = prepared.stats
    skipped = f" ({', '.join(f'{k} {v}' for k, v in s['skipped_by_reason'].items())})" if s["skipped"] else ""
    dropped = f" ({', '.join(f'{k} {v}' for k, v in s['dropped_by_reason'].items())})" if s["dropped"] else ""
    print(f"data: {prepared.path}")
    print(f"  fingerprint {s['fingerprint']}  template {s['train_template']}  lookahead {s['lookahead']}")
    print(f"  examples {s['examples']}  skipped {s['skipped']}{skipped}  truncated {s['truncated']}  "
          f"dropped {s['dropped']}{dropped}")
    if s.get("last_turn_only"):
        print(f"  {s['last_turn_only']} multi-turn examples train their last answer only: the chat template renders "
              "earlier answers differently as history (safeft/data/tokenize.py)")
    print(f"  rows {s['rows']} x {s['max_seq_len']}  tokens {s['tokens']}  loss tokens {s['loss_tokens']}  "
          f"packing efficiency {100 * s['packing_efficiency']:.2f}%  ({s['elapsed_s']:.1f}s to build)")
    return 0


def _preview(args) -> int:
    from safeft.config import load_config
    from safeft.data.pipeline import _load_tokenizer
    from safeft.data.preview import plain, preview_examples, rich_text
    from safeft.errors import SafeftError

    if args.n < 1:
        raise SafeftError(f"-n {args.n}: expected at least 1 example")
    cfg = load_config(args.config, args.overrides).single("data preview")
    tokenizer = _load_tokenizer(cfg)
    use_rich = sys.stdout.isatty() and not args.plain
    console = None
    if use_rich:
        from rich.console import Console

        console = Console()
    for item in preview_examples(cfg, args.n, tokenizer):
        ex, enc = item["example"], item["encoded"]
        head = f"--- {ex.source} #{ex.index}  ({item['tokens']} tokens, template {cfg.template.train}, " \
               f"lookahead {cfg.lookahead.mode})"
        if enc is None:
            print(head + ": dropped by the length policy")
            continue
        if enc.truncated:
            head += f", truncated to {cfg.data.max_seq_len}"
        if console is not None:
            console.print(head, style="bold")
            console.print(rich_text(tokenizer, enc.input_ids, enc.labels))
        else:
            print(head)
            print(plain(tokenizer, enc.input_ids, enc.labels))
    return 0
