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
