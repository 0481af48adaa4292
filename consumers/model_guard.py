"""The answer model behind a guard that decides, per failure class, whose problem a failure is.

Every query gets its one final answer within its deadline whatever the model does; the model only decides
whether that answer is generated or extractive (`degraded: true`, with the reason). What the guard adds is
what a failure says about the *next* queries:

- overloaded, rate limited, 5xx, too slow (AnswerModelError): this query extractive; nothing changes;
- this request refused, HTTP 400/413/422 (ModelRequestError): this query extractive; after `refusals` in a
  row the refusals are everyone's: the model is unusable;
- the key, the account, the permissions, the model name (ConfigurationError): this query extractive; the
  model is unusable at once;
- anything else (a bug in the adapter or the SDK): logged at ERROR, this query extractive, counted with the
  refusals.

While the model is unusable the stage is *degraded*: every query is answered extractively at once, without
calling the model, so it is answered well within its deadline; `/health` says `degraded` with the reason
(503), `ragbus_stage_degraded{stage="answerer"}` is 1, `ragbus status` shows it, and one ERROR line naming the
setting to fix is logged when it starts and at most once per `log_every_s` after. Every `probe_s` (doubling to
`probe_max_s`) one query is let through to the model as a probe: when the model answers it, the stage
recovers by itself. At start-up the adapter's check (the key, the models) starts the guard unusable instead of
stopping the process: the offline answer is better than none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infra.ops import logs
from kernel.errors import AnswerModelError, ConfigurationError, ModelRequestError
from kernel.ports import AnswerModel, Checked, GeneratedAnswer, OnDelta, Search, SearchHit, Turn

log = logs.get(__name__)
#: `report(reason)` when the model becomes unusable, `report(None)` when it recovers (health, metrics).
Report = Callable[[str | None], None]


@dataclass(frozen=True)
class GuardPolicy:
    probe_s: float = 30.0
    probe_max_s: float = 300.0
    #: Requests refused in a row (ModelRequestError) after which the refusals are everyone's.
    refusals: int = 3
    log_every_s: float = 60.0


class ModelGuard:
    """An AnswerModel: the wrapped model, unless it is unusable (then AnswerModelError at once, and probes)."""

    def __init__(self, model: AnswerModel, report: Report, policy: GuardPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._model = model
        self._report = report
        self._policy = policy or GuardPolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._unusable: str | None = None
        self._next_probe = 0.0
        self._delay = self._policy.probe_s
        self._refused = 0
        self._logged_at = 0.0
        self._skipped = 0  # queries answered without the model since the last ERROR line
        self.name = model.name
        self.prompt_version = model.prompt_version

    @property
    def unusable(self) -> str | None:
        return self._unusable

    def check(self) -> None:
        """The adapter's start-up check (key, models); a refusal starts the stage degraded, never stops it."""
        if isinstance(self._model, Checked):
            try:
                self._model.check()
            except ConfigurationError as exc:
                self._break(f"at start-up: {exc}")

    def answer(self, question: str, hits: Sequence[SearchHit], *, on_delta: OnDelta | None = None,
               deadline_s: float | None = None, search: Search | None = None,
               history: Sequence[Turn] = ()) -> GeneratedAnswer:
        self._admit()
        try:
            answer = self._model.answer(question, hits, on_delta=on_delta, deadline_s=deadline_s, search=search,
                                        history=history)
        except ConfigurationError as exc:
            self._break(str(exc))
            raise AnswerModelError(f"the answer model is unusable: {exc}") from exc
        except ModelRequestError as exc:
            self._refusal(exc)
            raise
        except AnswerModelError:
            raise
        except Exception as exc:  # a bug in the adapter or the SDK: this query still gets its answer
            log.error("answer model failed unexpectedly; answering extractively", model=self.name,
                      error=f"{type(exc).__name__}: {exc}"[:300])
            self._refusal(exc)
            raise AnswerModelError(f"the answer model failed unexpectedly ({type(exc).__name__}: "
                                   f"{str(exc)[:300]})") from exc
        self._worked()
        return answer

    def _admit(self) -> None:
        """Pass while usable, or as the probe when one is due; else raise at once (answered extractively)."""
        with self._lock:
            if self._unusable is None:
                return
            now = self._clock()
            if now >= self._next_probe:
                self._next_probe = now + self._delay
                self._delay = min(self._delay * 2, self._policy.probe_max_s)
                log.info("probing the answer model with this query", reason=self._unusable)
                return
            self._skipped += 1
            reason = self._unusable
            self._log_still(now)
        raise AnswerModelError(f"the answer model is unusable: {reason}")

    def _refusal(self, exc: Exception) -> None:
        with self._lock:
            self._refused += 1
            if self._refused < self._policy.refusals or self._unusable is not None:
                return
        self._break(f"{self._policy.refusals} requests in a row were refused or failed, so it is not their content "
                    f"(last: {exc}): check RAGBUS_ANTHROPIC_MODEL, RAGBUS_ANTHROPIC_MAX_TOKENS, "
                    "RAGBUS_ANTHROPIC_TEMPERATURE and RAGBUS_ANTHROPIC_BASE_URL")

    def _break(self, reason: str) -> None:
        with self._lock:
            first = self._unusable is None
            self._unusable = reason
            if first:
                self._next_probe = self._clock() + self._policy.probe_s
                self._delay = self._policy.probe_s * 2
                self._logged_at, self._skipped = self._clock(), 0
        if first:
            log.error("answer model unusable: every query is answered extractively (degraded) until a probe "
                      "goes through", model=self.name, reason=reason[:500], probe_in_s=self._policy.probe_s)
            self._report(reason)

    def _log_still(self, now: float) -> None:
        if now - self._logged_at >= self._policy.log_every_s:
            log.error("answer model still unusable", model=self.name, reason=(self._unusable or "")[:500],
                      degraded_since_last=self._skipped, next_probe_in_s=round(self._next_probe - now, 1))
            self._logged_at, self._skipped = now, 0

    def _worked(self) -> None:
        with self._lock:
            self._refused = 0
            was = self._unusable
            self._unusable = None
            self._delay = self._policy.probe_s
        if was is not None:
            log.warning("answer model recovered: a probe query was answered", model=self.name, was=was[:300])
            self._report(None)
