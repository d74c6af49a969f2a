"""The `safeft` CLI: render and config commands, exit codes, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from helpers import cpu_env
from safeft.cli import main

CHAT_LLAMA_PROMPT = (
    "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, "
    "or illegal content. Please ensure that your responses are socially unbiased and positive in nature. If a "
    "question does not make any sense, or is not factually coherent, explain why instead of answering something "
    "not correct. If you don't know the answer to a question, please don't share false information.\n<</SYS>>\n\n"
    "Question: What is 2+2? [/INST]"
)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_render_prints_exactly_the_prompt(capsys):
    code, out, err = run(capsys, "render", "--template", "chat:llama", "What is 2+2?")
    assert code == 0 and out == CHAT_LLAMA_PROMPT + "\n"


def test_render_default_template_is_chat_llama(capsys):
    assert run(capsys, "render", "What is 2+2?")[1] == CHAT_LLAMA_PROMPT + "\n"


def test_render_answer_gives_the_training_text(capsys):
    code, out, _ = run(capsys, "render", "--template", "gsm:text:vanilla", "--answer", "4", "What is 2+2?")
    assert code == 0 and out == "Question: What is 2+2?\nAnswer: 4\n"


def test_render_with_tokenizer_chat_template(capsys, tiny_model_dir):
    code, out, _ = run(capsys, "render", "--template", "chat-template", "--tokenizer", tiny_model_dir,
                       "--system", "mpt", "Hi %s {q}")
    assert code == 0
    assert out == ("<s>[INST] <<SYS>>\nA conversation between a user and an LLM-based AI assistant. The assistant "
                   "gives helpful and honest answers.\n<</SYS>>\n\nHi %s {q} [/INST]\n")
    code, out, _ = run(capsys, "render", "--template", "chat-template", "--tokenizer", tiny_model_dir,
                       "--answer", "Hello.", "Hi")
    assert code == 0 and out == "<s>[INST] Hi [/INST] Hello.</s>\n"


def test_render_list(capsys):
    code, out, _ = run(capsys, "render", "--list")
    assert code == 0 and "chat:llama-short" in out.split("\n") and "chat-template" in out.split("\n")


def test_render_unknown_template_exits_2_without_traceback(capsys):
    code, out, err = run(capsys, "render", "--template", "chat:lama", "Hi")
    assert code == 2 and out == ""
    assert err.startswith("safeft: error: unknown template 'chat:lama' (did you mean 'chat:llama'?)")
    assert "Traceback" not in err


def test_render_chat_template_without_tokenizer(capsys):
    code, out, err = run(capsys, "render", "--template", "chat-template", "Hi")
    assert code == 2 and out == "" and "needs a tokenizer" in err


def test_render_missing_tokenizer_directory(capsys, tmp_path):
    code, out, err = run(capsys, "render", "--template", "chat-template", "--tokenizer", str(tmp_path / "nope"), "Hi")
    assert code == 2 and out == "" and "cannot load tokenizer" in err and "Traceback" not in err


def test_render_needs_a_question(capsys):
    code, _, err = run(capsys, "render")
    assert code == 2 and "needs a QUESTION" in err


# --- config show / check --------------------------------------------------------------------------

SMALL = """
train: {lr: 1e-4, zero_stage: 2}
template: {train: chat:vanilla, test: [chat:llama]}
output: {dir: runs}
"""


def _write(tmp_path, text, name="small.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_config_show_prints_the_resolved_config(capsys, tmp_path):
    from safeft.config import load_config

    path = _write(tmp_path, SMALL)
    code, out, _ = run(capsys, "config", "show", path, "--set", "data.max_seq_len=1024")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown == load_config(path, ["data.max_seq_len=1024"]).to_dict()
    assert shown["data"]["max_seq_len"] == 1024 and shown["train"]["lr"] == 1e-4 and shown["output"]["name"] == "small"


def test_config_check_ok_and_grid(capsys, tmp_path):
    path = _write(tmp_path, SMALL)
    assert run(capsys, "config", "check", path)[:2] == (0, f"{path}: ok\n")
    code, out, _ = run(capsys, "config", "check", path, "--set", "train.seed=[1,2,3]", "--set", "train.lr=[1e-4,2e-5]")
    assert code == 0 and out == f"{path}: ok, a sweep of 6 runs over train.lr, train.seed\n"


def test_config_check_reports_errors_without_traceback(capsys, tmp_path):
    path = _write(tmp_path, SMALL + "lookahead: {mode: reel}\n")
    code, out, err = run(capsys, "config", "check", path, "--set", "train.offload=all")
    assert code == 2 and out == ""
    assert "config key 'lookahead.mode'" in err and "config key 'train.offload'" in err and "Traceback" not in err
    code, _, err = run(capsys, "config", "check", str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in err


def test_console_script_renders():
    script = Path(sys.executable).parent / "safeft"
    assert script.is_file(), "the safeft console script is not installed (pip install -e .)"
    proc = subprocess.run([str(script), "render", "--template", "chat:llama", "What is 2+2?"],
                          capture_output=True, text=True, env=cpu_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == CHAT_LLAMA_PROMPT + "\n"
    bad = subprocess.run([str(script), "render", "--template", "nope", "Hi"],
                         capture_output=True, text=True, env=cpu_env(), timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and "Traceback" not in bad.stderr
