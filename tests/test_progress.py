"""utils.progress: a tqdm bar on a terminal, a plain line every 10 % or 30 s in a log file or a pipe."""
import io

from tqdm import tqdm

from utils.progress import PlainProgress, progress_bar


class Clock:
    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_plain_progress_prints_a_line_every_ten_percent():
    out = io.StringIO()
    bar = PlainProgress(200, desc="epoch 0", file=out, clock=Clock(0.01))
    for _ in range(200):
        bar.set_postfix_str("loss 1.2345", refresh=False)
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("epoch 0: 20/200 (10%), ") and lines[0].endswith(", loss 1.2345")
    assert lines[-1].startswith("epoch 0: 200/200 (100%)")
    assert all(line == line.rstrip() for line in lines)


def test_plain_progress_prints_every_thirty_seconds_and_the_final_count():
    out = io.StringIO()
    bar = PlainProgress(10_000, desc="eval", initial=100, file=out, clock=Clock(7.0))
    for _ in range(9):
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    # the clock moves 7 s a call (twice per printed line): a line about every 30 s, then the last count
    assert 2 <= len(lines) <= 4 and lines[-1].startswith("eval: 109/10000 (1%)")
    assert [int(line.split()[1].split("/")[0]) for line in lines] == sorted({int(line.split()[1].split("/")[0])
                                                                             for line in lines})


def test_progress_bar_is_tqdm_on_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress_bar(5, desc="x", file=Terminal()), tqdm)
    plain = progress_bar(5, desc="x", file=io.StringIO())
    assert isinstance(plain, PlainProgress)
    plain.write("FAILED a.avi: unreadable")
    assert plain.file.getvalue() == "FAILED a.avi: unreadable\n"
