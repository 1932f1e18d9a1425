"""An empty token (an unset variable: `--token "$TOKEN"`) is refused with one clear error,
never served: a blank cookie would satisfy it."""

from __future__ import annotations

import pytest

import trainspect as ts
from trainspect.cli import main


@pytest.mark.parametrize("token", ["", "   "])
@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_an_empty_token_is_refused_before_serving(runs, host, token, capsys):
    from trainspect.dashboard.server import start

    server = None
    with pytest.raises(ts.TrainspectError, match="--token"):
        server = start(runs, host=host, port=0, token=token)
    if server is not None:  # pragma: no cover - only when the check is missing
        server.stop()
    assert main(["ui", "--host", host, "--port", "0", "--token", token]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token" in err and "empty" in err


def test_the_guard_itself_refuses_an_empty_token():
    from trainspect.dashboard.auth import TokenGuard

    with pytest.raises(ts.TrainspectError, match="empty"):
        TokenGuard(app=None, token="")
