"""The sweep report in three parts: collect (``collect``: the tracker's read side or Ray's results, into the
``model``), analyse (``analyse``), render (``render``: HTML; ``text``: the printed summary); ``publish`` puts the
page beside the Ray results and on the sweep's parent run; ``python -m sweep.report NAME`` is its CLI."""
