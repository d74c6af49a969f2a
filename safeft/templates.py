"""Prompt templates: the PTST styles of Lyu et al. (2024), byte for byte, and model-native chat templates.

PTST = train with a template that has no safety system prompt, test with one. Train and test templates
are separate config fields (`template.train`, `template.test`) and every output records both.

A template turns a question into the prompt the model sees, and a (question, answer) pair into the
training text. The same objects render training data and evaluation prompts (harmful ones included).

    get_template("chat:llama").prompt("What is 2+2?")
    get_template("chat-template", tokenizer=tok, system="llama2").prompt("What is 2+2?")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from safeft.errors import TemplateError

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

ALPACA_SYS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
LLAMA_SYS = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature. If a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information."
)
LLAMA_SHORT_SYS = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."
)
MPT_SYS = "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers."

SYSTEM_PROMPTS = {
    "none": None,
    "llama2": LLAMA_SYS,
    "llama2-short": LLAMA_SHORT_SYS,
    "mpt": MPT_SYS,
    "alpaca": ALPACA_SYS,
}

ALPACA_BODY = "### Instruction:\n{q}\n\n### Response:\n"


@dataclass(frozen=True)
class PromptStyle:
    """One PTST style. `body` holds `{q}` where the question goes; `chat` wraps it in [INST] markers.

    The question is inserted with str.replace, never %-formatting or str.format, so '%', '{}' and
    newlines in a question survive verbatim.
    """

    name: str
    body: str
    system: Optional[str] = None  # the <<SYS>> block of a chat style
    chat: bool = True
    add_special_tokens = True  # the tokenizer adds BOS (and safeft adds EOS after answers)

    def _text(self, question: str, with_system: bool) -> str:
        body = self.body.replace("{q}", question, 1) if "{q}" in self.body else self.body
        if self.system is not None and with_system:
            body = B_SYS + self.system + E_SYS + body
        return f"{B_INST} {body} {E_INST}" if self.chat else body

    def prompt(self, question: str, first_turn: bool = True) -> str:
        """The prompt string (without BOS). Later turns of a conversation carry no system block."""
        return self._text(_check_str(question, "question"), with_system=first_turn)

    def separator(self) -> str:
        # A prompt that ends in a newline (alpaca) is followed directly by the answer; others by a space.
        return "" if self.prompt("").endswith("\n") else " "

    def full(self, question: str, answer: str, first_turn: bool = True) -> str:
        """The training text of one turn: prompt, separator, answer (BOS/EOS come from the tokenizer step)."""
        return self.prompt(question, first_turn) + self.separator() + _check_str(answer, "answer")


_QUESTION = "Question: {q}"
PTST_STYLES: dict[str, PromptStyle] = {
    s.name: s
    for s in [
        PromptStyle("text:vanilla", "Question: {q}\nAnswer:", chat=False),
        PromptStyle("text:alpaca", ALPACA_SYS + "\n\n" + ALPACA_BODY, chat=False),
        PromptStyle("chat:vanilla", _QUESTION),
        PromptStyle("chat:alpaca", ALPACA_BODY, system=ALPACA_SYS),
        PromptStyle("chat:llama", _QUESTION, system=LLAMA_SYS),
        PromptStyle("chat:llama-short", _QUESTION, system=LLAMA_SHORT_SYS),
        PromptStyle("chat:mpt", _QUESTION, system=MPT_SYS),
    ]
}
CHAT_TEMPLATE = "chat-template"


class ChatTemplate:
    """The tokenizer's own chat template (`apply_chat_template`), with or without a safety system prompt.

    This is how PTST applies to Llama-3, Mistral or Qwen: train with `system: none`, test with `llama2`.
    """

    add_special_tokens = False  # the rendered text already holds BOS and end-of-turn markers

    def __init__(self, tokenizer: Any, system: Optional[str] = "none"):
        if tokenizer is None:
            raise TemplateError("template 'chat-template' needs a tokenizer (--tokenizer PATH or model.tokenizer)")
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                f"template 'chat-template': tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat "
                "template; use a PTST style such as 'chat:vanilla' instead"
            )
        self.tokenizer = tokenizer
        self.system_name = system or "none"
        self.system = resolve_system(system)
        self.name = CHAT_TEMPLATE if self.system is None else f"{CHAT_TEMPLATE}:{self.system_name}"

    def messages(self, turns: list[tuple[str, Optional[str]]]) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system is not None else []
        for q, a in turns:
            msgs.append({"role": "user", "content": _check_str(q, "question")})
            if a is not None:
                msgs.append({"role": "assistant", "content": _check_str(a, "answer")})
        return msgs

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        # Templates with a thinking switch (Qwen3) get it off: the empty <think></think> block then ends
        # the prompt, so the trained answer and what the evaluator scores are the answer alone.
        extra = {"enable_thinking": False} if "enable_thinking" in (self.tokenizer.chat_template or "") else {}
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
            )
        except Exception as e:  # jinja errors, e.g. templates that reject a system role
            hint = (f" (a system prompt {self.system_name!r} is configured: template.train_system / "
                    "template.test_system 'none' leaves it out)") if self.system is not None else ""
            raise TemplateError(f"template '{self.name}': the tokenizer's chat template failed: {e}{hint}") from None

    def end_token_id(self) -> Optional[int]:
        """The special token the template puts right after an assistant answer (`<|eot_id|>`,
        `<|im_end|>`, `</s>`), or None when what follows is not a single special token. Cached."""
        if "_end" in self.__dict__:
            return self._end
        sentinel = "SAFEFT_ANSWER_END"
        text = self.render(self.messages([("Q", sentinel)]), add_generation_prompt=False)
        tail = text[text.rindex(sentinel) + len(sentinel):] if sentinel in text else ""
        ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
        special = set(self.tokenizer.all_special_ids) | {
            i for i, t in getattr(self.tokenizer, "added_tokens_decoder", {}).items() if t.special}
        self._end: Optional[int] = ids[0] if ids and ids[0] in special else None
        return self._end

    def prompt(self, question: str, history: tuple = ()) -> str:
        return self.render(self.messages(list(history) + [(question, None)]), add_generation_prompt=True)

    def full(self, question: str, answer: str) -> str:
        return self.render(self.messages([(question, answer)]), add_generation_prompt=False)


def resolve_system(system: Optional[str]) -> Optional[str]:
    """A system prompt name (none, llama2, llama2-short, mpt, alpaca) or literal text."""
    if system is None:
        return None
    return SYSTEM_PROMPTS[system] if system in SYSTEM_PROMPTS else system


def canonical_name(name: str) -> str:
    """'gsm:chat:llama' -> 'chat:llama'; other names unchanged."""
    return name[len("gsm:"):] if name.startswith("gsm:") else name


def is_template_name(name: str) -> bool:
    name = canonical_name(name)
    return name in PTST_STYLES or name == CHAT_TEMPLATE or name.startswith(CHAT_TEMPLATE + ":")


def template_names() -> list[str]:
    return list(PTST_STYLES) + [CHAT_TEMPLATE]


def get_template(name: str, tokenizer: Any = None, system: Optional[str] = None) -> PromptStyle | ChatTemplate:
    """Look a template up by name. `chat-template:llama2` is shorthand for chat-template with system llama2."""
    canon = canonical_name(name)
    if canon in PTST_STYLES:
        if system not in (None, "none"):
            raise TemplateError(
                f"template {name!r} has its system prompt built in; --system applies to 'chat-template' only"
            )
        return PTST_STYLES[canon]
    if canon == CHAT_TEMPLATE or canon.startswith(CHAT_TEMPLATE + ":"):
        inline = canon[len(CHAT_TEMPLATE) + 1:] or None
        return ChatTemplate(tokenizer, inline or system or "none")
    import difflib

    close = difflib.get_close_matches(canon, template_names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise TemplateError(f"unknown template {name!r}{hint}; known: {', '.join(template_names())}")


def _check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TemplateError(f"{what} must be a string, got {type(value).__name__}")
    return value
