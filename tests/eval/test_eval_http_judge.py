"""The OpenAI-compatible HTTP judge against a local server: protocol, retry on 429, cache, key handling."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from safeft.eval.judge_prompts import JUDGE_PROMPTS
from safeft.eval.judges import HttpJudge, parse_score


class _Server:
    def __init__(self):
        self.requests, self.auth, self.fail_first, self.prompts = 0, [], 1, []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                state.requests += 1
                state.auth.append(self.headers.get("Authorization"))
                assert self.path == "/v1/chat/completions" and body["messages"][0]["role"] == "user"
                if state.fail_first > 0:
                    state.fail_first -= 1
                    self.send_response(429)
                    self.end_headers()
                    return
                text = body["messages"][0]["content"]
                state.prompts.append(text)
                score = 5 if 'Model Response: "Sure' in text else 1
                reply = "no score given" if 'Model Response: "Unclear' in text else f"#thereason: ...\n#thescore: {score}"
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()


def test_parse_score():  # the first score, as both references read it
    assert parse_score("bla #thescore: 4") == 4 and parse_score("#thescore: 2 ... #thescore:5") == 2
    assert parse_score("no score") is None and parse_score("#thescore: 9") is None


def test_http_judge_retries_caches_and_hides_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEFT_TEST_JUDGE_KEY", "sk-secret-123")
    cache = tmp_path / "eval" / "judge_cache.jsonl"
    qs = ["harmful A", "harmful B", "harmful A"]
    cs = ["Sure, here is how", "I cannot help", "Sure, here is how"]
    judge = HttpJudge(server.url, "gpt-judge", "SAFEFT_TEST_JUDGE_KEY", str(cache), concurrency=1, backoff_s=0.01)
    name, items, m = judge.judge(qs, cs)
    assert name == "http[qi]:gpt-judge" and [i["http_score"] for i in items] == [5, 1, 5]
    # the PTST / Qi et al. rubric as published, with the reference's `template % (instruction, response)`
    assert server.prompts[0] == JUDGE_PROMPTS["qi"] % ("harmful A", "Sure, here is how")
    assert m["http_asr"] == pytest.approx(2 / 3) and m["http_mean_score"] == pytest.approx(11 / 3)
    assert server.requests == 3  # one 429, then one request per distinct item (the duplicate hits the cache)
    assert set(server.auth) == {"Bearer sk-secret-123"}
    again = HttpJudge(server.url, "gpt-judge", "SAFEFT_TEST_JUDGE_KEY", str(cache), backoff_s=0.01)
    assert again.judge(qs, cs)[2] == m and server.requests == 3  # a rerun pays nothing
    assert "sk-secret" not in cache.read_text()
    other = HttpJudge(server.url, "other-judge", "SAFEFT_TEST_JUDGE_KEY", str(cache), backoff_s=0.01)
    other.judge(qs[:1], cs[:1])
    assert server.requests == 4  # the judge model is part of the cache key


def test_http_asr_counts_parsed_replies_only(server, tmp_path):
    server.fail_first = 0
    judge = HttpJudge(server.url, "j", "", str(tmp_path / "c.jsonl"), backoff_s=0.01, prompt="lookahead")
    name, items, m = judge.judge(["a", "b", "c"], ["Sure, here", "I cannot", "Unclear"])
    assert name == "http[lookahead]:j" and [i["http_score"] for i in items] == [5, 1, None]
    assert m["http_asr"] == pytest.approx(1 / 2) and m["http_unparsed"] == 1
    assert "11 prohibited use cases" in server.prompts[0]


def test_http_judge_gives_up_with_clear_error(server, tmp_path):
    from safeft.errors import SafeftError

    server.fail_first = 10
    judge = HttpJudge(server.url, "j", "", str(tmp_path / "c.jsonl"), retries=2, backoff_s=0.01)
    with pytest.raises(SafeftError, match="answered HTTP 429"):
        judge.judge(["q"], ["c"])
    assert server.requests == 3
