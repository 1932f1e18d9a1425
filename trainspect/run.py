"""The front door: `init`, the `Run` a training loop talks to, its step clock and flush.

Everything a training step calls returns in microseconds and never raises: values
are appended to the writer's queues, device tensors stay on the device until the
flush, and a failure inside trainspect is logged, counted and reported once as an
alert while training goes on.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainspect import lifecycle
from trainspect.clock import StepClock
from trainspect.console import console_for_verbose, log_alert
from trainspect.distributed import RankSync
from trainspect.errors import TrainspectError, safe_repr
from trainspect.flush import Flusher, Part
from trainspect.inputs import as_step, check_counts, clean_metrics, config_dict
from trainspect.paths import check_name, runs_dir
from trainspect.probes.base import Probe
from trainspect.records import ALERT_LEVELS, Alert
from trainspect.runinfo import describe_process
from trainspect.store.claim import Claim, claim_run
from trainspect.store.null import NullWriter
from trainspect.window import probe_part, tensor_parts

log = logging.getLogger("trainspect")


class Run:
    """One training run: what the loop logs and observes goes to `<dir>/<project>/<id>.db`.

    Create it with `trainspect.init(...)`. Use it as a context manager, or call
    `finish()`; it also finishes at interpreter exit and on SIGTERM/SIGINT.
    """

    def __init__(
        self,
        project: str = "default",
        name: str | None = None,
        config: dict[str, Any] | None = None,
        dir: str | Path | None = None,
        *,
        tokenizer: Any = None,
        log_every: int = 10,
        samples_every: int = 200,
        num_samples: int = 5,
        resume: str | None = None,
        verbose: bool = False,
        sample_positions: tuple[int, int] = (8, 8),
        alerts: bool = True,
        alert_rules: Any = None,
        webhook: str | None = None,
        exporters: Sequence[Any] = (),
        store: str | None = None,
        system_metrics: bool | float | None = None,
    ) -> None:
        check_name(project, "project")
        check_counts(log_every, samples_every, num_samples)
        from trainspect.probes.system import interval_of, start_sampler
        from trainspect.store.server.connect import store_url

        url = store_url(store)  # a team store to stream to, else $TRAINSPECT_STORE, else None
        system_interval_s = interval_of(system_metrics)  # GPU, CPU, RAM, disk: probes/system
        self.project = project
        self.root = runs_dir(dir)
        self.tokenizer = tokenizer
        self.log_every = log_every
        self.samples_every = samples_every
        self.num_samples = num_samples
        self.verbose = verbose
        self.config = config_dict(config)
        self.errors: dict[str, int] = {}
        self.rejected_values = 0
        self._warned: set[str] = set()
        self._finished = False
        self._probes: dict[str, Probe] = {}
        self._disabled: set[str] = set()
        self._pending_tensors: list[tuple[int, float, str, Any]] = []
        self._flusher = Flusher()
        from trainspect.probes.samples import SampleTaker

        self._samples = SampleTaker(tokenizer, num_samples, samples_every,
                                    head=sample_positions[0], tail=sample_positions[1])
        if verbose:
            console_for_verbose()
        self._clock = StepClock(log_every)
        now = time.time()
        self._ranks = RankSync()  # rank 0 writes; the flush pools every rank's probe state
        self._exporters: list[Any] = []

        if url is None:
            claim = claim_run(self.root, project, resume, now, writes=self._ranks.writes)
        else:  # a resume also finds runs made on other machines
            from trainspect.store.server.attach import claim_with_store

            claim = claim_with_store(self.root, project, resume, now, self._ranks.writes, url)
        self.id, self.path, previous = claim.id, claim.path, claim.previous
        attempt = int(previous.get("attempt", 1)) + 1 if resume is not None else 1
        started_at = float(previous.get("started_at", now))
        self.name = name or previous.get("name") or self.id
        self.config = {**dict(previous.get("config") or {}), **self.config}
        try:
            from trainspect.alerts import engine_for_run

            # The alert rules (`run.alerts.add(rule)` adds more). Bad arguments raise
            # here; a file this init created is removed again.
            self.alerts = engine_for_run(alerts=alerts, alert_rules=alert_rules,
                                         webhook=webhook, config=self.config,
                                         run={"id": self.id, "project": project,
                                              "name": self.name})
        except BaseException:
            claim.abandon()
            raise
        self._writer = self._open_writer(claim, attempt)
        self.add_observer(self.alerts.observe)
        if exporters:
            self.export_to(*exporters)
        self._writer.set_meta(
            id=self.id, project=project, name=self.name, config=self.config,
            status="running", started_at=started_at, attempt=attempt,
            attempt_started_at=now, ended_at=None, log_every=log_every,
            alert_rules=[rule.id for rule in self.alerts.rules],
            **describe_process(),
        )
        if claim.created:  # a new file: name it among the run's spools (docs/team.md)
            self._writer.set_meta(spool_id=uuid.uuid4().hex[:16], first_attempt=attempt)
        self.sync = None  # the team store's live sync (`store=`), on the writing rank
        if url and self._writer.alive:
            from trainspect.store.server.attach import start_sync

            self.sync = start_sync(self, url)
        self._system = start_sampler(self, system_interval_s if self._ranks.writes else None)
        lifecycle.register(self)

    # ---- opening the store ---------------------------------------------------------------

    def _open_writer(self, claim: Claim, attempt: int) -> Any:
        """The store for the claimed file; a NullWriter, with one error, if it cannot be."""
        if claim.lock is None and claim.error is None:
            return NullWriter()  # a rank that does not write
        from trainspect.store.writer import StoreWriter

        try:
            if claim.error is not None:
                raise claim.error
            return StoreWriter(self.path, attempt=attempt, lock=claim.lock)
        except (OSError, sqlite3.Error, TrainspectError) as err:
            claim.abandon()
            log.error(
                "trainspect: cannot open the run store at %s (%s). Training goes on, but "
                "this run records nothing: set `dir=` or $TRAINSPECT_DIR to a writable place.",
                self.path, err,
            )
            return NullWriter()

    # ---- the step clock --------------------------------------------------------------------

    @property
    def step(self) -> int:
        """The highest step any call has given so far."""
        return self._clock.step

    @property
    def _step(self) -> int:
        return self._clock.step

    def _advance(self, step: Any) -> int:
        """Take the caller's step (TrainspectError if it is not one), flushing the window
        when a later one begins."""
        step = self._clock.resolve(step)
        if self._clock.ends_window(step):
            self._flush_device()
        self._clock.move_to(step)
        return step

    # ---- logging -------------------------------------------------------------------------

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Record scalars at `step`: floats, ints, numpy numbers or 0-d tensors.

        Device tensors are not read until the flush. `step` defaults to the last step
        given to the run, or counts `log` calls if no call ever gave one. NaN and inf
        are stored as they are; a value that is not a number is dropped with one
        warning per key and counted in `rejected_values`.
        """
        if self._finished:
            self._reject("log", metrics, "the run has finished")
            return
        if not isinstance(metrics, dict):
            self._reject("log", metrics, f"expected a dict of metrics, got "
                                         f"{type(metrics).__name__}")
            return
        try:
            step = self._advance(step)
            now = time.time()
            for key, value in metrics.items():
                if type(value) is not float or type(key) is not str:
                    values = clean_metrics(metrics, self._reject, lambda key, tensor: (
                        self._pending_tensors.append((step, now, key, tensor))))
                    break
            else:
                values = dict(metrics)
            if values:
                self._writer.scalars.append((step, now, values))
        except TrainspectError as err:
            self._reject("step", step, str(err))
        except Exception as err:
            self._internal_error("log", err)

    def _reject(self, key: str, value: Any, why: str) -> None:
        self.rejected_values += 1
        if key not in self._warned:
            self._warned.add(key)
            log.warning("trainspect: step %d: dropped %s=%s (%s); this warning is shown once "
                        "per key, rejected values are counted", self._step,
                        key if isinstance(key, str) else safe_repr(key, 80),
                        safe_repr(value, 80), why)

    def observe(
        self,
        step: int,
        logits: Any,
        labels: Any = None,
        *,
        mask: Any = None,
        stream: str = "text",
        group: str | None = None,
        input_ids: Any = None,
        attention_mask: Any = None,
        target_logits: Any = None,
        ignore_index: int = -100,
        token_names: dict[int, str] | None = None,
        vocab_start: int | None = None,
        vocab_size: int | None = None,
        tp_group: Any = None,
    ) -> None:
        """Token statistics of one batch: what was predicted, how sure, how calibrated.

        `logits` is [..., V] in any float dtype (never cast as a whole), `labels` the
        matching [...] integers with `ignore_index` (-100) for unsupervised positions,
        or `mask=` False for them. `group="pos"` / `"cb"` names the axis just before V
        (draft positions, audio codebooks): metrics are then kept per position or
        codebook too. `target_logits` (a teacher) adds agreement, KL and acceptance.
        Logits and labels are compared as given: a causal LM passes them shifted.
        Every `samples_every` steps the first `num_samples` sequences are also kept
        token by token (see `run.samples`); `input_ids` give them their context and
        a stable id, `token_names` names special ids ({1025: "<eos>"}) of the stream.
        Vocab-parallel logits (tensor parallel): a DTensor sharded on its last dim, or
        this rank's [..., V/tp] columns with `vocab_start`, `vocab_size` (the whole V)
        and `tp_group` (default every rank); the statistics are the whole logits'
        (trainspect.probes.vocab_parallel).
        Only device work is queued here; nothing is read back until the flush.
        """
        if self._finished:
            self._reject("observe", stream, "the run has finished")
            return
        name = safe_repr(stream, 80)
        try:
            step = self._advance(step)
        except Exception as err:  # TrainspectError, or a step odd enough to break the check
            self._input_alert(f"observe:{name}:step", f"observe(stream={name}): {err}",
                              "Pass the loop's integer step; this batch was skipped.")
            return
        shard, problem = None, None
        if vocab_start is not None or vocab_size is not None or tp_group is not None or hasattr(
                logits, "device_mesh"):  # vocab-parallel logits: this rank's shard, as tensors
            from trainspect.probes.vocab_parallel import vocab_shard

            shard, problem = vocab_shard(logits, labels, mask, target_logits, vocab_start,
                                         vocab_size, tp_group)
            if problem is None:
                logits, labels, mask = shard.logits, shard.labels, shard.mask
        problem = problem or self._observe_problem(logits, labels, mask, target_logits, stream,
                                                   group, input_ids, attention_mask,
                                                   ignore_index, token_names)
        if problem is not None:
            kind = "".join(c for c in problem if not c.isdigit())  # one alert per kind
            self._input_alert(f"observe:{name}:{kind}", f"observe(stream={name}): {problem}",
                              "Fix the arguments passed to run.observe; this batch was "
                              "skipped and training goes on.")
            self._stand_aside(shard, stream, step)
            return
        try:
            if "tokens" in self._disabled:
                self._stand_aside(shard, stream, step)
                return
            probe = self._probes.get("tokens")
            if probe is None:
                from trainspect.probes.tokens import TokenProbe

                probe = self.add_probe(TokenProbe())
            known = probe.streams.get(stream)
            vocab = logits.shape[-1] if shard is None else shard.vocab_size
            if known is not None and (known.group != group or known.vocab_size != vocab or (
                    group and known.n_groups != logits.shape[-2])):
                self._input_alert(
                    f"observe:{stream}:layout",
                    f"observe(stream={stream!r}): logits {tuple(logits.shape)} (V={vocab}) with "
                    f"group={group!r} differ from the stream's first batch (group="
                    f"{known.group!r}, {known.n_groups} groups, V={known.vocab_size})",
                    "Use one stream name per head layout; this batch was skipped.")
                self._stand_aside(shard, stream, step)
                return
            import torch

            from trainspect.probes.labels import observe_labels

            with torch.no_grad():  # statistics must never join the caller's autograd graph
                if shard is not None:  # logits, labels and mask are the shard's (above)
                    from trainspect.probes.vocab_parallel import observe_shard

                    observe_shard(self, probe, step, stream, group, shard, input_ids,
                                  attention_mask, token_names, ignore_index)
                else:
                    probe.update(stream, group, logits, labels, mask, target_logits,
                                 ignore_index)
                    if self._samples.due(stream, step):
                        self._take_samples(step, stream, group, logits, labels, mask,
                                           input_ids, attention_mask, token_names, ignore_index)
                observe_labels(self, stream, group, logits.shape, labels, mask, input_ids,
                               attention_mask, ignore_index,
                               count=shard is None or shard.counts)
        except Exception as err:
            self.probe_failed("tokens", "observe", err)

    @staticmethod
    def _observe_problem(*args: Any) -> str | None:
        """What is wrong with observe's arguments; a check that fails is a problem too."""
        try:
            from trainspect.probes.observe_args import observe_problem

            return observe_problem(*args)
        except Exception as err:  # arguments odd enough to break the check: skip the batch
            return f"the arguments could not be checked ({type(err).__name__}: {err})"

    def _stand_aside(self, shard: Any, stream: str, step: int) -> None:
        """A skipped vocab-parallel batch still joins its group's collectives (no hang)."""
        if shard is not None:
            from trainspect.probes.vocab_parallel import stand_aside

            stand_aside(self, shard, stream, step)

    def _take_samples(self, step: int, stream: str, group: str | None, logits: Any,
                      labels: Any, mask: Any, input_ids: Any, attention_mask: Any,
                      token_names: dict | None, ignore_index: int) -> None:
        """Queue the sample rows' device work and their copy; the writer builds the rows."""
        try:
            tensors, build = self._samples.take(
                step, stream, group, logits, labels, mask, input_ids, attention_mask,
                token_names, ignore_index, on_rows=self._print_samples if self.verbose else None)
            job = self._flusher.start([Part(tensors, build, reduce=False)])
            if job is not None:
                self._writer.jobs.append(job)
        except Exception as err:
            self.probe_failed("samples", "observe", err)

    @staticmethod
    def _print_samples(rows: list) -> None:
        from trainspect.samples_view import format_samples

        logging.getLogger("trainspect.samples").info("\n%s", format_samples(rows))

    def _input_alert(self, key: str, message: str, action: str) -> None:
        """Count bad input every time; alert once per kind, not once per step."""
        self.rejected_values += 1
        if key in self._warned:
            return
        self._warned.add(key)
        self._deliver(Alert(step=self._step, rule="bad_input", level="warning", message=message,
                            action=action, wall_time=time.time()))

    def alert(self, text: str, level: str = "warning", action: str = "",
              step: int | None = None) -> None:
        """Raise an alert of your own: it goes to the console (logging) and the store."""
        try:
            if level not in ALERT_LEVELS:
                self._reject("alert.level", level, f"expected one of {ALERT_LEVELS}")
                level = "warning"
            try:
                step = self._clock.step if step is None else as_step(step)
            except TrainspectError as err:
                self._reject("alert.step", step, f"{err}; the alert is kept at the run's step")
                step = self._clock.step
            self._deliver(Alert(step=step, rule="user", level=level, message=str(text),
                                action=str(action), wall_time=time.time()))
        except Exception as err:
            self._internal_error("alert", err)

    def _deliver(self, alert: Alert) -> None:
        log_alert(alert)
        self._writer.records.append(alert)

    def emit(self, *records: Any) -> None:
        """Hand finished records (Scalar, Matrix, SampleRow, Alert) to the store.

        Alerts also go to the console. Safe from any thread; never raises.
        """
        for record in records:
            try:
                if isinstance(record, Alert):
                    self._deliver(record)
                else:
                    self._writer.records.append(record)
            except Exception as err:
                self._internal_error("emit", err)

    def evaluate(self, model: Any, ev: Any, step: int | None = None,
                 checkpoint: str | None = None, batch_size: int = 8, em: str = "greedy",
                 progress: Any = None, **kwargs: Any) -> Any:
        """Run a `ts.FixedEval` on `model` at `step` (default: the run's step) and record it:
        exact match, CE, calibration, pattern x length cells, best checkpoint and trends.

        Returns the EvalResult (None if the evaluation itself failed: that is an alert).
        See `trainspect.eval.evaluate.evaluate` for the arguments.
        """
        from trainspect.eval.evaluate import evaluate

        return evaluate(self, model, ev, self._step if step is None else step,
                        checkpoint=checkpoint, batch_size=batch_size, em=em,
                        progress=progress, **kwargs)

    def losses(self, step: int | None, components: dict[str, Any],
               weights: dict[str, Any] | None = None, total: Any = None,
               grad_accum: int = 1) -> None:
        """Loss composition audit: raw, weight and scaled per component, the total and the
        gap between them, leaks through zero weights; see trainspect.probes.losses."""
        from trainspect.probes.losses import losses

        losses(self, step, components, weights, total, grad_accum)

    def watch(self, model: Any, every: int | None = None, hidden_modules: Any = None,
              **options: Any) -> Any:
        """LoRA deltas, gradients, hidden states and throughput of `model`, every `every`
        steps (default `log_every`); returns a handle with `.remove()`.
        See trainspect.probes.watch.watch for the options."""
        from trainspect.probes.watch import watch

        return watch(self, model, every, hidden_modules, **options)

    def speed(self, step: int | None = None, **batch: Any) -> None:
        """Throughput of one batch (tokens, supervised tokens, padding, step time, MFU);
        see trainspect.probes.speed.speed."""
        from trainspect.probes.speed import speed

        speed(self, step, **batch)

    def remove_probe(self, name: str) -> None:
        """Detach a probe; its unflushed window is dropped."""
        self._probes.pop(name, None)

    def set_meta(self, **values: Any) -> None:
        """Record JSON-able values in the run's metadata (`RunView.meta`); later ones win."""
        self._writer.set_meta(**values)

    def export_to(self, *targets: Any) -> list[Any]:
        """Mirror this run's scalars, samples and alerts to "wandb", "tensorboard", "mlflow"
        or `trainspect.integrations.exporters` objects, from now on (rank 0 only)."""
        from trainspect.integrations.exporters import export_to

        made = export_to(self, *targets)
        self._exporters.extend(made)
        return made

    def add_observer(self, observer: Any) -> None:
        """Let `observer(columns, records)` see every batch the writer commits (alert rules).

        It runs on the writer thread; what it returns (alerts) is stored with the batch.
        """
        self._writer.observers.append(observer)

    # ---- probes ------------------------------------------------------------------------------

    def add_probe(self, probe: Probe) -> Probe:
        """Attach a probe; its state is flushed with everything else."""
        self._probes[probe.name] = probe
        return probe

    def probe(self, name: str) -> Probe | None:
        return self._probes.get(name)

    def probe_failed(self, name: str, where: str, err: BaseException) -> None:
        """Switch a failing probe off and say so once; training and other probes go on."""
        if name in self._disabled:
            return
        self._disabled.add(name)
        self._probes.pop(name, None)
        log.debug("trainspect: probe %s failed in %s", name, where, exc_info=err)
        self._deliver(Alert(
            step=self._step, rule="probe_failed", level="warning",
            message=f"the {name} probe failed in {where} ({type(err).__name__}: {err}) "
                    "and was switched off; other probes go on",
            action="Report this with the traceback from the debug log "
                   "(logging.getLogger('trainspect').setLevel('DEBUG')).",
            wall_time=time.time(),
        ))

    # ---- flushing ----------------------------------------------------------------------------

    def _flush_device(self) -> None:
        """Queue the window's device values for the writer; never waits for the device."""
        try:
            probes = self._ranks.agree(self, list(self._probes.values()))
            parts = [probe_part(p, self._clock.step, self.probe_failed) for p in probes]
            pending, self._pending_tensors = self._pending_tensors, []
            parts.extend(tensor_parts(pending))
            parts = self._ranks.parts(self, [p for p in parts if p is not None])
            job = self._flusher.start(parts)
            for probe in list(self._probes.values()):
                try:
                    probe.reset()
                except Exception as err:
                    self.probe_failed(probe.name, "reset", err)
            if job is not None:
                self._writer.jobs.append(job)
        except Exception as err:
            self._internal_error("flush", err)

    def flush(self, timeout: float = 60.0) -> bool:
        """Make everything logged so far durable; True once it is in the store."""
        if self._finished:
            return False
        try:
            self._flush_device()
            self._clock.close_window()
            return self._writer.flush(timeout)
        except Exception as err:
            self._internal_error("flush", err)
            return False

    def finish(self, status: str = "finished", **meta: Any) -> None:
        """Flush, mark the run `status` (finished or failed) and close its file."""
        if self._finished:
            return
        try:
            if getattr(self, "_system", None) is not None:
                self._system.stop()
            if self._ranks.final_flush_ok(status, meta):  # not across ranks after an error
                self._flush_device()
            self._writer.set_meta(status=status, ended_at=time.time(),
                                  rejected_values=self.rejected_values,
                                  internal_errors=dict(self.errors), **meta)
            self._finished = True
            if self.sync is not None:  # the rest to the team store, for a bounded time
                self.sync.drain(self._writer)
            self._writer.close()
            if self.sync is not None:
                self.sync.close()
            self.alerts.close(timeout=2.0)  # give the webhook the last alerts
            from trainspect.integrations.exporters import close_all

            close_all(self._exporters)  # after the writer: the last batch is mirrored
        except Exception as err:
            self._internal_error("finish", err)
        finally:
            self._finished = True
            lifecycle.unregister(self)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.finish()
        else:
            self.finish("failed", error=f"{exc_type.__name__}: {exc}")

    def __repr__(self) -> str:
        return f"Run({self.project}/{self.id}, step={self._step}, path={str(self.path)!r})"

    def _internal_error(self, where: str, err: BaseException) -> None:
        """A bug or bad state inside trainspect: count it, log it once, keep training."""
        self.errors[where] = self.errors.get(where, 0) + 1
        if self.errors[where] == 1:
            log.warning("trainspect: internal error in %s (%s: %s); training goes on, "
                        "further errors here are counted", where, type(err).__name__, err,
                        exc_info=log.isEnabledFor(logging.DEBUG))


def init(
    project: str = "default",
    name: str | None = None,
    config: dict[str, Any] | None = None,
    dir: str | Path | None = None,
    **kwargs: Any,
) -> Run:
    """Start (or with `resume=run_id`, continue) a run. See `Run` for the arguments."""
    return Run(project, name, config, dir, **kwargs)
