"""What `kdpipe run` shows while the pipeline runs. Everything KFP's local runner and the steps print goes to the
run's log file; the lines in it that say a step started or ended (kdpipe.step) become one line per step, and the
steps' progress lines (kdpipe.progress) a progress bar in a terminal, or a few plain lines when the output is
not a terminal. `--verbose` also streams the whole log."""

from __future__ import annotations

import io
import os
import re
import sys
import threading

from kdpipe.progress import LINE as PROGRESS

STEP = re.compile(r"kdpipe: step (?P<name>\w+) (?:(?P<started>started)|done in (?P<done>[\d.]+) s|"
                  r"failed after (?P<failed>[\d.]+) s: (?P<why>.*))$")


class RunConsole(io.TextIOBase):
    """A text stream for sys.stdout and sys.stderr while the pipeline runs: writes go to `log`, and are read for
    step and progress lines as they come (tasks of a ParallelFor write from threads: one lock)."""

    def __init__(self, log, out=None, verbose: bool = False):
        self.log, self.out, self.verbose = log, out or sys.__stderr__, verbose
        self.tty = self.out.isatty() and not verbose
        self.lock, self.pending, self.bars, self.running = threading.Lock(), "", {}, []
        self.shown: dict[tuple, int] = {}  # plain output: the last quarter shown of each loop's progress

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            if self.log is None:  # the run is over: a logging handler made during it still holds this stream
                return self.out.write(text)
            self.log.write(text)
            if self.verbose:
                self.out.write(text)
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                self._read(line.strip())
        return len(text)

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush()
        self.out.flush()

    def detach(self) -> None:
        """The run is over: bars closed, the log flushed and let go; later writes go to `out`."""
        with self.lock:
            for bar in self.bars.values():
                bar.close()
            self.bars.clear()
            self.log.flush()
            self.log = None

    def _read(self, line: str) -> None:
        step, progress = STEP.search(line), PROGRESS.search(line)
        if step and step["started"]:
            self._started(step["name"])
        elif step and step["done"]:
            self._ended(step["name"], "✓", f"{float(step['done']):7.1f} s")
        elif step:
            why = step["why"] if len(step["why"]) <= 100 else step["why"][:100] + "…"
            self._ended(step["name"], "✗", f"{float(step['failed']):7.1f} s  {why}")
        elif progress and self.running:
            self._progress(self.running[-1], progress["what"], int(progress["done"]), int(progress["total"]),
                           progress["unit"])

    def _say(self, text: str) -> None:
        if self.verbose:
            return  # the log lines themselves are on the screen
        if self.bars:
            from tqdm import tqdm

            tqdm.write(text, file=self.out)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def _started(self, name: str) -> None:
        self.running.append(name)
        if self.tty and name not in self.bars:
            from tqdm import tqdm

            self.bars[name] = tqdm(desc=f"  {name}", total=None, file=self.out, leave=False, ncols=self._columns(),
                                   bar_format="{desc}  {elapsed}")

    def _columns(self) -> int:
        """The terminal's width; a pseudo-terminal nobody sized (script, some CI runners) says 0: 100 then."""
        try:
            return os.get_terminal_size(self.out.fileno()).columns or 100
        except (OSError, ValueError):
            return 100

    def _ended(self, name: str, mark: str, text: str) -> None:
        if name in self.running:
            self.running.remove(name)
        bar = self.bars.pop(name, None) if name not in self.running else None  # parallel workers share a bar
        if bar is not None:
            bar.close()
        self._say(f"{mark} {name:<20} {text}")

    def _progress(self, name: str, what: str, done: int, total: int, unit: str) -> None:
        bar = self.bars.get(name)
        if bar is not None:
            if bar.total != total:
                bar.reset(total=total)
                bar.bar_format = None  # tqdm's own: |█████     | 40/100 [00:03<00:04, 12.1it/s]
                bar.unit = f" {unit}"
            bar.set_description(f"  {name}: {what}", refresh=False)
            bar.n = done
            bar.refresh()  # progress lines come a second apart at most: each is drawn
        elif not self.tty and not self.verbose:
            quarter = 4 * done // max(total, 1)
            if self.shown.get((name, what), 0) < quarter < 4:  # 25, 50, 75 %: the end is the step's line
                self.shown[(name, what)] = quarter
                self._say(f"  {name}: {what} {done}/{total} {unit}")
