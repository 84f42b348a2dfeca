"""The anytime pipeline: challenge file + model directory -> submission.json, under a deadline.

The planner (run.gain, or run.rounds' uniform rounds) plans views into one shared queue
(engines.pool, fed by run.feed), best first and ahead of the engines, so the queue never
empties while work is owed. The engines, in worker processes, return each completion as it
finishes; each is appended to the predictions log at once, and the votes and submission.json
(atomic rewrite) follow on a cadence, by time and by count (run.recorder). So a valid, improving
submission exists from the first minute, and a deadline, crash or hang costs only the requests
in flight. With test-time fine-tuning, adapters are trained and answered in waves that fit the
scratch disk (run.adapting). `Run` composes the parts; this process owns the clock, the pool
supervises the engines, and whoever watches a run does so through `Observer` and the lane
factory.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping

from airv.adapt.adapters import Adapters, stage_log
from airv.core.errors import EngineError
from airv.core.tasks import Challenges, load_challenges
from airv.core.types import Unit
from airv.core.units import format_duration
from airv.core.voting import Vote
from airv.engines.lane import WorkerTimeout
from airv.engines.pool import LaneStarter, start_lane
from airv.engines.worker import end_child_server
from airv.run.adapting import adapt_and_answer
from airv.run.budget import (
    DEADLINE,
    Clock,
    Stopped,
    deadline_alarm,
    process_start_time,
    stop_on_signals,
)
from airv.run.config import ENGINE_START_SECONDS, RunConfig
from airv.run.engines import Engines
from airv.run.feed import Feed, Payload
from airv.run.gain import Ledgers, planner, task_stop
from airv.run.ledger import Ledger
from airv.run.observer import Observer
from airv.run.outdir import RunLock
from airv.run.outdir import prepare as prepare_out_dir
from airv.run.predictions import Prediction
from airv.run.promise import Promises
from airv.run.prompting import Prompter
from airv.run.recorder import Recorder
from airv.run.rescore import Rescorer
from airv.run.rounds import Board, View
from airv.run.schedule import Journal
from airv.run.summary import RunSummary

log = logging.getLogger(__name__)


class Run:
    """One run, composed: the planner (what each test input is owed), the ledger (spent,
    owed, caps), the recorder (results to the logs, votes, submission.json), the feed (the
    shared queue's traffic), the adapters (test-time fine-tuning) and the engines' pools,
    driven by a short loop (`execute`)."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        clock: Clock | None = None,
        lanes: LaneStarter = start_lane,
        observer: Observer | None = None,
    ):
        self.cfg = cfg
        self.observer = observer or Observer()
        self.clock = clock or Clock.for_run(cfg, process_start_time())
        self.challenges: Challenges = load_challenges(cfg.challenges, strict=False)
        # One run per output folder, resumed only with the same fingerprint (or --fresh).
        self._lock: RunLock | None = prepare_out_dir(cfg)
        self.summary = RunSummary.of(cfg, self.challenges)
        ids = [t for t in self.challenges.task_ids if t in self.challenges.tasks]
        self.task_ids = ids[: cfg.max_tasks] if cfg.max_tasks is not None else ids
        self.units: list[Unit] = [
            (t, i) for t in self.task_ids for i in range(len(self.challenges.tasks[t].test))
        ]
        self.task_cap_s = cfg.task_cap(len(self.task_ids))
        self.prompter = Prompter(cfg)
        fit, answer_ids = self.prompter.fit, self.prompter.answer_ids
        self.ledger = Ledger(self.task_cap_s, cfg.task_cap_tokens)
        self.rescorer = Rescorer(cfg, self.challenges.tasks, fit, answer_ids)
        self.recorder = Recorder(
            cfg, self.challenges, self.summary, self.ledger, self.rescorer, self.clock
        )
        self.recorder.parse = self.prompter.parse
        self.feed = feed = Feed(
            cfg,
            self.challenges.tasks,
            self.clock,
            self.ledger,
            self.recorder,
            self.rescorer,
            Promises(cfg.promise_path, self.challenges.tasks, fit, answer_ids),
            self.summary,
            task_ids=self.task_ids,
            task_cap_s=self.task_cap_s,
            on_planned=self.observer.planned,
            on_taken=self.observer.taken,
        )
        self.failed = feed.failed
        self.adapters = Adapters(
            cfg.ttt,
            cfg.out_dir,
            backend=cfg.engine.backend.value,
            fallback=cfg.adapter_fallback,
            keep=cfg.keep_adapters,
            check=feed.push_check,
            released=feed.catch_up,
        )
        self.summary.ttt = self.adapters.entries
        self.engines: Engines[Payload] = Engines(
            cfg,
            self.clock,
            lanes,
            self.summary,
            on_failure=self.observer.engine_failed,
            adapters=self.adapters.serving,
        )
        board = Board(
            self.units,
            closed=feed.closed,
            have=feed.have,
            adapter=self.adapters.adapter,
            fail=feed.fail,
            push=feed.push,
            verdicts_due=self.adapters.verdicts_due,
        )
        self.journal = Journal(cfg.schedule_path)
        self.rounds = planner(
            cfg,
            self.challenges.tasks,
            fit,
            board,
            Ledgers(
                feed.evidence,
                feed.price,
                lambda t: task_stop(t, self.failed, self.ledger),
                held=self.adapters.held,
                elapsed=self.clock.elapsed,
                promise=feed.promise,
            ),
            self.journal,
        )
        feed.attach(self.rounds, self.engines, self.adapters)
        self.recorder.resume(self.units, stage_log(cfg.out_dir))

    @property
    def predictions(self) -> dict[Unit, list[Prediction]]:
        return self.recorder.predictions

    def votes(self) -> dict[Unit, Vote]:
        return self.recorder.votes()

    def write(self) -> dict[Unit, Vote]:
        """Vote and rewrite submission.json atomically; returns the votes."""
        t0 = time.perf_counter()
        votes = self.recorder.write()
        self.observer.wrote(votes, time.perf_counter() - t0)
        return votes

    # -- planning ------------------------------------------------------------------------

    def plan(self, round_no: int, votes: Mapping[Unit, Vote]) -> list[View]:
        """The views still owed to reach this round's target per test input (work queued or
        in flight counts as done), as the uniform rounds plan them."""
        views = self.rounds.plan_round(round_no, votes)
        self.summary.settled_skips = self.rounds.skipped
        return views

    # -- engines -------------------------------------------------------------------------

    def start_workers(self) -> None:
        """Start the engines, queue the new adapters' checks first, and wait until they are
        up (failures restarted by the policy)."""
        self.engines.open()
        self.adapters.check_new()
        self.feed.take(self.engines.wait_ready())

    def _answer(self, votes: dict[Unit, Vote], until: float | None) -> dict[Unit, Vote]:
        """Start the engines and stream to them until the work is done or time is up (the
        deadline, or `until`: a wave's end)."""
        self.start_workers()
        return self._stream(votes, until)

    def stop_workers(self) -> None:
        self.engines.close()
        # Stopped (a deadline, a signal, an engine failure): no child is coming.
        if self.summary.stopped_by is not None or self.clock.left() <= 0:
            end_child_server()

    # -- the loop ------------------------------------------------------------------------

    def _stream(self, votes: dict[Unit, Vote], until: float | None = None) -> dict[Unit, Vote]:
        """Keep the engines fed until the work is done or time is up (the deadline, or
        `until`: a wave's end); record each result as it comes; vote and rewrite
        submission.json on a cadence (cfg.write_seconds, or cfg.write_every new results)."""
        pool = self.engines.pool
        assert pool is not None
        cfg = self.cfg
        last_write, unwritten = time.monotonic(), 0
        while True:
            if self.clock.left() <= 0:
                # What the engines already returned is kept; only requests in flight are lost.
                for p in self.engines.pools():
                    self.feed.take(p.drain())
                self.summary.stopped_by = DEADLINE
                log.warning("deadline reached: stopping the engine; the last submission stands")
                break
            if until is not None and time.monotonic() >= until:
                for p in self.engines.pools():
                    self.feed.take(p.drain())
                log.info("the wave's time is up: its work in flight is dropped")
                break
            self.feed.send()  # what is planned goes out before more is planned (Feed.send)
            self.feed.refill(votes)
            pools = self.engines.pools()
            if not self.engines.queued() and all(p.idle() for p in pools):
                votes = self.votes()
                if not self.feed.refill(votes, final=True):
                    break
            self.feed.send()
            for p in pools:
                unwritten += self.feed.take(p.poll(min(self.clock.left(), 0.5) / len(pools)))
            now = time.monotonic()
            if unwritten and (
                unwritten >= cfg.write_every or now - last_write >= cfg.write_seconds
            ):
                votes = self.write()
                self.feed.push_scores(votes)
                self.adapters.delete(functools.partial(self.feed.task_over, votes=votes))
                last_write, unwritten = now, 0
                self.feed.show_progress(votes, len(self.task_ids))
            pool.check()  # every restart spent and no engine left: EngineError
            self.feed.fallback_lost()
        return self.write()

    # -- the run -------------------------------------------------------------------------

    def execute(self) -> int:
        """Run until the work is done or time is up. Returns the exit code. The output folder
        is unlocked at the end, whatever happens."""
        try:
            return self._execute()
        finally:
            self.release()

    def _execute(self) -> int:
        votes = self.write()  # a valid submission exists before the model even loads
        exit_code = 0
        if self.clock.left() < ENGINE_START_SECONDS:
            log.warning(
                "only %s of the budget is left after the %s reserve: an engine start alone "
                "took about %s here, so this run may produce no answers (raise --time-budget "
                "or lower --reserve)",
                format_duration(self.clock.left()),
                format_duration(self.cfg.reserve_seconds),
                format_duration(ENGINE_START_SECONDS),
            )
        bar = self.feed.open_bar(self.cfg.progress)
        with stop_on_signals() as signals:
            self.recorder.signals = signals
            try:
                with deadline_alarm(signals, self.clock.deadline):
                    if self.task_ids and self.clock.left() > 0:
                        _ = self.prompter.format  # loads and checks the tokenizer: usage errors
                    if self.cfg.ttt.enabled and self.clock.left() > 0:
                        votes = adapt_and_answer(
                            self.cfg,
                            self.clock,
                            self.summary,
                            self.adapters,
                            self.challenges.tasks,
                            [t for t in self.task_ids if t not in self.failed],
                            votes,
                            answer=self._answer,
                            stop=self.stop_workers,
                        )
                    elif self.clock.left() > 0:
                        votes = self._answer(votes, None)
            except WorkerTimeout:
                self.summary.stopped_by = DEADLINE
                log.warning(
                    "deadline reached before the engine started; the last submission stands"
                )
            except EngineError as exc:
                self.summary.stopped_by = "engine failure"
                self.summary.error = str(exc).splitlines()[0]
                log.error("%s", exc)
                exit_code = exc.exit_code
            except Stopped as stop:  # as a deadline would: what was answered stands
                self.summary.stopped_by = stop.signal
                log.warning("%s: stopping the engine; the last submission stands", stop.signal)
            finally:
                signals.disarm()  # a signal from here on must not cut the final write
                if bar is not None:
                    bar.close()
                try:
                    votes = self.write()  # first: the submission stands before any slow step
                finally:  # even on a full disk: a live worker would hold the process at exit
                    self.stop_workers()
                votes = self.write()
                self.adapters.delete(lambda t: True, final=True)
            if self.summary.stopped_by is None and signals.received is not None:
                self.summary.stopped_by = signals.received
        if self.summary.stopped_by is None:
            self.summary.stopped_by = DEADLINE if self.clock.left() <= 0 else "done"
        self._finish_summary(votes)
        return exit_code

    def release(self) -> None:
        """Close the schedule's journal and unlock the output folder (execute does at its
        end)."""
        self.journal.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _finish_summary(self, votes: dict[Unit, Vote]) -> None:
        s = self.summary
        s.total_seconds = self.clock.elapsed()
        s.failed_tasks = dict(self.failed)
        self.recorder.finish(self.units, votes)
        s.ttt_seconds, s.scratch_peak_bytes = self.adapters.seconds, self.adapters.scratch_peak
        s.adapters_deleted = self.adapters.deleted
        s.skipped_tasks = len(self.challenges.tasks) - len(self.task_ids)
        s.answered_test_inputs = len(votes)
        s.test_inputs = sum(self.challenges.n_tests.values())
        s.write(self.cfg.summary_path)


def run(cfg: RunConfig, *, clock: Clock | None = None) -> int:
    """Run the pipeline; returns the process exit code. submission.json exists whatever happens
    after the challenge file has been read."""
    r = Run(cfg, clock=clock)
    code = r.execute()
    print(r.summary.render())
    return code
