"""Serving one control-socket request on the reconcile thread, and its answer.

The control server (`daemon.control`) reads requests on its own threads; the daemon hands each
to its reconcile thread (`daemon.waiters`), where this module serves it: the request is
queued in the store, one full pass takes it, and the answer says what that pass did to the
devices it concerns. Part of the daemon; `daemon.service` calls `serve_request`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import structlog

from reconciler.daemon.control import Command, ControlAnswer, ControlRequest, DeviceAnswer
from reconciler.reconcile.holds import Selection
from reconciler.reconcile.maintenance import RequestOutcome, confirm_request
from reconciler.reconcile.pass_context import PassResult
from reconciler.states import DeviceState
from reconciler.store import DeviceRecord, RequestKind, Store

log = structlog.get_logger(__name__)

# The store's request for each control command (a resync is a pass, no request).
REQUEST_KINDS = {
    Command.RETRY: RequestKind.RETRY,
    Command.GC_ORPHANS: RequestKind.GC_ORPHANS,
    Command.GC_FAULTY: RequestKind.GC_FAULTY,
    Command.ADOPT: RequestKind.ADOPT,
    Command.CONFIRM_REMOVALS: RequestKind.CONFIRM_REMOVALS,
}


def serve_request(request: ControlRequest, store: Store,
                  full_pass: Callable[[], PassResult | None],
                  pass_error: Callable[[], str | None],
                  outcomes: Callable[[], Mapping[int, RequestOutcome]],
                  records: Mapping[str, DeviceRecord]) -> ControlAnswer:
    """Queue `request` in the store, run a full pass (which takes it), answer: with what
    the pass did to the request's devices, or why the pass failed (`pass_error`)."""
    kind = REQUEST_KINDS.get(request.command)
    request_id = None
    if kind is not None:
        name = request.name or "*"
        if kind is RequestKind.CONFIRM_REMOVALS:
            name = confirm_request(request.names, Selection.parse(request.selection or None))
        request_id = store.add_request(kind, name, request.thin_id)
    log.info("control.request", command=request.command.value, name=request.name or None,
             next="a full pass serves it, then it is answered")
    result = full_pass()
    if result is None:
        queued = "" if request_id is None else "; the request stays queued for the next pass"
        return ControlAnswer(ok=False, error=f"the pass failed: {pass_error()}" + queued)
    if request_id is None:
        names = sorted({*result.pending, *result.faulty})
        done = (f"full pass: {len(result.converged)} converged, {len(result.pending)} "
                f"waiting, {len(result.faulty)} Faulty")
        return ControlAnswer(ok=result.ok, done=done,
                             devices=device_answers(names, result, records),
                             error=result.source_error)
    outcome = outcomes().get(request_id)
    if outcome is None:  # taken by no pass: cannot happen while this thread owns it
        return ControlAnswer(ok=False, error="the request was not taken by the pass")
    return ControlAnswer(ok=outcome.error is None, done=outcome.done, error=outcome.error,
                         devices=device_answers(outcome.names, result, records))


def device_answers(names: Iterable[str], result: PassResult,
                   records: Mapping[str, DeviceRecord]) -> tuple[DeviceAnswer, ...]:
    """Where each named device stands after the pass."""
    answers = []
    converged = set(result.converged)
    for name in names:
        record = records.get(name)
        if record is None:
            answers.append(DeviceAnswer(name, "no such device"))
            continue
        answers.append(DeviceAnswer(
            name, str(record.state), record.error,
            converged=name in converged or record.state == DeviceState.REMOVED))
    return tuple(answers)
