"""Utility scorers: GSM8K exact match (three modes), SAMSum ROUGE-1, generic exact/contains.

GSM8K modes (each item stores all three):
- `exact_match_lookahead`: reference-compatible with LookAhead Tuning's calculate_utility.py: the text after
  the LAST '####', stripped, commas removed, compared as a STRING with the gold number taken the same way
  ('#### 18' right; '#### $18', '#### 18.', '#### 18.00', '#### 18 dollars' wrong).
- `exact_match_strict` (lenient strict, safeft's default): the first number after the last '####' ('####18'
  accepted), '$' ',' and a trailing '.' removed, compared as numbers; it scores >= the reference scorers
  (svd's gsm8k_eval.py takes the FIRST '#### <number>' and needs the space).
- `exact_match_flexible`: the last number anywhere in the text (no reference; the project's convention).

Every scorer returns per-item scores (stored beside each completion) and an aggregate dict whose keys
become `<task>.<metric>` in summary.json.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Optional

NUMBER = re.compile(r"-?[$]?\s*-?\d[\d,]*(?:\.\d+)?|-?[$]?\s*-?\.\d+")


def normalize_number(text: str) -> Optional[Decimal]:
    """'$1,234.50.' -> Decimal('1234.50'); None when no number is left."""
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def _numbers(text: str) -> list[str]:
    return [m.group(0) for m in NUMBER.finditer(text)]


def gsm8k_strict(completion: str) -> Optional[Decimal]:
    """The number right after the last '####' (None if there is no '####' or no number after it)."""
    if "####" not in completion:
        return None
    nums = _numbers(completion.rsplit("####", 1)[1])
    return normalize_number(nums[0]) if nums else None


def gsm8k_flexible(completion: str) -> Optional[Decimal]:
    """The last number anywhere in the text."""
    nums = _numbers(completion)
    return normalize_number(nums[-1]) if nums else None


def gsm8k_reference(answer: str) -> Optional[Decimal]:
    """The gold number of a GSM8K answer ('... #### 72'); a bare number is accepted too."""
    return gsm8k_strict(answer) if "####" in answer else normalize_number(answer)


def gsm8k_lookahead(text: str) -> Optional[str]:
    """LookAhead's `extract_final_number`: the string after the last '####', stripped, commas removed."""
    return text.split("####")[-1].strip().replace(",", "") if "####" in text else None


def score_gsm8k(completions: list[str], references: list[str]) -> tuple[list[dict], dict]:
    items = []
    for completion, reference in zip(completions, references):
        gold = gsm8k_reference(reference)
        strict, flexible = gsm8k_strict(completion), gsm8k_flexible(completion)
        gold_text = gsm8k_lookahead(reference) if "####" in reference else reference.strip().replace(",", "")
        items.append({
            "lookahead": float(gsm8k_lookahead(completion) == gold_text),
            "pred_strict": None if strict is None else str(strict),
            "pred_flexible": None if flexible is None else str(flexible),
            "gold": None if gold is None else str(gold),
            "strict": float(gold is not None and strict == gold),
            "flexible": float(gold is not None and flexible == gold),
        })
    return items, {"exact_match_strict": _mean(i["strict"] for i in items),
                   "exact_match_flexible": _mean(i["flexible"] for i in items),
                   "exact_match_lookahead": _mean(i["lookahead"] for i in items)}


def score_rouge1(completions: list[str], references: list[str]) -> tuple[list[dict], dict]:
    """Mean per-sample ROUGE-1 F1 with stemming, x100 (the rouge-score package's scorer)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    items = [{"rouge1": scorer.score(ref, pred)["rouge1"].fmeasure * 100.0}
             for pred, ref in zip(completions, references)]
    return items, {"rouge1": _mean(i["rouge1"] for i in items)}


def score_generic(completions: list[str], references: list[str]) -> tuple[list[dict], dict]:
    items = []
    for pred, ref in zip(completions, references):
        p, r = pred.strip(), str(ref).strip()
        items.append({"exact_match": float(p == r), "contains": float(bool(r) and r in p)})
    return items, {"exact_match": _mean(i["exact_match"] for i in items),
                   "contains": _mean(i["contains"] for i in items)}


UTILITY_SCORERS = {"gsm8k": score_gsm8k, "samsum": score_rouge1, "generic": score_generic}
# The metric names each scorer reports (checked against the scorers by a test), for validating gates early.
UTILITY_METRICS = {"gsm8k": ("exact_match_strict", "exact_match_flexible", "exact_match_lookahead"),
                   "samsum": ("rouge1",),
                   "generic": ("exact_match", "contains"),
                   "answer-loss": ("answer_loss", "answer_loss_tokens")}  # scored in safeft.eval.runner


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
