"""The judge client against a fake OpenAI-compatible server on localhost: errors, retries, cache."""

from types import SimpleNamespace

import pytest
import torch

from recexplainer.explain.judge import JudgeCache, LocalJudge, OpenAIJudge, parse_score, rubric_prompt

from .helpers import FakeServer


@pytest.fixture
def server_factory():
    servers = []

    def make(script, default="2"):
        servers.append(FakeServer(script, default))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _judge(url, tmp_path, **kwargs):
    defaults = dict(
        concurrency=2, max_retries=3, backoff_s=0.01, timeout_s=0.2, cache=JudgeCache(tmp_path / "c.jsonl")
    )
    return OpenAIJudge(url, "fake-model", **(defaults | kwargs))


@pytest.mark.parametrize(
    "reply, score",
    [
        ("2", 2),
        (" 3\n", 3),
        ("Score: 1", 1),
        ("**0**", 0),
        ("2/3", 2),
        ("I'd say 2", None),
        ("4", None),
        ("", None),
    ],
)
def test_parse_score_is_strict(reply, score):
    assert parse_score(reply) == score


def test_retries_transient_errors_and_reminds_once_on_garbage(server_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-secret-123")
    server = server_factory([429, 500, "garbage", "I think it is good", "3"])
    judge = _judge(server.url, tmp_path, concurrency=1, api_key_env="FAKE_JUDGE_KEY")
    result = judge.judge_one(rubric_prompt(True, ["A", "B"], "C", "because A"))
    assert (result.score, result.error) == (3, None)
    assert judge.stats["retries"] == 3 and judge.stats["failures"] == 0
    assert server.requests[-1]["body"]["messages"][-1]["content"].startswith("Reply with a single digit")
    assert server.requests[0]["auth"] == "Bearer sk-secret-123"
    assert "sk-secret" not in (tmp_path / "c.jsonl").read_text()  # the key is never written


def test_cache_makes_reruns_free_and_failures_are_counted_not_raised(server_factory, tmp_path):
    server = server_factory([], default="1")
    prompts = [rubric_prompt(i % 2 == 0, ["A"], f"Item {i}", "text") for i in range(6)]
    first = _judge(server.url, tmp_path).judge_all(prompts)
    assert [j.score for j in first] == [1] * 6
    n = len(server.requests)
    again = _judge(server.url, tmp_path)  # a new process: cache from disk
    assert [j.score for j in again.judge_all(prompts)] == [1] * 6
    assert len(server.requests) == n and again.stats["cached"] == 6

    down = _judge("http://127.0.0.1:9/v1", tmp_path, cache=None, max_retries=1)  # unreachable
    results = down.judge_all(prompts[:2])
    assert all(r.score is None and "unreachable" in r.error for r in results)
    assert down.stats["failures"] == 2


def test_timeouts_and_unparsable_replies_are_counted(server_factory, tmp_path):
    server = server_factory(["sleep", "sleep", "nochoices", "nochoices"], default="maybe")
    judge = _judge(server.url, tmp_path, concurrency=1, max_retries=1, cache=None)
    timed_out = judge.judge_one("p1")
    assert timed_out.score is None and judge.stats["failures"] == 1
    bad = judge.judge_one("p2")  # no choices twice: failure
    assert bad.score is None
    unparsable = judge.judge_one("p3")  # 'maybe', reminder, 'maybe'
    assert unparsable.score is None and unparsable.error == "unparsable reply"
    assert judge.stats["unparsable"] == 1


class _FakeLM(torch.nn.Module):
    """Next-token logits favouring one token; ``generate`` appends fixed tokens."""

    def __init__(self, vocab: int, favoured: int, generated: list[int]):
        super().__init__()
        self.vocab, self.favoured, self.generated = vocab, favoured, generated
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        logits[0, -1, self.favoured] = 5.0
        return SimpleNamespace(logits=logits)

    def generate(self, input_ids, attention_mask=None, **kwargs):
        return torch.cat([input_ids, torch.tensor([self.generated])], dim=1)


def test_local_judge_scores_by_digit_tokens_or_parses_free_text(tmp_path):
    from recexplainer.llm.loading import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    two = tokenizer("2", add_special_tokens=False)["input_ids"][0]
    garbage = tokenizer(" The explanation is", add_special_tokens=False)["input_ids"]
    prompt = rubric_prompt(True, ["A", "B"], "C", "Yes, because it is like A.")

    lm = _FakeLM(len(tokenizer), favoured=two, generated=garbage)
    digits = LocalJudge(lm, tokenizer, "fake", cache=JudgeCache(tmp_path / "local.jsonl"))
    judgment = digits.judge_one(prompt)
    assert judgment.score == 2 and digits.name == "local:fake:digits"

    free = LocalJudge(lm, tokenizer, "fake", constrained=False, cache=None)
    judgment = free.judge_one(prompt)  # the free reply is not a score: one reminder, then counted
    assert judgment.score is None and judgment.error == "unparsable reply"
    assert judgment.reply.strip() == "The explanation is"
    assert free.stats["unparsable"] == 1 and free.stats["requests"] == 2 and free.name == "local:fake"


def test_unparsable_replies_are_cached_and_reasked_only_on_request(server_factory, tmp_path):
    server = server_factory([], default="maybe")
    first = _judge(server.url, tmp_path, concurrency=1).judge_one("p")  # 'maybe', reminder, 'maybe'
    assert first.score is None and first.reply == "maybe" and len(server.requests) == 2
    again = _judge(server.url, tmp_path, concurrency=1)  # a rerun: the cached reply, no request
    cached = again.judge_one("p")
    assert (cached.score, cached.reply, cached.cached) == (None, "maybe", True)
    assert len(server.requests) == 2 and again.stats["unparsable"] == 1
    retry = _judge(server.url, tmp_path, concurrency=1, retry_unparsable=True)
    assert retry.judge_one("p").score is None and len(server.requests) == 4  # asked again


def test_a_failed_request_is_not_an_unparsable_reply():
    from recexplainer.explain.judge import Judgment

    assert Judgment(None, None, error="TransientError: HTTP 500 from the judge endpoint").failed
    assert not Judgment(None, "I would say good", error="unparsable reply").failed
    assert not Judgment(None, "", error="unparsable reply (cached)", cached=True).failed
    assert not Judgment(2, "2").failed
