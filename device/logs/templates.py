"""Log templates: a Drain miner (He et al., ICWS 2017), the one both sides use.

Training mines templates from normal logs and ships the vocabulary in the model bundle;
the device turns every line into a template id with the very same code, so a sequence
the model learned and a sequence the device scores mean the same thing. Training imports
this module; nothing else in the project mines templates.

Why not the drain3 package: drain3 saves its state with jsonpickle, which builds
arbitrary Python objects from its input and must never read a file that came over the
network, and a bundle did. The vocabulary here is plain JSON checked by pydantic models
(``TemplateVocabulary``). It is also smaller and faster where it matters on a Pi: masking
works on cached token shapes (see masking.py) and whole masked lines are cached, so a
line seen before in its masked form costs a dictionary lookup instead of a tree search.

The algorithm
-------------
A line is masked and split into tokens. A fixed-depth tree routes it: first by its token
count, then by its first ``depth - 2`` tokens (tokens that still contain a digit go to a
``<*>`` branch, as does any token once a node has ``max_children`` children). The leaf
holds templates; the line joins the most similar one (the share of positions with the
same token, ``<*>`` positions not counting while mining) when that share reaches
``similarity``, turning the positions that differ into ``<*>``; otherwise it starts a new
template. Template ids are assigned in order of creation from 1 and never change, however
much a template generalises; 0 means "unknown template".

Frozen mode is the device's: ``match`` only, an unseen line is ``unknown`` and the
vocabulary never grows. Matching counts ``<*>`` positions as similar (a line fits a
template whose wildcards cover its differences). Training computes the id sequences it
trains on with ``match`` after mining, on the frozen vocabulary, i.e. exactly as the
device will. Learning mode stops creating templates at ``max_templates`` (further new
lines are unknown, counted in ``overflow``), so memory stays bounded on a device too.

Parameters of a line (``parameters()``) are the masked values (``<NUM>`` → ``"42"``) and
the tokens at the template's ``<*>`` positions, in line order.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from device.logs.masking import ALL_MASKS, MASK_VERSION, MaskedToken, Masker, MaskKind

log = logging.getLogger(__name__)

WILDCARD: Final = "<*>"
UNKNOWN_TEMPLATE_ID: Final = 0
VOCABULARY_SCHEMA: Final = 1
_HAS_DIGIT = re.compile(r"\d")

Change = Literal["none", "created", "updated"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DrainParameters(_Frozen):
    """How templates are mined; stored with the vocabulary, since matching depends on it."""

    #: Tree depth: the root, the token-count level, then ``depth - 2`` prefix tokens.
    #: One more than drain3's 4, and a similarity of 0.5 instead of 0.4: lines read from
    #: files keep their header (``<TS> host app[<NUM>]:``), which takes routing levels
    #: and equal tokens that say nothing about the event.
    depth: int = Field(5, ge=3, le=12)
    #: Share of equal tokens for a line to join a template.
    similarity: float = Field(0.5, ge=0.0, le=1.0)
    max_children: int = Field(100, ge=2, le=100_000)
    max_templates: int = Field(10_000, ge=1, le=1_000_000)
    #: Tokens beyond this many are folded into one final ``<*>``.
    max_tokens: int = Field(200, ge=4, le=10_000)
    masks: tuple[MaskKind, ...] = ALL_MASKS
    #: Characters split on besides whitespace, e.g. ``"=,"`` to separate ``key=value``.
    extra_delimiters: str = Field("", max_length=16)
    mask_version: int = MASK_VERSION

    @field_validator("mask_version")
    @classmethod
    def _known_masks(cls, value: int) -> int:
        if value != MASK_VERSION:
            raise ValueError(
                f"templates were mined with mask version {value}, this edgewatch masks with "
                f"version {MASK_VERSION}; retrain the model with this edgewatch version"
            )
        return value


class TemplateEntry(_Frozen):
    id: int = Field(ge=1)
    tokens: tuple[str, ...]
    #: The tree branch the template lives in: token count, then the prefix keys.
    path: tuple[str, ...] = Field(min_length=1)
    #: Lines that joined it while mining.
    count: int = Field(ge=0)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


class TemplateVocabulary(_Frozen):
    """The mined templates as plain JSON: what a bundle carries (never pickle)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: int = Field(VOCABULARY_SCHEMA, alias="schema")
    kind: Literal["drain"] = "drain"
    parameters: DrainParameters = DrainParameters()
    templates: tuple[TemplateEntry, ...] = ()
    next_id: int = Field(1, ge=1)

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != VOCABULARY_SCHEMA:
            raise ValueError(f"template vocabulary schema {value} is not supported")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TemplateVocabulary:
        params = self.parameters
        if len(self.templates) > params.max_templates:
            raise ValueError(f"more than max_templates ({params.max_templates}) templates")
        ids = [entry.id for entry in self.templates]
        if len(set(ids)) != len(ids) or (ids and max(ids) >= self.next_id):
            raise ValueError("template ids must be unique and below next_id")
        for entry in self.templates:
            if len(entry.tokens) > params.max_tokens:
                raise ValueError(f"template {entry.id} has more than max_tokens tokens")
            expected = 1 + min(params.depth - 2, len(entry.tokens))
            if entry.path[0] != str(len(entry.tokens)) or len(entry.path) != expected:
                raise ValueError(f"template {entry.id} has a tree path that does not fit it")
        return self

    def template_text(self, template_id: int) -> str | None:
        for entry in self.templates:
            if entry.id == template_id:
                return entry.text
        return None


@dataclass(frozen=True, slots=True)
class TemplateMatch:
    """Which template a line belongs to."""

    #: 1.. for a template, ``UNKNOWN_TEMPLATE_ID`` (0) for none.
    template_id: int
    #: The template's text now (None when unknown).
    template: str | None
    #: What mining did with the line: nothing new, a new template, or one generalised.
    change: Change = "none"

    @property
    def known(self) -> bool:
        return self.template_id != UNKNOWN_TEMPLATE_ID


@dataclass(frozen=True, slots=True)
class Parameter:
    """One variable part of a line: a masked value or a token at a ``<*>`` position."""

    #: The mask kind, or ``"wildcard"``.
    kind: str
    value: str
    #: Index of the token it is in.
    position: int


@dataclass(frozen=True)
class MinerStats:
    lines: int
    templates: int
    unknown: int
    #: New lines not given a template because max_templates was reached.
    overflow: int
    cache_hits: int


class _Cluster:
    __slots__ = ("count", "id", "path", "text", "tokens", "wildcards")

    def __init__(self, cluster_id: int, tokens: list[str], path: tuple[str, ...]) -> None:
        self.id = cluster_id
        self.tokens = tokens
        self.path = path
        self.count = 0
        self.text = " ".join(tokens)
        self.wildcards = sum(1 for token in tokens if token == WILDCARD)


#: What the line cache answers for a line it has not seen.
_NOT_CACHED: Final = _Cluster(-1, [], ("",))


class _Node:
    __slots__ = ("children", "clusters")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.clusters: list[_Cluster] = []


class TemplateMiner:
    """Drain with masking; see the module docstring. Not thread-safe: one per thread."""

    def __init__(
        self,
        parameters: DrainParameters | None = None,
        *,
        frozen: bool = False,
        cache_size: int = 100_000,
    ) -> None:
        self.parameters = parameters or DrainParameters()
        self.frozen = frozen
        p = self.parameters
        self._masker = Masker(p.masks, p.extra_delimiters, cache_size)
        self._prefix_depth = p.depth - 2
        self._root = _Node()
        self._clusters: dict[int, _Cluster] = {}
        self._next_id = 1
        self._cache: dict[str, _Cluster | None] = {}
        self._cache_size = cache_size
        self._lines = 0
        self._unknown = 0
        self._overflow = 0
        self._hits = 0

    # -- building and saving -----------------------------------------------------------------

    @classmethod
    def from_vocabulary(
        cls, vocabulary: TemplateVocabulary, *, frozen: bool = True, cache_size: int = 100_000
    ) -> TemplateMiner:
        """A miner holding exactly the vocabulary's templates (frozen by default: the device)."""
        miner = cls(vocabulary.parameters, frozen=frozen, cache_size=cache_size)
        for entry in sorted(vocabulary.templates, key=lambda e: e.id):
            cluster = _Cluster(entry.id, list(entry.tokens), tuple(entry.path))
            cluster.count = entry.count
            miner._leaf(entry.path).clusters.append(cluster)
            miner._clusters[entry.id] = cluster
        miner._next_id = vocabulary.next_id
        return miner

    @classmethod
    def from_json(
        cls, text: str | bytes, *, frozen: bool = True, cache_size: int = 100_000
    ) -> TemplateMiner:
        return cls.from_vocabulary(
            TemplateVocabulary.model_validate_json(text), frozen=frozen, cache_size=cache_size
        )

    def vocabulary(self) -> TemplateVocabulary:
        return TemplateVocabulary(
            parameters=self.parameters,
            templates=tuple(
                TemplateEntry(id=c.id, tokens=tuple(c.tokens), path=c.path, count=c.count)
                for c in sorted(self._clusters.values(), key=lambda c: c.id)
            ),
            next_id=self._next_id,
        )

    def to_json(self) -> str:
        """The vocabulary as canonical JSON (sorted keys, no whitespace)."""
        document = self.vocabulary().model_dump(mode="json", by_alias=True)
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def freeze(self) -> None:
        """From now on only match: the vocabulary no longer changes."""
        self.frozen = True
        self._cache.clear()

    # -- using it ------------------------------------------------------------------------------

    def process(self, line: str) -> TemplateMatch:
        """``add`` while learning, ``match`` once frozen."""
        return self.match(line) if self.frozen else self.add(line)

    def add(self, line: str) -> TemplateMatch:
        """Mine ``line``: join the most similar template or start a new one."""
        if self.frozen:
            raise RuntimeError("this template miner is frozen: use match()")
        self._lines += 1
        tokens = self._tokens(line)
        key = " ".join(tokens)
        cached = self._cache.get(key, _NOT_CACHED)
        if cached is not _NOT_CACHED:
            self._hits += 1
            if cached is None:
                self._unknown += 1
                return TemplateMatch(UNKNOWN_TEMPLATE_ID, None)
            cached.count += 1
            return TemplateMatch(cached.id, cached.text)
        leaf, path = self._grow(tokens)
        cluster = _best(leaf.clusters, tokens, self.parameters.similarity, count_wildcards=False)
        change: Change = "none"
        if cluster is None:
            if len(self._clusters) >= self.parameters.max_templates:
                self._overflow += 1
                self._unknown += 1
                self._remember(key, None)
                return TemplateMatch(UNKNOWN_TEMPLATE_ID, None)
            cluster = _Cluster(self._next_id, tokens, path)
            self._next_id += 1
            self._clusters[cluster.id] = cluster
            leaf.clusters.append(cluster)
            change = "created"
        elif _merge(cluster, tokens):
            change = "updated"
        cluster.count += 1
        self._remember(key, cluster)
        return TemplateMatch(cluster.id, cluster.text, change)

    def match(self, line: str) -> TemplateMatch:
        """The template ``line`` belongs to, changing nothing (unknown when none fits)."""
        cluster = self._match_cluster(line)
        if cluster is None:
            return TemplateMatch(UNKNOWN_TEMPLATE_ID, None)
        return TemplateMatch(cluster.id, cluster.text)

    def match_id(self, line: str) -> int:
        """``match(line).template_id`` without building the result (the scoring hot path)."""
        cluster = self._match_cluster(line)
        return UNKNOWN_TEMPLATE_ID if cluster is None else cluster.id

    def parameters_of(self, line: str, template_id: int) -> tuple[Parameter, ...]:
        """The variable parts of ``line`` under the template ``template_id``, in order."""
        cluster = self._clusters.get(template_id)
        masked = self._masker.mask(line)
        if len(masked) > self.parameters.max_tokens:
            head = masked[: self.parameters.max_tokens - 1]
            masked = [*head, _fold(masked[len(head) :])]
        template = cluster.tokens if cluster is not None else []
        out: list[Parameter] = []
        for position, token in enumerate(masked):
            if position < len(template) and template[position] == WILDCARD:
                out.append(Parameter("wildcard", token.original, position))
                continue
            out.extend(Parameter(value.kind, value.value, position) for value in token.values)
        return tuple(out)

    def template(self, template_id: int) -> str | None:
        cluster = self._clusters.get(template_id)
        return cluster.text if cluster is not None else None

    @property
    def template_count(self) -> int:
        return len(self._clusters)

    def templates(self) -> Iterable[tuple[int, str]]:
        """(id, text) of every template, by id."""
        return [(c.id, c.text) for c in sorted(self._clusters.values(), key=lambda c: c.id)]

    def stats(self) -> MinerStats:
        return MinerStats(
            lines=self._lines,
            templates=len(self._clusters),
            unknown=self._unknown,
            overflow=self._overflow,
            cache_hits=self._hits,
        )

    # -- internals -------------------------------------------------------------------------

    def _tokens(self, line: str) -> list[str]:
        tokens = self._masker.tokens(line)
        limit = self.parameters.max_tokens
        if len(tokens) > limit:
            tokens = [*tokens[: limit - 1], WILDCARD]
        return tokens

    def _match_cluster(self, line: str) -> _Cluster | None:
        self._lines += 1
        tokens = self._tokens(line)
        key = " ".join(tokens)
        cache = self._cache
        cached = cache.get(key, _NOT_CACHED)
        if cached is not _NOT_CACHED:
            self._hits += 1
            if cached is None:
                self._unknown += 1
            return cached
        leaf = self._find(tokens)
        cluster = (
            None
            if leaf is None
            else _best(leaf.clusters, tokens, self.parameters.similarity, count_wildcards=True)
        )
        if cluster is None:
            self._unknown += 1
        # Matching caches only on a frozen miner: while learning, templates still change.
        if self.frozen:
            self._remember(key, cluster)
        return cluster

    def _remember(self, key: str, cluster: _Cluster | None) -> None:
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = cluster

    def _find(self, tokens: list[str]) -> _Node | None:
        """The leaf for ``tokens`` without changing the tree (exact token, else ``<*>``)."""
        node = self._root.children.get(str(len(tokens)))
        for token in tokens[: self._prefix_depth]:
            if node is None:
                return None
            children = node.children
            node = children.get(token) or children.get(WILDCARD)
        return node

    def _grow(self, tokens: list[str]) -> tuple[_Node, tuple[str, ...]]:
        """The leaf for ``tokens`` and its path, growing the tree as Drain does."""
        path = [str(len(tokens))]
        node = self._root.children.get(path[0])
        if node is None:
            node = self._root.children[path[0]] = _Node()
        max_children = self.parameters.max_children
        for token in tokens[: self._prefix_depth]:
            children = node.children
            if token in children:
                key = token
            elif _HAS_DIGIT.search(token) is not None:
                key = WILDCARD
            elif WILDCARD in children:
                key = token if len(children) < max_children else WILDCARD
            else:
                key = token if len(children) + 1 < max_children else WILDCARD
            child = children.get(key)
            if child is None:
                child = children[key] = _Node()
            node = child
            path.append(key)
        return node, tuple(path)

    def _leaf(self, path: tuple[str, ...]) -> _Node:
        node = self._root
        for key in path:
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node()
            node = child
        return node


def _best(
    clusters: list[_Cluster], tokens: list[str], threshold: float, count_wildcards: bool
) -> _Cluster | None:
    """The most similar template at or above ``threshold`` (ties: more wildcards, then the
    oldest), as Drain's fast match does."""
    best: _Cluster | None = None
    best_sim = -1.0
    best_wild = -1
    for cluster in clusters:
        template = cluster.tokens
        if len(template) != len(tokens):
            continue
        same = 0
        for mine, theirs in zip(template, tokens, strict=True):
            if mine == theirs and mine != WILDCARD:
                same += 1
        if count_wildcards:
            same += cluster.wildcards
        sim = same / len(template) if template else 1.0
        if sim > best_sim or (sim == best_sim and cluster.wildcards > best_wild):
            best, best_sim, best_wild = cluster, sim, cluster.wildcards
    return best if best is not None and best_sim >= threshold else None


def _merge(cluster: _Cluster, tokens: list[str]) -> bool:
    """Turn the positions where ``tokens`` differs into wildcards; True when any changed."""
    changed = False
    template = cluster.tokens
    for index, (mine, theirs) in enumerate(zip(template, tokens, strict=True)):
        if mine not in (theirs, WILDCARD):
            template[index] = WILDCARD
            changed = True
    if changed:
        cluster.text = " ".join(template)
        cluster.wildcards = sum(1 for token in template if token == WILDCARD)
    return changed


def _fold(rest: list[MaskedToken]) -> MaskedToken:
    """The tokens past max_tokens as one token: one wildcard, as ``_tokens`` folds them."""
    return MaskedToken(" ".join(token.original for token in rest), WILDCARD, ())
