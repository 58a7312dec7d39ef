"""A generic name -> class registry with wildcards, suggestions and entry-point plugins (timm style)."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from bench.errors import BinbenchError, UnknownNameError, did_you_mean

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    source: str  # "builtin", "entry point NAME (DIST VERSION)" or "module MOD"
    package: str = ""  # the distribution that holds it ("binbench" for a built-in); "" for a local module
    version: str = ""  # that distribution's version


class Registry(Generic[T]):
    """Holds named objects of one kind (estimators, models, datasets).

    Built-ins are imported lazily from ``builtin_modules``; third-party plugins are found through the
    entry-point group ``entry_point_group`` (each entry point names a module to import, or an object).
    """

    def __init__(self, kind: str, builtin_modules: tuple[str, ...], entry_point_group: str | None = None):
        self.kind = kind
        self._builtin_modules = builtin_modules
        self._group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False
        self._loading = False
        self._source = "builtin"
        self._dist = ("", "")  # (name, version) of the distribution whose entry point is being loaded
        self.plugin_errors: list[str] = []

    # -- registration ---------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a second, different object with that name is an error."""
        if not isinstance(name, str) or not name:
            raise BinbenchError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        old = self._entries.get(name)
        if old is not None and not _same_object(old.obj, obj):
            raise BinbenchError(
                f"duplicate {self.kind} name {name!r}: already registered by {_where(old.obj)} ({old.source}); "
                f"rename the one in {_where(obj)}"
            )
        source = self._source if self._source != "builtin" or _is_builtin(obj) else f"module {obj.__module__}"
        package, ver = self._dist if self._source != "builtin" else (("binbench", _binbench_version())
                                                                     if _is_builtin(obj) else ("", ""))
        self._entries[name] = Entry(name, obj, source, package, ver)
        with contextlib.suppress(AttributeError, TypeError):
            obj.name = name  # type: ignore[attr-defined]

    # -- loading ----------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for mod in self._builtin_modules:
                importlib.import_module(mod)
            if self._group:
                self._load_entry_points()
        finally:
            self._loading = False
        self._loaded = True

    def _load_entry_points(self) -> None:
        for ep in entry_points(group=self._group):
            dist = getattr(ep, "dist", None)
            label = f"entry point {ep.name}" + (f" ({dist.name} {dist.version})" if dist else "")
            self._source = label
            self._dist = (dist.name, dist.version) if dist else ("", "")
            try:
                obj = ep.load()
                if not inspect.ismodule(obj) and ep.name not in self._entries:
                    self.add(ep.name, obj)
            except BinbenchError:
                raise
            except Exception as exc:  # a broken plugin must not take the built-ins down with it
                msg = f"could not load {self.kind} plugin {ep.value!r} ({label}): {type(exc).__name__}: {exc}"
                self.plugin_errors.append(msg)
                warnings.warn(msg, stacklevel=2)
            finally:
                self._source, self._dist = "builtin", ("", "")

    # -- queries ----------------------------------------------------------------------------------
    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style wildcard pattern ('re*', '*_sign')."""
        self._ensure_loaded()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entry(self, name: str) -> Entry[T]:
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, known)}; "
                f"`binbench list {self.kind}s` shows all {len(known)}"
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unregister(self, name: str) -> None:
        """Remove a name (tests and interactive sessions that redefine a plugin)."""
        self._entries.pop(name, None)


def _binbench_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("binbench")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "source"


def _is_builtin(obj: Any) -> bool:
    mod = getattr(obj, "__module__", "") or ""
    return mod.split(".")[0] in {"bench", "estimators"}


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _same_object(a: Any, b: Any) -> bool:
    # re-importing a module (reload, tests) registers an equal class again: that is not a clash
    return a is b or (_where(a) == _where(b))
