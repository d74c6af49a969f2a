"""The data steps, in order: load -> (lookahead preview) -> template -> tokenize -> pack; `pipeline` fuses them."""
