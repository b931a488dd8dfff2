"""``--profile``: samples the server process with py-spy while a load runs, and sums the
samples by function and by source file, so a missed target comes with what the CPU did.

py-spy is not a dependency of the project: it is installed into a throwaway venv,
``bench/.tools-venv`` (git-ignored), the first time ``--profile`` needs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.support import ROOT, pinned
from harness.processes import ServerProcess

TOOLS = ROOT / "bench" / ".tools-venv"
RATE = 200


def py_spy() -> str:
    found = shutil.which("py-spy") or (
        str(TOOLS / "bin" / "py-spy") if (TOOLS / "bin" / "py-spy").exists() else None
    )
    if found:
        return found
    print(
        "[bench] installing py-spy into bench/.tools-venv (throwaway; not the project's venv)",
        flush=True,
    )
    subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
    subprocess.run([str(TOOLS / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return str(TOOLS / "bin" / "py-spy")


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarize(raw: Path, seconds: float, top: int = 25) -> dict[str, Any]:
    by_func: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        match = _FRAME.match(leaf)
        file = _short(match["file"]) if match else leaf
        by_func[f"{match['func']} ({file})" if match else leaf] += count
        by_file[file] += count
        seen = set()
        for frame in frames:
            m = _FRAME.match(frame)
            name = f"{m['func']} ({_short(m['file'])})" if m else frame
            if name not in seen:
                seen.add(name)
                inclusive[name] += count

    def pct(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return (
            [(name, round(100 * c / total, 1)) for name, c in counter.most_common(n)]
            if total
            else []
        )

    return {
        "samples": total,
        "busy_percent": round(100 * total / (RATE * seconds), 1),
        "self_by_function_percent": pct(by_func, top),
        "self_by_file_percent": pct(by_file, top),
        "inclusive_percent": pct(inclusive, 40),
    }


class Profiler:
    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def during(
        self, server: ServerProcess, load: Callable[[], dict[str, Any]], seconds: float
    ) -> dict[str, Any]:
        out = Path(self.cfg.workdir) / f"py-spy-{server.pid}-{int(time.time())}.txt"
        command = pinned(
            "other",
            [py_spy(), "record", "--pid", str(server.pid), "--rate", str(RATE), "--duration",
             f"{int(seconds)}", "--format", "raw", "--nonblocking", "--output", str(out)],
        )  # fmt: skip
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            result = load()
        finally:
            spy.wait(timeout=seconds + 60)
        summary: dict[str, Any] = (
            summarize(out, seconds) if out.exists() else {"error": "py-spy wrote nothing"}
        )
        summary["load_while_profiled"] = {k: result.get(k) for k in ("rps", "p50_ms", "p99_ms")}
        summary["raw"] = str(out)
        return summary
