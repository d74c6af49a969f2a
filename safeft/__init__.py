"""safeft: full-parameter fine-tuning of chat LLMs that keeps their safety alignment (PTST, LookAhead)."""

from pathlib import Path

__version__ = "0.1.0"
REPO = Path(__file__).resolve().parents[1]  # the checkout the package runs from: configs/, bench/, .venv beside it
