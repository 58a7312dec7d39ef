"""Docstring math as plain text, for the console (``binbench show estimator NAME``).

Estimator docstrings write their equations in LaTeX as reStructuredText math, ``.. math::`` blocks and
``:math:`...``` roles (as larq's quantizers do), so that documentation tools typeset them. :func:`to_text` turns
them into the plain notation a terminal shows (``\\frac{\\partial L}{\\partial x}`` becomes ``dL/dx``, a ``cases``
environment one line per case). It knows the LaTeX subset the docstrings use; ``strict=False`` (the console)
leaves a block it cannot read as it is written, ``strict=True`` (the tests) raises, so a docstring that uses an
unknown command is found before a user sees it raw. No torch import: the CLI stays fast.
"""

from __future__ import annotations

import re

_MARK, _QUAD = "\0", "\x02"
#: an equation longer than this is broken at its \quad separators, one part per line
WIDTH = 100
#: commands that stand for a word or a symbol (Greek letters are written as their names)
SYMBOLS = {
    "partial": "d", "cdot": "*", "times": "x", "odot": "*", "le": "<=", "leq": "<=", "ge": ">=", "geq": ">=",
    "ne": "!=", "neq": "!=", "approx": "~", "sim": "~", "in": "in", "pm": "+-", "infty": "inf", "to": "->",
    "rightarrow": "->", "quad": _QUAD, "qquad": _QUAD, "lvert": "|", "rvert": "|", "top": "T", "mid": "|",
    "ldots": "...", "dots": "...", "cdots": "...", "sum": "sum", "prod": "prod", "max": "max", "min": "min",
    "ln": "ln", "log": "log", "exp": "exp", "sin": "sin", "cos": "cos", "tanh": "tanh", "left": "", "right": "",
    "big": "", "Big": "", "lfloor": "floor(", "rfloor": ")", "lceil": "ceil(", "rceil": ")", "mapsto": "->",
    ",": "", ";": " ", ":": " ", "!": "", " ": " ", "{": "{", "}": "}", "|": "||", "%": "%", "_": "_", "&": "&",
}
GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "eta", "theta", "kappa", "lambda", "mu", "nu",
         "xi", "pi", "rho", "sigma", "tau", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Sigma", "Phi",
         "Omega")
#: commands with one braced argument: how the argument is shown
ONE_ARG = {
    "operatorname": "{}", "mathrm": "{}", "text": "{}", "textrm": "{}", "texttt": "{}", "mathcal": "{}",
    "mathbf": "{}", "boldsymbol": "{}", "mathbb": "{}", "sqrt": "sqrt({})", "hat": "{}_hat", "bar": "{}_bar",
    "tilde": "{}_tilde",
}


class LatexError(ValueError):
    """A LaTeX construct :func:`to_text` does not know."""


def _wrap(text: str) -> str:
    """``text`` as an operand of / ^ _: in parentheses unless it is one term (no space or operator outside
    parentheses, a leading minus aside)."""
    depth = 0
    for i, c in enumerate(text):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0 and c in " +-*/=<>," and not (i == 0 and c == "-"):
            return f"({text})"
    return text


class _Reader:
    """Renders one equation; ``cases`` collects the rows of a cases environment, left as a mark in the text."""

    def __init__(self, src: str):
        self.s, self.i = src, 0
        self.cases: list[list[tuple[str, str]]] = []

    def group(self, stop: str | None = None) -> str:
        out = []
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == "}" and stop == "}":
                return "".join(out)
            if c == "{":
                out.append(self.group("}"))
            elif c in "^_":
                out.append(c + _wrap(self.arg()))
            elif c == "\\":
                out.append(self.command())
            elif c == "~":
                out.append(" ")
            elif c == "&":
                out.append("  ")
            else:
                out.append(c)
        if stop is not None:
            raise LatexError(f"unbalanced braces in {self.s!r}")
        return "".join(out)

    def arg(self) -> str:
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1
        if self.i >= len(self.s):
            raise LatexError(f"a command lacks its argument in {self.s!r}")
        c = self.s[self.i]
        self.i += 1
        return self.group("}") if c == "{" else self.command() if c == "\\" else c

    def command(self) -> str:
        m = re.compile(r"[A-Za-z]+|.").match(self.s, self.i)
        if m is None:
            raise LatexError(f"a lone backslash ends {self.s!r}")
        name, self.i = m.group(0), m.end()
        if name == "partial":  # d, joined to what it differentiates: dL/dx
            while self.i < len(self.s) and self.s[self.i] == " ":
                self.i += 1
        if name in SYMBOLS:
            return SYMBOLS[name]
        if name in GREEK:
            return name
        if name in ONE_ARG:
            return ONE_ARG[name].format(self.arg())
        if name == "frac":
            num = self.arg()
            return f"{_wrap(num)}/{_wrap(self.arg())}"
        if name == "begin" and self.arg() == "cases":
            return self.begin_cases()
        raise LatexError(f"unknown LaTeX command \\{name} in {self.s!r}")

    def begin_cases(self) -> str:
        end = self.s.find("\\end{cases}", self.i)
        if end < 0:
            raise LatexError(f"\\begin{{cases}} without \\end{{cases}} in {self.s!r}")
        rows = []
        for row in re.split(r"\\\\", self.s[self.i:end]):
            value, _, cond = row.partition("&")
            rows.append((" ".join(_Reader(value).group().split()), " ".join(_Reader(cond).group().split())))
        self.i = end + len("\\end{cases}")
        self.cases.append(rows)
        return f"{_MARK}{len(self.cases) - 1}{_MARK}"


def equation(src: str) -> list[str]:
    """One LaTeX equation as text lines: more than one where it holds a cases environment, or where it is longer
    than :data:`WIDTH` and has \\quad separators (one part per line)."""
    reader = _Reader(src)
    text = reader.group().strip()
    parts = [p.strip() for p in text.split(_QUAD)] if len(text) > WIDTH else [text.replace(_QUAD, "   ")]
    return [line for part in parts for line in _cases_layout(part, reader.cases)]


def _cases_layout(text: str, cases: list[list[tuple[str, str]]]) -> list[str]:
    """A cases environment's rows one per line, aligned under its brace; other text as it is."""
    if _MARK not in text:
        return [text]
    prefix, index, rest = text.split(_MARK, 2)
    rows = cases[int(index)]
    width = max(len(v) for v, _ in rows)
    lines = [f"{' ' * len(prefix) if k else prefix}{{ {v.ljust(width)}   {c}".rstrip() for k, (v, c) in enumerate(rows)]
    lines[-1] += rest
    return lines


def _math_block(lines: list[str], start: int, strict: bool) -> tuple[list[str], int]:
    """The ``.. math::`` block whose directive is ``lines[start]``, as text; and the index after it."""
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    body = "\n".join(lines[start + 1:end]).strip("\n")
    equations = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
    try:
        rendered = [line for eq in equations for line in equation(eq)]
    except LatexError:
        if strict:
            raise
        return lines[start:end], end
    blank = [""] if end < len(lines) else []
    return [" " * (indent + 4) + line for line in rendered] + blank, end


def _roles(line: str, strict: bool) -> str:
    def inline(m: re.Match) -> str:
        try:
            return " / ".join(equation(m.group(1)))
        except LatexError:
            if strict:
                raise
            return m.group(0)

    return re.sub(r":math:`([^`]*)`", inline, line)


def to_text(doc: str, strict: bool = False) -> str:
    """``doc`` with its ``.. math::`` blocks and ``:math:`` roles rendered as plain text (see the module's
    docstring); the rest unchanged."""
    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == ".. math::":
            block, i = _math_block(lines, i, strict)
            out.extend(block)
        else:
            out.append(_roles(lines[i], strict))
            i += 1
    return "\n".join(out)
