"""Log lines (atoll/core/logs.py): one logfmt line per event, values bare only when safe."""

from __future__ import annotations

import logging

from atoll.core.logs import LogfmtFormatter, _q


def test_values_are_bare_only_when_they_hold_letters_digits_and_safe_marks():
    assert _q("abc-1_2.3:4/5@[6]") == "abc-1_2.3:4/5@[6]"
    assert _q("région") == "région"                        # letters of any script stay bare
    assert _q("") == '""'
    assert _q("a b") == '"a b"'
    assert _q('say "hi"\n') == '"say \\"hi\\"\\n"'
    assert _q("a=b") == '"a=b"'
    assert _q("back\\slash") == '"back\\\\slash"'


def test_a_line_names_the_time_level_logger_message_and_fields():
    f = LogfmtFormatter()
    lines = []
    for created in (1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.5):   # the second is cached, then moves
        rec = logging.LogRecord("atoll.agent", logging.INFO, __file__, 1, "request", None, None)
        rec.created, rec.msecs = created, (created % 1) * 1000
        rec.fields = {"workflow": "wf one", "ms": 1.5}
        lines.append(f.format(rec))
    assert lines == [
        'ts=2023-11-14T22:13:20.250Z level=info logger=atoll.agent msg=request workflow="wf one" ms=1.5',
        'ts=2023-11-14T22:13:20.750Z level=info logger=atoll.agent msg=request workflow="wf one" ms=1.5',
        'ts=2023-11-14T22:13:21.500Z level=info logger=atoll.agent msg=request workflow="wf one" ms=1.5']


def test_a_request_line_written_straight_reads_as_the_ordinary_one(monkeypatch, caplog):
    import io

    from atoll.core import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("INFO")
        out = io.StringIO()
        root.handlers[0].stream = out
        log = logging.getLogger("atoll.test.requests")
        monkeypatch.setattr(logs.time, "time", lambda: 1_700_000_000.25)
        logs.event(log, logging.INFO, "request", request_id="r1", workflow="wf one", ms=1.5)
        logs.event(log, logging.DEBUG, "not written", request_id="r2")
        rec = logging.LogRecord(log.name, logging.INFO, __file__, 1, "request", None, None)
        rec.created, rec.msecs = 1_700_000_000.25, 250.0
        rec.fields = {"request_id": "r1", "workflow": "wf one", "ms": 1.5}
        assert out.getvalue() == root.handlers[0].formatter.format(rec) + "\n"
        closed = io.StringIO()
        closed.close()
        root.handlers[0].stream = closed
        logs.event(log, logging.INFO, "request", request_id="r1")        # a closed stream: the caller goes on
        root.handlers[0].stream = out
        # any other set-up takes the ordinary path: here pytest's capture handler sees the line
        root.addHandler(caplog.handler)
        logs.event(log, logging.WARNING, "request failed", request_id="r3")
        assert [(r.getMessage(), r.fields) for r in caplog.records] == [("request failed", {"request_id": "r3"})]
        assert out.getvalue().count("\n") == 2 and "request_id=r3" in out.getvalue()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_no_value_carries_a_control_character_or_line_separator_into_the_line():
    """Node names, ids and request ids reach the log from strangers (a refused Register logs
    them): a raw CR, ESC sequence or U+2028 forged records for a terminal or for any reader that
    splits lines on them. Every C0 and C1 control, DEL, U+2028 and U+2029 is escaped, so one
    event is one line by every reader's count, and the escapes read back to the value."""
    import codecs

    hostile = "\rts=2026-01-01T00:00:00Z level=info msg=\"agent registered\"\x1b[2K\u2028x\u2029\x85\x7f\x00\t\n"
    rec = logging.LogRecord("atoll.coordinator", logging.WARNING, __file__, 1, "registration refused", None, None)
    rec.fields = {"node": hostile, "id": "ok-id"}
    line = LogfmtFormatter().format(rec)
    assert len(line.splitlines()) == 1 and line.isprintable()
    assert 'node="\\rts=' in line and "\\x1b[2K\\u2028x\\u2029\\x85\\x7f\\x00\\t\\n" in line
    value = line.split('node="', 1)[1].rsplit('" id=', 1)[0]
    assert codecs.decode(value.encode("ascii"), "unicode_escape") == hostile


def test_an_exception_is_logged_by_its_type_and_message_not_its_tracebacks_last_line():
    """A gRPC error's text ends with a lone ">", which is all the line said of it before."""
    class Multi(Exception):
        def __str__(self):
            return "<Error of RPC that terminated with:\n\tstatus = UNAVAILABLE\n\tdetails = \"gone\"\n>"

    try:
        raise Multi()
    except Multi:
        import sys

        rec = logging.LogRecord("atoll.coordinator", logging.ERROR, __file__, 1, "profile failed", None, sys.exc_info())
    line = LogfmtFormatter().format(rec)
    assert len(line.splitlines()) == 1
    assert 'exc="Multi: <Error of RPC that terminated with:\\n\\tstatus = UNAVAILABLE\\n\\tdetails = \\"gone\\"\\n>"' in line
