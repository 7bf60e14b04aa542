"""Masking and the Drain template miner: cases, stable ids, plain-JSON round trip, frozen mode."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from device.logs.masking import Masker
from device.logs.templates import (
    UNKNOWN_TEMPLATE_ID,
    DrainParameters,
    TemplateMiner,
    TemplateVocabulary,
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Connection from 10.0.0.7 port 51234", "Connection from <IP> port <NUM>"),
        ("peer 192.168.1.20:8080 closed", "peer <IP> closed"),
        ("bound to fe80::1ff:fe23:4567:890a and ::1", "bound to <IP> and <IP>"),
        ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 up", "v6 <IP> up"),
        ("net 10.1.0.0/16 routed", "net <IP>/<NUM> routed"),
        ("std::vector<int> resized", "std::vector<int> resized"),
        ("station aa:bb:cc:dd:ee:0f joined", "station <MAC> joined"),
        ("job 550e8400-e29b-41d4-a716-446655440000 done", "job <UUID> done"),
        ("lpa 0x1F3a flags 0XFF", "lpa <HEX> flags <HEX>"),
        ("commit 9fceb02d0ae598e95dc970b74767f19372d61af8 pushed", "commit <HEX> pushed"),
        ("word deadbeef stays, 12345678 is a number", "word deadbeef stays, <NUM> is a number"),
        ("open /var/log/syslog failed", "open <PATH> failed"),
        ("GET path=/api/v1/items/42 ok", "GET path=<PATH> ok"),
        ("fetch http://example.com/a/b ok", "fetch http://example.com/a/b ok"),
        ("read ./conf/app.toml and ~/x/y", "read <PATH> and <PATH>"),
        ("id=42 took -3.5 ms, 12ms, 3.14.", "id=<NUM> took <NUM> ms, <NUM>ms, <NUM>."),
        ("eth0 v1.2.3 sda1 stay", "eth0 v1.2.3 sda1 stay"),
        ("at 12:30:45 later", "at <NUM>:<NUM>:<NUM> later"),
        ("2024-01-02T03:04:05.678Z app started", "<TS> app started"),
        ("2024-01-02 03:04:05,678 INFO worker 3 up", "<TS> INFO worker <NUM> up"),
        ("Oct 11 22:14:15 host sshd[812]: accepted", "<TS> host sshd[<NUM>]: accepted"),
        ("Mon Oct 11 22:14:15 2024 boot", "<TS> boot"),
        ("[10/Oct/2000:13:55:36 -0700] GET /index.html", "<TS> GET <PATH>"),
        ("[2024-01-02 03:04:05] x", "<TS> x"),
        ("22:14:15.123 tick", "<TS> tick"),
        ("", ""),
    ],
)
def test_masking_cases(line: str, expected: str) -> None:
    assert " ".join(Masker().tokens(line)) == expected


def test_shape_cache_keeps_the_digits_that_are_not_masked() -> None:
    """eth1 and eth2 share a shape (eth0) with no mask in it: each keeps its own digits,
    while tokens whose digits are all masked share one cached result."""
    masker = Masker()
    assert masker.tokens("eth1: up id=5") == ["eth1:", "up", "id=<NUM>"]
    assert masker.tokens("eth2: up id=7") == ["eth2:", "up", "id=<NUM>"]
    assert masker.tokens("sha256=9fceb02d0ae598e9") == ["sha256=<HEX>"]
    assert masker.tokens("sha384=9fceb02d0ae598e9") == ["sha384=<HEX>"]


def test_masks_can_be_switched_off_and_delimiters_added() -> None:
    numbers_only = Masker(kinds=("number",))
    assert numbers_only.tokens("2024-01-02T03:04:05Z from 10.0.0.7 in 5 ms")[-2:] == [
        "<NUM>", "ms",
    ]  # fmt: skip
    assert "<IP>" not in numbers_only.tokens("from 10.0.0.7")
    assert "<TS>" not in numbers_only.tokens("2024-01-02T03:04:05Z x")
    split = Masker(extra_delimiters="=,")
    assert split.tokens("user=bob,id=5 took 3") == ["user", "bob", "id", "<NUM>", "took", "<NUM>"]
    with pytest.raises(ValueError, match="unknown mask"):
        Masker(kinds=("number", "phone"))  # type: ignore[arg-type]


def test_masked_values_are_kept_for_parameters() -> None:
    masked = Masker().mask("2024-01-02 03:04:05 login from 10.0.0.7:22 id=42")
    assert [t.masked for t in masked] == ["<TS>", "login", "from", "<IP>", "id=<NUM>"]
    assert [(v.kind, v.value) for t in masked for v in t.values] == [
        ("timestamp", "2024-01-02 03:04:05"), ("ip", "10.0.0.7:22"), ("number", "42"),
    ]  # fmt: skip


# -- mining ------------------------------------------------------------------------------


def sshd_lines(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    users = ["alice", "bob", "carol", "dave"]
    out = []
    for n in range(count):
        ip = f"10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        kind = n % 4
        if kind == 0:
            out.append(f"Accepted publickey for {rng.choice(users)} from {ip} port "
                       f"{rng.randint(1024, 65535)} ssh2")  # fmt: skip
        elif kind == 1:
            out.append(f"Failed password for invalid user {rng.choice(users)}x from {ip}")
        elif kind == 2:
            out.append(f"pam_unix(sshd:session): session opened for user {rng.choice(users)}")
        else:
            out.append(f"Disconnected from {ip} port {rng.randint(1024, 65535)}")
    return out


def test_mining_finds_the_templates_with_stable_ids() -> None:
    miner = TemplateMiner()
    results = [miner.add(line) for line in sshd_lines(400)]
    assert dict(miner.templates()) == {
        1: "Accepted publickey for <*> from <IP> port <NUM> ssh2",
        2: "Failed password for invalid user <*> from <IP>",
        3: "pam_unix(sshd:session): session opened for user <*>",
        4: "Disconnected from <IP> port <NUM>",
    }
    assert [r.template_id for r in results[:8]] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert results[0].change == "created" and results[4].change == "updated"
    assert results[-1].change == "none"
    # Ids never move: more data of new kinds adds ids after the existing ones.
    assert miner.add("Server listening on 0.0.0.0 port 22.").template_id == 5
    assert miner.add("Accepted publickey for eve from 10.9.9.9 port 2222 ssh2").template_id == 1
    # The same data mined again gives the same vocabulary, byte for byte.
    again = TemplateMiner()
    for line in [*sshd_lines(400), "Server listening on 0.0.0.0 port 22."]:
        again.add(line)
    again.add("Accepted publickey for eve from 10.9.9.9 port 2222 ssh2")
    assert again.to_json() == miner.to_json()


def test_similarity_threshold_and_depth_are_parameters() -> None:
    lines = ["disk sda full", "disk sdb full", "disk sdc full"]
    strict = TemplateMiner(DrainParameters(depth=3, similarity=1.0))
    assert len({strict.add(line).template_id for line in lines}) == 3
    loose = TemplateMiner(DrainParameters(depth=3, similarity=0.5))
    assert {loose.add(line).template_id for line in lines} == {1}
    assert loose.template(1) == "disk <*> full"
    # With depth 3 only the first token routes, so the second may generalise.
    shallow = TemplateMiner(DrainParameters(depth=3, similarity=0.5))
    for line in ["a x c d", "a y c d"]:
        shallow.add(line)
    assert dict(shallow.templates()) == {1: "a <*> c d"}
    deep = TemplateMiner(DrainParameters(depth=4, similarity=0.5))
    for line in ["a x c d", "a y c d"]:
        deep.add(line)
    assert dict(deep.templates()) == {1: "a x c d", 2: "a y c d"}


def test_max_children_routes_the_rest_to_a_wildcard_branch() -> None:
    miner = TemplateMiner(DrainParameters(max_children=3, similarity=0.6))
    for word in ["alpha", "beta", "gamma", "delta", "epsilon"]:
        miner.add(f"{word} service restarted ok")
    texts = dict(miner.templates())
    assert texts[1] == "alpha service restarted ok"
    assert texts[2] == "beta service restarted ok"
    assert texts[3] == "<*> service restarted ok"  # gamma, delta and epsilon share it
    assert len(texts) == 3


def test_limits_on_templates_and_tokens() -> None:
    miner = TemplateMiner(DrainParameters(max_templates=2, similarity=0.9))
    assert miner.add("first kind of line").known
    assert miner.add("second sort of message here").known
    overflow = miner.add("third completely different thing")
    assert overflow.template_id == UNKNOWN_TEMPLATE_ID and not overflow.known
    assert miner.stats().overflow == 1 and miner.template_count == 2

    long_miner = TemplateMiner(DrainParameters(max_tokens=10))
    long_line = " ".join(f"w{n}" for n in range(1000))
    result = long_miner.add(long_line)
    assert result.template is not None
    tokens = result.template.split()
    assert len(tokens) == 10 and tokens[-1] == "<*>"
    params = long_miner.parameters_of(long_line, result.template_id)
    assert params[-1].kind == "wildcard" and params[-1].value.startswith("w9 w10 ")


def test_parameters_follow_the_template() -> None:
    miner = TemplateMiner()
    for line in sshd_lines(100):
        miner.add(line)
    line = "Accepted publickey for erin from 10.1.2.3 port 4567 ssh2"
    template_id = miner.match_id(line)
    params = miner.parameters_of(line, template_id)
    assert [(p.kind, p.value, p.position) for p in params] == [
        ("wildcard", "erin", 3), ("ip", "10.1.2.3", 5), ("number", "4567", 7),
    ]  # fmt: skip
    unknown = miner.parameters_of("totally new 42", UNKNOWN_TEMPLATE_ID)
    assert [(p.kind, p.value) for p in unknown] == [("number", "42")]


# -- frozen mode and the vocabulary ---------------------------------------------------------


def test_json_round_trip_matches_exactly_like_the_miner() -> None:
    miner = TemplateMiner()
    lines = sshd_lines(300)
    for line in lines:
        miner.add(line)
    text = miner.to_json()
    document = json.loads(text)  # plain JSON: nothing but objects, lists, strings, numbers
    assert document["schema"] == 1 and document["kind"] == "drain"
    assert "py/object" not in text
    loaded = TemplateMiner.from_json(text)
    assert loaded.frozen and loaded.to_json() == text
    miner.freeze()
    probes = [*sshd_lines(200, seed=7), "never seen before", "Disconnected from x port y"]
    assert [loaded.match(p) for p in probes] == [miner.match(p) for p in probes]
    assert [loaded.match_id(p) for p in probes] == [miner.match_id(p) for p in probes]


def test_frozen_miner_never_grows() -> None:
    miner = TemplateMiner()
    for line in sshd_lines(100):
        miner.add(line)
    frozen = TemplateMiner.from_vocabulary(miner.vocabulary())
    before = frozen.to_json()
    unseen = frozen.process("kernel: Out of memory: Killed process 4242 (python3)")
    assert unseen.template_id == UNKNOWN_TEMPLATE_ID and unseen.template is None
    seen = frozen.process("Disconnected from 10.0.0.1 port 99")
    assert seen.template_id == 4 and seen.template == "Disconnected from <IP> port <NUM>"
    with pytest.raises(RuntimeError, match="frozen"):
        frozen.add("anything")
    assert frozen.to_json() == before and frozen.template_count == 4
    assert frozen.stats().unknown == 1


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["templates"].append(dict(d["templates"][0])),  # duplicate id
        lambda d: d["templates"][0].update(path=["3", "x", "y"]),  # path does not fit
        lambda d: d["parameters"].update(mask_version=99),
        lambda d: d.update(schema=2),
        lambda d: d.update(next_id=1),
        lambda d: d["templates"][0].update({"py/object": "os.system"}),  # unknown key
        lambda d: d["parameters"].update(masks=["number", "shell"]),
    ],
)
def test_invalid_vocabularies_are_refused(change: object) -> None:
    miner = TemplateMiner()
    for line in sshd_lines(20):
        miner.add(line)
    document = json.loads(miner.to_json())
    change(document)  # type: ignore[operator]
    with pytest.raises(ValidationError):
        TemplateVocabulary.model_validate_json(json.dumps(document))
