"""Rerun the commands whose output the README prints, and rewrite those blocks.

    python studies/readme_outputs.py                 # rerun every marked command, rewrite
    python studies/readme_outputs.py --check         # exit 1, with a diff, if a checked block
                                                     # is stale
    python studies/readme_outputs.py --only-checked  # rerun only the fast, checked blocks

A printed output in the README is marked by an HTML comment right above its fenced block::

    <!-- output: autoclip probe examples/my_task.py:make_task | lines=1-12 | check -->
    ```
    ...
    ```

``lines=`` keeps some lines of the output (1-based; ``a-b`` a range, ``-k`` the k-th from the
end), with ``...`` where lines were left out; ``check`` marks a block that
``tests/test_readme.py`` reruns on every test run (choose deterministic, fast commands for
those). Commands run from a fresh temporary directory (so ``./autoclip.journal`` and
``./autoclip-out`` start empty), with ``examples/`` and ``studies/`` paths resolved against
the repository, one torch thread, and only stdout captured (progress bars go to stderr).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = re.compile(r"^<!-- output: (?P<spec>.+?) -->\n```[a-z]*\n(?P<body>.*?)^```$", re.M | re.S)
REPO_PATHS = ("examples/", "studies/", "tests/")


@dataclass(frozen=True)
class Block:
    command: str
    lines: str | None
    check: bool
    start: int  # span of the block's body in the README text
    end: int
    body: str


def blocks(text: str) -> list[Block]:
    """The marked output blocks of a README text, in order."""
    out = []
    for m in MARK.finditer(text):
        parts = [p.strip() for p in m.group("spec").split("|")]
        opts = dict(p.split("=", 1) if "=" in p else (p, "") for p in parts[1:])
        unknown = set(opts) - {"lines", "check"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} in marker {m.group(0)!r}")
        out.append(
            Block(
                parts[0],
                opts.get("lines"),
                "check" in opts,
                m.start("body"),
                m.end("body"),
                m.group("body"),
            )
        )
    return out


def select(output: str, spec: str | None) -> str:
    """The lines of ``output`` that ``spec`` keeps, ``...`` marking a gap."""
    lines = output.rstrip("\n").split("\n")
    if not spec:
        return "\n".join(lines) + "\n"
    n = len(lines)
    picked: list[int] = []
    for token in spec.split(","):
        token = token.strip()
        if re.fullmatch(r"\d+-\d+", token):
            a, b = (int(x) for x in token.split("-"))
            picked.extend(range(a - 1, min(b, n)))
        elif re.fullmatch(r"-?\d+", token):
            i = int(token)
            picked.append(i - 1 if i > 0 else n + i)
        else:
            raise ValueError(f"bad lines= token {token!r}: use a-b, k or -k")
    kept: list[str] = []
    for j, i in enumerate(picked):
        if j and i != picked[j - 1] + 1:
            kept.append("...")
        kept.append(lines[i])
    return "\n".join(kept) + "\n"


def run(command: str, timeout: float = 900) -> str:
    """stdout of ``command`` (``autoclip ...``) run from a fresh temporary directory."""
    argv = shlex.split(command)
    if argv[0] == "autoclip":
        argv = [sys.executable, "-m", "autoclip", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    argv = [str(ROOT / a) if a.startswith(REPO_PATHS) else a for a in argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for var in ("AUTOCLIP_OUT", "AUTOCLIP_STORAGE", "AUTOCLIP_STUDY"):
        env.pop(var, None)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout
        )
    if done.returncode != 0:
        raise RuntimeError(f"{command!r} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout.replace(str(ROOT) + "/", "")


NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?")
REL = 0.02  # printed numbers within 2% of each other are the same output


def same(a: str, b: str, rel: float = REL) -> bool:
    """Whether two outputs say the same: the same text between their numbers, and each
    number within ``rel`` of the other's. Training on another CPU (other vector kernels)
    rounds differently, and a percentile printed to 3 digits moves in its last one; a change
    of what the code does moves more than that, or changes the words.

    >>> same("p99 0.63, loss 0.914 -> 0.981", "p99 0.629, loss 0.914 -> 0.982")
    True
    >>> same("max_norm 0.085", "max_norm 0.095"), same("at 2.7 it spiked", "at 2.7 it diverged")
    (False, False)
    """
    if NUMBER.split(a) != NUMBER.split(b):
        return False
    xs, ys = NUMBER.findall(a), NUMBER.findall(b)
    return all(
        abs(float(x) - float(y)) <= rel * max(abs(float(x)), abs(float(y)))
        for x, y in zip(xs, ys, strict=True)
    )


def render(text: str, only_checked: bool = False) -> tuple[str, list[tuple[Block, str]]]:
    """README text with the (checked, or all) blocks rerun; and the stale blocks, each with
    its fresh output. A block whose fresh output is :func:`same` as its text is kept as it
    is (a rerun on another machine does not rewrite it)."""
    changed = []
    pieces, pos = [], 0
    for b in blocks(text):
        if only_checked and not b.check:
            continue
        fresh = select(run(b.command), b.lines)
        stale = not same(fresh, b.body)
        pieces += [text[pos : b.start], fresh if stale else b.body]
        pos = b.end
        if stale:
            changed.append((b, fresh))
    pieces.append(text[pos:])
    return "".join(pieces), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python studies/readme_outputs.py")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    parser.add_argument("--only-checked", action="store_true", help="rerun the checked blocks")
    parser.add_argument("--readme", type=Path, default=README, help="the file to rewrite")
    args = parser.parse_args(argv)
    readme = args.readme
    text = readme.read_text()
    new, changed = render(text, only_checked=args.only_checked or args.check)
    if args.check:
        for b, fresh in changed:
            print(f"stale output of `{b.command}`:")
            sys.stdout.writelines(
                difflib.unified_diff(b.body.splitlines(True), fresh.splitlines(True))
            )
        return 1 if changed else 0
    readme.write_text(new)
    print(f"rewrote {len(changed)} of {len(blocks(text))} output blocks in {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
