"""gan/progress.py: plain periodic lines where no terminal reads the output, and silent tracking outside
`reported`."""

from __future__ import annotations

import io

from gan import progress


def test_plain_progress_writes_about_twenty_lines_and_the_last(monkeypatch):
    out = io.StringIO()
    bar = progress.PlainProgress(700, unit="step", file=out)
    for step in range(1, 701):
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss_d=f"{step / 700:.3f}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 20  # every 35 steps: 35, 70, ..., 700
    assert (
        lines[0] == "35/700 steps (5%) loss_d=0.043" and lines[-1] == "700/700 steps (100%) loss_d=0.986"
    )  # the postfix of the last log before


def test_a_resumed_bar_starts_at_its_step_and_close_shows_an_unfinished_count():
    out = io.StringIO()
    bar = progress.PlainProgress(100, initial=50, desc="run", file=out)
    for _ in range(7):
        bar.update(1)
    bar.close()  # interrupted at 57
    assert out.getvalue().splitlines() == ["run: 55/100 steps (55%)", "run: 57/100 steps (57%)"]


def test_tracked_is_silent_outside_reported_and_plain_inside_when_stderr_is_no_terminal(capsys):
    with progress.tracked(10) as advance:
        advance(10)
    assert capsys.readouterr().err == ""
    with progress.reported("generating 10 samples"), progress.tracked(10) as advance:
        for _ in range(5):
            advance(2)
    assert capsys.readouterr().err.splitlines() == [
        f"generating 10 samples: {n}/10 images ({10 * n}%)" for n in (2, 4, 6, 8, 10)
    ]
