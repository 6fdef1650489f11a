"""LLM judges of explanation quality: the paper's 0-3 rubric, scored by any OpenAI-compatible
chat-completions endpoint or by a local Hugging Face model.

- The API key is read from an environment variable (its *name* is configured) and goes only into the
  request header: never into configs, logs, caches or W&B.
- Strict parsing: the reply must be a score 0..3 (optionally "Score: N"); an unparsable reply gets one
  retry with a reminder, then counts as a failure.
- Transport errors, timeouts, 429 and 5xx are retried with exponential backoff (Retry-After honoured);
  requests run concurrently up to a limit.
- Judgments are cached on disk keyed by judge model and prompt: a rerun costs nothing and a killed run
  resumes. Failures are counted, never raised, and never cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recexplainer.text import DEFAULT_SEPARATOR, ChatFormatter, join_titles

log = logging.getLogger(__name__)

RUBRIC = """You grade an explanation of a recommender system's decision.
The recommender's decision: {decision}.
The user's history: {history}.
The item: {item}.
The explanation to grade: "{explanation}"

Score it from 0 to 3:
0 - the explanation's yes/no conclusion contradicts the recommender's decision;
1 - the conclusion matches, but the reasoning is missing, off-topic, or invents facts about the user or item;
2 - the conclusion matches and the reasoning is sensible, with small flaws;
3 - the conclusion matches and the reasoning summarises the user's tastes from the history and shows
    how the item fits or clashes with them.
The length of the explanation must not affect the score.
Reply with the score only: one digit from 0 to 3."""

REMINDER = "Reply with a single digit: 0, 1, 2 or 3."
_SCORE = re.compile(r"^\s*(?:score\s*[:=]?\s*)?\**([0-3])\**\s*(?:/\s*3)?\s*\.?\s*$", re.IGNORECASE)


def rubric_prompt(
    decision: bool, history: Sequence[str], item: str, explanation: str, separator: str = DEFAULT_SEPARATOR
) -> str:
    verdict = "yes, the user will like the item" if decision else "no, the user will not like the item"
    return RUBRIC.format(
        decision=verdict,
        history=join_titles(history, separator),
        item=item,
        explanation=explanation.replace('"', "'"),
    )


def parse_score(reply: str | None) -> int | None:
    """The score of a strict reply ('2', 'Score: 2', '**2**', '2/3'), else None."""
    if reply is None:
        return None
    match = _SCORE.match(reply.strip())
    return int(match.group(1)) if match else None


@dataclass
class Judgment:
    score: int | None
    reply: str | None
    error: str | None = None
    cached: bool = False

    @property
    def failed(self) -> bool:
        """The request itself failed (no reply after the retries), as opposed to an unparsable reply."""
        return self.error is not None and self.reply is None


class JudgeCache:
    """Append-only JSON lines of judgments, keyed by sha256(judge model, prompt). Unparsable replies are
    kept too (score None, with the reply): a deterministic judge would say the same again."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self._entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError):
                    continue  # a torn line from a kill mid-write

    @staticmethod
    def key(model: str, prompt: str) -> str:
        return hashlib.sha256(f"{model}\x00{prompt}".encode()).hexdigest()

    def get(self, model: str, prompt: str) -> dict[str, Any] | None:
        return self._entries.get(self.key(model, prompt))

    def put(self, model: str, prompt: str, score: int | None, reply: str) -> None:
        entry = {"key": self.key(model, prompt), "model": model, "score": score, "reply": reply}
        with self._lock:
            self._entries[entry["key"]] = entry
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")


class TransientError(RuntimeError):
    """A failure worth retrying (network, timeout, 429, 5xx)."""


class JudgeFailed(RuntimeError):
    """Too many judgments failed: the explain stage stops (exit code 2, no traceback) instead of reporting
    metrics without the judge."""


class Judge:
    """Scores prompts with ``complete(messages) -> reply``; subclasses provide ``complete``."""

    name = "judge"

    def __init__(
        self,
        cache: JudgeCache | None,
        concurrency: int = 1,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        retry_unparsable: bool = False,
    ):
        self.cache, self.concurrency = cache, max(1, concurrency)
        self.retry_unparsable = retry_unparsable  # re-ask prompts whose cached reply was unparsable
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.stats = {"requests": 0, "retries": 0, "failures": 0, "unparsable": 0, "cached": 0}
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _complete_with_retries(self, messages: list[dict[str, str]]) -> str:
        for attempt in range(self.max_retries + 1):
            try:
                self._count("requests")
                return self.complete(messages)
            except TransientError as err:
                if attempt == self.max_retries:
                    raise
                self._count("retries")
                wait = getattr(err, "retry_after", None) or self.backoff_s * 2**attempt
                time.sleep(min(wait, 30.0) * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    def judge_one(self, prompt: str) -> Judgment:
        hit = self.cache.get(self.name, prompt) if self.cache is not None else None
        if hit is not None and (hit["score"] is not None or not self.retry_unparsable):
            self._count("cached")
            if hit["score"] is None:
                self._count("unparsable")
                return Judgment(None, hit["reply"], error="unparsable reply (cached)", cached=True)
            return Judgment(hit["score"], hit["reply"], cached=True)
        messages = [{"role": "user", "content": prompt}]
        try:
            reply = self._complete_with_retries(messages)
            score = parse_score(reply)
            if score is None:  # one retry with a reminder
                messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": REMINDER}]
                reply = self._complete_with_retries(messages)
                score = parse_score(reply)
        except Exception as err:  # noqa: BLE001 - any failure is counted, never fatal
            self._count("failures")
            return Judgment(None, None, error=f"{type(err).__name__}: {err}")
        if score is None:
            self._count("unparsable")
            if self.cache is not None:
                self.cache.put(self.name, prompt, None, reply or "")
            return Judgment(None, reply, error="unparsable reply")
        if self.cache is not None:
            self.cache.put(self.name, prompt, score, reply)
        return Judgment(score, reply)

    def judge_all(
        self, prompts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> list[Judgment]:
        """Judge every prompt (concurrently up to ``concurrency``); order preserved."""
        results: list[Judgment | None] = [None] * len(prompts)

        def work(i: int) -> None:
            results[i] = self.judge_one(prompts[i])
            if progress:
                progress(1)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            list(pool.map(work, range(len(prompts))))
        return [r for r in results if r is not None]


class OpenAIJudge(Judge):
    """Any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp server, ...)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_tokens: int = 8,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout_s, self.max_tokens = model, timeout_s, max_tokens
        self.name = f"openai:{model}"
        self._key_env = api_key_env

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps(
            {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        ).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self._key_env) if self._key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            if err.code == 429 or err.code >= 500:
                error = TransientError(f"HTTP {err.code} from the judge endpoint")
                retry_after = err.headers.get("Retry-After") if err.headers else None
                error.retry_after = float(retry_after) if retry_after and retry_after.isdigit() else None
                raise error from None
            raise RuntimeError(f"HTTP {err.code} from the judge endpoint {self.url}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            raise TransientError(f"judge endpoint {self.url} unreachable: {err}") from None
        except json.JSONDecodeError:
            raise TransientError("the judge endpoint returned a body that is not JSON") from None
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise TransientError(
                "the judge endpoint returned JSON without choices[0].message.content"
            ) from None


class LocalJudge(Judge):
    """A Hugging Face causal LM in this process (reported as ``local:<name>``).

    ``constrained`` (default): the score is the most probable of the four digit tokens 0-3 as the reply's
    first token (reported as ``local:<name>:digits``), so a small model that does not follow the format
    still gives a score; otherwise greedy decoding of ``max_new_tokens`` parsed strictly, as for an endpoint.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        max_new_tokens: int = 4,
        constrained: bool = True,
        **kwargs: Any,
    ):
        kwargs["concurrency"] = 1  # one model, one thread
        super().__init__(**kwargs)
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.constrained = constrained
        self.name = f"local:{name}" + (":digits" if constrained else "")
        self._digit_ids = [tokenizer(d, add_special_tokens=False)["input_ids"][0] for d in "0123"]
        # the model's chat template; a plain model reads the rubric and answers after "Score:"
        template = None if getattr(tokenizer, "chat_template", None) else "{prompt}\nScore:"
        self.formatter = ChatFormatter(tokenizer, template)

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        text = self.formatter.messages(messages)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        ids = {k: v.to(self.model.device) for k, v in ids.items()}
        with torch.no_grad():
            if self.constrained:
                logits = self.model(**ids).logits[0, -1]
                return str(int(torch.argmax(logits[self._digit_ids])))
            out = self.model.generate(
                **ids,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
