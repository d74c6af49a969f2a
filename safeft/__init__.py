"""safeft: full-parameter fine-tuning of chat LLMs that keeps their safety alignment (PTST, LookAhead)."""

__version__ = "0.1.0"
