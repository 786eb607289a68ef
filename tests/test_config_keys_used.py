"""Every configuration key is read by the daemon.

A key that is validated and then ignored is worse than an unknown-key error: the field
engineer sets ``rsu.wait_time = 4``, the file loads, and the RSU still gets 2. So this test
walks every field of every pydantic model reachable from :class:`~laned.config.Config`
(device profiles included) and looks, in the source of ``laned/`` (not ``laned/sim/``: the
emulators read the profiles to *emulate* a device, which says nothing about the daemon
honouring them), for a read of it.

What counts as a read of the key ``a.b.c`` (field ``c`` of the model at ``a.b``):

* an attribute read ``….c`` (or ``getattr(…, "c")``) …
* … that is not inside one of the model's validators (validating is not using), nor inside
  one of its methods or properties that nothing outside the model calls (``div_factor_for``
  reading ``obu_div_factors`` is no use while nobody calls ``div_factor_for``);
* … and, when ``c`` is also the name of something else in laned (``format`` is a ``str``
  method, ``wait_time`` a field of the C0 message), whose receiver is the parent: an
  expression naming ``b`` (``cfg.rsu.wait_time``), a local bound from one (``r = cfg.rsu;
  r.wait_time``), ``self`` inside the model, or a parameter/attribute typed as the model.

The few keys read in a way this cannot see are in :data:`READ_UNSEEN`, each with the reason.
"""

from __future__ import annotations

import ast
import builtins
import logging
import pathlib
import types
import typing
from collections import defaultdict
from dataclasses import dataclass, field

from pydantic import BaseModel

import laned
from laned.config import Config

PACKAGE = pathlib.Path(laned.__file__).parent
NOT_THE_DAEMON = {PACKAGE / "sim"}

# Keys the daemon reads in a way the AST scan cannot see. Each needs a reason; keep it short.
READ_UNSEEN: dict[str, str] = {}


# -- the keys ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    path: tuple[str, ...]  # ("devices", "io", "profile", "inputs", "*", "pin"); "*" is any table key
    model: type[BaseModel]  # the model the field is declared on (or inherited by)

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def parent(self) -> str:
        """The nearest named table above the key ("inputs" for inputs.*.pin)."""
        return next(p for p in reversed(self.path[:-1]) if p != "*") if len(self.path) > 1 else ""

    def __str__(self) -> str:
        return ".".join(self.path)


def _models_in(annotation: object) -> tuple[list[type[BaseModel]], bool]:
    """The models inside a field's annotation, and whether they sit under a table key."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    found: list[type[BaseModel]] = []
    keyed = False
    for arg in typing.get_args(annotation):
        inner, inner_keyed = _models_in(arg)
        found += inner
        keyed = keyed or inner_keyed
    if found and typing.get_origin(annotation) not in (typing.Union, types.UnionType, typing.Annotated):
        keyed = True  # dict[Signal, InputPoint], list[…]: one model per table key
    return found, keyed


def config_keys(model: type[BaseModel] = Config, path: tuple[str, ...] = ()) -> list[Key]:
    keys: list[Key] = []
    for name, info in model.model_fields.items():
        models, keyed = _models_in(info.annotation)
        if not models:
            keys.append(Key(path + (name,), model))
        for sub in models:
            keys += config_keys(sub, path + (name,) + (("*",) if keyed else ()))
    return keys


def _config_models(model: type[BaseModel] = Config, seen: set[type[BaseModel]] | None = None) -> set[type[BaseModel]]:
    seen = set() if seen is None else seen
    if model not in seen:
        seen.add(model)
        for info in model.model_fields.values():
            for sub in _models_in(info.annotation)[0]:
                _config_models(sub, seen)
    return seen


MODELS = _config_models()
MODEL_NAMES = {m.__name__ for m in MODELS} | {
    base.__name__ for m in MODELS for base in m.__mro__
    if isinstance(base, type) and issubclass(base, BaseModel) and base is not BaseModel
}


# -- the source -------------------------------------------------------------------------------

@dataclass
class Read:
    attr: str
    receiver: ast.expr
    module: str
    cls: str | None  # the class whose body holds the read (outermost), None at module level
    func: str | None  # the method or function (outermost within cls)
    scope: Scope


@dataclass
class Scope:
    """One function (nested functions included): what its local names are bound from."""

    bindings: dict[str, list[ast.expr]] = field(default_factory=lambda: defaultdict(list))
    typed: dict[str, str] = field(default_factory=dict)  # parameter -> annotation text
    self_class: str | None = None


@dataclass
class Source:
    reads: list[Read] = field(default_factory=list)
    # (module, class) -> method name -> is a validator
    methods: dict[tuple[str, str], dict[str, bool]] = field(default_factory=lambda: defaultdict(dict))
    # (module, class) -> self attribute -> expressions it is assigned from (with their scope)
    self_attrs: dict[tuple[str, str], dict[str, list[tuple[ast.expr, Scope]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    defined_elsewhere: set[str] = field(default_factory=set)  # names that are not config keys


def _is_validator(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name.endswith("validator"):
            return True
    return False


def _targets(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [n for elt in node.elts for n in _targets(elt)]
    if isinstance(node, ast.Starred):
        return _targets(node.value)
    return []


class _Scanner(ast.NodeVisitor):
    def __init__(self, src: Source, module: str, daemon: bool) -> None:
        self.src, self.module, self.daemon = src, module, daemon
        self.cls: str | None = None
        self.func: str | None = None
        self.scope = Scope()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if self.cls is not None or self.func is not None:  # a class inside a function or class
            self.generic_visit(node)
            return
        config_model = node.name in MODEL_NAMES
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and not config_model:
                self.src.defined_elsewhere.add(stmt.target.id)
            elif isinstance(stmt, ast.Assign) and not config_model:
                for t in stmt.targets:
                    self.src.defined_elsewhere.update(_targets(t))
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.src.methods[(self.module, node.name)][stmt.name] = _is_validator(stmt)
        self.cls = node.name
        self.generic_visit(node)
        self.cls = None

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.src.defined_elsewhere.add(node.name)
        if self.func is not None:  # nested: part of the outer function's scope
            self._params(node)
            self.generic_visit(node)
            return
        self.func, self.scope = node.name, Scope(self_class=self.cls)
        self._params(node)
        self.generic_visit(node)
        self.func, self.scope = None, Scope()

    def _params(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
            if arg.annotation is not None:
                self.scope.typed[arg.arg] = ast.unparse(arg.annotation)

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def _bind(self, target: ast.expr, value: ast.expr) -> None:
        for name in _targets(target):
            self.scope.bindings[name].append(value)
        if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
                and self.cls is not None):
            self.src.self_attrs[(self.module, self.cls)][target.attr].append((value, self.scope))
            self.src.defined_elsewhere.add(target.attr)

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._bind(t, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._bind(node.target, node.value)
        if isinstance(node.target, ast.Name) and self.func is not None:
            self.scope.typed[node.target.id] = ast.unparse(node.annotation)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._bind(node.target, node.value)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        self._bind(node.target, node.iter)
        self.generic_visit(node)

    visit_AsyncFor = visit_For

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self._bind(node.target, node.iter)
        self.generic_visit(node)

    def visit_withitem(self, node: ast.withitem) -> None:
        if node.optional_vars is not None:
            self._bind(node.optional_vars, node.context_expr)
        self.generic_visit(node)

    def _read(self, attr: str, receiver: ast.expr) -> None:
        if self.daemon:
            self.src.reads.append(Read(attr, receiver, self.module, self.cls, self.func, self.scope))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            self._read(node.attr, node.value)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            self._read(node.args[1].value, node.args[0])
        self.generic_visit(node)


def package_sources() -> list[tuple[str, str, bool]]:
    """(module, source text, is part of the daemon) for every module of laned."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        daemon = not any(parent in NOT_THE_DAEMON for parent in path.parents)
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out.append((module, path.read_text(encoding="utf-8"), daemon))
    return out


def scan(sources: list[tuple[str, str, bool]]) -> Source:
    src = Source()
    for module, text, daemon in sources:
        _Scanner(src, module, daemon).visit(ast.parse(text, module))
    for kind in (str, bytes, int, float, dict, list, tuple, set, pathlib.Path, logging.LogRecord, logging.Handler):
        src.defined_elsewhere.update(dir(kind))
    src.defined_elsewhere.update(dir(builtins))
    return src


# -- which reads count --------------------------------------------------------------------------

def _live_reads(src: Source) -> list[Read]:
    """Reads outside validators and outside model methods that nothing (alive) calls."""
    model_classes = {key for key in src.methods if key[1] in MODEL_NAMES}
    live: set[tuple[str, str, str]] = {(m, c, f) for (m, c) in model_classes for f in src.methods[(m, c)]
                                        if f.startswith("__") or f == "model_post_init"}

    def alive(r: Read) -> bool:
        if r.cls is None or (r.module, r.cls) not in model_classes or r.func is None:
            return True
        return not src.methods[(r.module, r.cls)].get(r.func, False) and (r.module, r.cls, r.func) in live

    changed = True
    while changed:
        changed = False
        names = defaultdict(list)
        for r in src.reads:
            if alive(r):
                names[r.attr].append(r)
        for (m, c) in model_classes:
            for f, validator in src.methods[(m, c)].items():
                if validator or (m, c, f) in live:
                    continue
                if any(r.cls != c or r.module != m or (r.module, r.cls, r.func) in live for r in names.get(f, ())):
                    live.add((m, c, f))
                    changed = True
    return [r for r in src.reads if alive(r)]


def _tags(expr: ast.expr, read: Read, src: Source, depth: int = 0) -> set[str]:
    """Names an expression is made of, following local bindings and ``self.x`` one class deep;
    ``<model:X>`` for ``self`` in model X and for names typed as X."""
    tags: set[str] = set()
    if depth > 6:
        return tags
    for node in ast.walk(expr):
        if isinstance(node, ast.Attribute):
            tags.add(node.attr)
            if isinstance(node.value, ast.Name) and node.value.id == "self" and read.cls is not None:
                for value, scope in src.self_attrs[(read.module, read.cls)].get(node.attr, ()):
                    sub = Read(node.attr, value, read.module, read.cls, read.func, scope)
                    tags |= _tags(value, sub, src, depth + 1)
        elif isinstance(node, ast.Name):
            tags.add(node.id)
            if node.id == "self" and read.scope.self_class in MODEL_NAMES:
                tags.add(f"<model:{read.scope.self_class}>")
            annotation = read.scope.typed.get(node.id, "")
            tags.update(f"<model:{m}>" for m in MODEL_NAMES if m in annotation.replace('"', " ").split())
            for value in read.scope.bindings.get(node.id, ()):
                if value is not expr:
                    tags |= _tags(value, read, src, depth + 1)
    return tags


def unread_keys(sources: list[tuple[str, str, bool]] | None = None) -> list[str]:
    src = scan(package_sources() if sources is None else sources)
    reads = defaultdict(list)
    for r in _live_reads(src):
        reads[r.attr].append(r)
    declared: dict[str, set[type[BaseModel]]] = defaultdict(set)
    for key in config_keys():
        declared[key.name].add(next(c for c in key.model.__mro__ if key.name in c.__dict__.get("__annotations__", {})))
    missing = []
    for key in config_keys():
        candidates = reads.get(key.name, [])
        distinctive = key.name not in src.defined_elsewhere and len(declared[key.name]) == 1
        owners = {f"<model:{c.__name__}>" for c in key.model.__mro__ if c.__name__ in MODEL_NAMES}
        if distinctive and candidates:
            continue
        if any(key.parent in (t := _tags(r.receiver, r, src)) or t & owners for r in candidates):
            continue
        missing.append(str(key))
    return missing


def test_every_config_key_is_read_by_the_daemon():
    missing = [k for k in unread_keys() if k not in READ_UNSEEN]
    assert not missing, ("validated but read nowhere (use it, or remove it from the config model):\n  "
                         + "\n  ".join(missing))


def test_the_allow_list_names_only_real_keys_that_are_otherwise_unread():
    keys = {str(k) for k in config_keys()}
    assert set(READ_UNSEEN) <= keys, set(READ_UNSEEN) - keys
    still_unseen = set(unread_keys())
    assert set(READ_UNSEEN) <= still_unseen, f"now seen, drop from READ_UNSEEN: {set(READ_UNSEEN) - still_unseen}"


FIXTURE = '''
class LaneSection(_Model):
    @model_validator(mode="after")
    def _timeouts(self):
        return self.transaction_timeout_s > self.b5_timeout_s  # validating is not using

    def div_factor_for(self, issuer):
        return self.obu_div_factors[issuer]  # nobody calls div_factor_for

    @property
    def station_key(self):
        return self.network  # a property somebody reads: a use


class Init(Message):  # a C0 message: its wait_time and trans_mode are not the config's
    wait_time: int
    trans_mode: int


def answer(msg: Init) -> int:
    return msg.wait_time + msg.trans_mode


def run(cfg: Config) -> None:
    lane = cfg.lane
    print(lane.station_key, lane.lane_id)  # through a local
    print("{}".format(cfg.rsu.bst_interval))  # str.format is not [log] format
    for issuer, factor in cfg.lane.accepted_issuers:
        pass
'''


def test_the_scan_tells_a_use_from_validation_dead_helpers_and_namesakes():
    """The scan's own rules, on a small source: only real reads count."""
    missing = set(unread_keys([("fixture", FIXTURE, True)]))
    for used in ("lane.network", "lane.lane_id", "lane.accepted_issuers", "rsu.bst_interval"):
        assert used not in missing, used
    for unused in ("lane.transaction_timeout_s", "lane.b5_timeout_s", "lane.obu_div_factors", "rsu.wait_time",
                   "rsu.trans_mode", "log.format"):
        assert unused in missing, unused
