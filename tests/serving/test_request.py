"""Request parsing shared by the Triton model and the Ray deployment: valid fields become a
GenerationRequest, each bad one is refused in one sentence that names it."""

import numpy as np
import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.serve.request import RequestDefaults, parse_fields, parse_json_request, parse_request


def test_defaults_fill_what_the_request_leaves_out_and_overrides_win():
    d = RequestDefaults(plan="exact", aspect="2:1", cfg=2.0, tau=0.7, resolution="0.06M")
    r = parse_request(b"a red apple", np.int64(7), defaults=d)
    assert (r.prompt, r.seed, r.plan, r.aspect, r.cfg, r.tau, r.resolution) == (
        "a red apple", 7, "exact", "2:1", 2.0, 0.7, "0.06M")
    r = parse_request("x", 1, plan=b"cfg-off", aspect="1:1", cfg=np.float32(3.0), tau=0.5, defaults=d)
    assert (r.plan, r.aspect, r.cfg, r.tau) == ("cfg-off", "1:1", 3.0, 0.5)


def test_aspects_of_one_template_share_a_batch_key():
    a, b = parse_request("x", 0, aspect="16:9"), parse_request("y", 5, aspect="1.78:1")
    assert a.batch_key == b.batch_key
    assert parse_request("x", 0, aspect="1:1").batch_key != a.batch_key


@pytest.mark.parametrize("fields,needle", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt=b"\xff\xfe"), "UTF-8"),
    (dict(prompt=3), "must be text"),
    (dict(prompt="x" * 5000), "characters"),
    (dict(prompt="x", seed=-1), "Seed -1"),
    (dict(prompt="x", seed=1.5), "Seed 1.5"),
    (dict(prompt="x", seed="7"), "Seed '7'"),
    (dict(prompt="x", seed=True), "Seed True"),
    (dict(prompt="x", plan="fastest"), "Plan 'fastest'"),
    (dict(prompt="x", aspect="9:1"), "9:1"),
    (dict(prompt="x", aspect="wide"), "wide"),
    (dict(prompt="x", cfg=float("nan")), "cfg"),
    (dict(prompt="x", cfg="high"), "cfg"),
    (dict(prompt="x", tau=0.0), "tau"),
])
def test_bad_fields_are_one_sentence_naming_the_field(fields, needle):
    with pytest.raises(StagevarError) as info:
        parse_fields(fields)
    message = str(info.value)
    assert needle in message and "\n" not in message


@pytest.mark.parametrize("body,needle", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"seed": 1}', '"prompt"'),
    (b'{"prompt": "x", "steps": 20}', "'steps'"),
])
def test_bad_http_bodies_are_one_sentence(body, needle):
    with pytest.raises(StagevarError, match=needle):
        parse_json_request(body)


def test_json_body_round_trip():
    (r,) = parse_json_request(b'{"prompt": "a boat", "seed": 12, "plan": "exact", "aspect": "2:1", "cfg": 4, "tau": 1}')
    assert (r.prompt, r.seed, r.plan, r.aspect, r.cfg, r.tau) == ("a boat", 12, "exact", "2:1", 4.0, 1.0)


def test_bad_server_defaults_are_refused_at_configuration():
    with pytest.raises(StagevarError, match="Resolution '4M'"):
        RequestDefaults(resolution="4M").check()
    with pytest.raises(StagevarError, match="Plan 'nope'"):
        RequestDefaults(plan="nope").check()


@pytest.mark.parametrize("field,value", [
    ("cfg", 1e30), ("cfg", -0.5), ("cfg", 10**400), ("cfg", float("inf")),
    ("tau", 1e-300), ("tau", 0.0), ("tau", 1e30), ("tau", 10**400), ("tau", -1.0),
])
def test_cfg_and_tau_outside_the_runtimes_ranges_are_refused(field, value):
    """Bug guarded against: values that pass a finiteness check but give NaN images (1e30,
    1e-300 which is 0 in float32) and integers too big for a float (OverflowError -> 500)."""
    with pytest.raises(StagevarError) as info:
        parse_fields({"prompt": "x", field: value})
    message = str(info.value)
    assert message.startswith(f"{field} (") and "from" in message and "\n" not in message
    assert len(message) < 200


@pytest.mark.parametrize("field,value", [("cfg", 0.0), ("cfg", 20.0), ("tau", 0.05), ("tau", 10.0)])
def test_the_ends_of_the_ranges_are_accepted(field, value):
    assert getattr(parse_fields({"prompt": "x", field: value})[0], field) == value


def test_server_defaults_outside_the_ranges_are_refused_at_configuration():
    with pytest.raises(StagevarError, match="^tau "):
        RequestDefaults(tau=1e-300).check()
    with pytest.raises(StagevarError, match="^cfg "):
        RequestDefaults(cfg=1e30).check()


@pytest.mark.parametrize("body,needle", [
    (b'{"prompt": "x", "cfg": 1' + b"0" * 400 + b"}", "cfg"),
    (b'{"prompt": "x", "tau": 1' + b"0" * 400 + b"}", "tau"),
    (b'{"prompt": "x", "seed": 1' + b"0" * 400 + b"}", "Seed"),
    (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    (b'{"prompt": "' + b"[" * 10 + b'", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests too deeply"),
    (b'{"prompt": "a \\ud800 cat", "seed": 1}', "lone surrogate"),
    (b'{"prompt": "a cat", "plan": "\\udfff"}', "lone surrogate"),
])
def test_hostile_bodies_are_one_sentence_not_an_exception(body, needle):
    """Bug guarded against: bodies that escape validation as OverflowError, RecursionError or a
    lone surrogate reaching the tokenizer: each became an HTTP 500 instead of a 400 sentence."""
    with pytest.raises(StagevarError) as info:
        parse_json_request(body)
    message = str(info.value)
    assert needle in message and "\n" not in message and len(message) < 300


@pytest.mark.parametrize("fields", [
    {"prompt": "x", "plan": "p" * 1_000_000},
    {"prompt": "x", "aspect": "1" * 1_000_000},
    {"prompt": "x", "seed": "7" * 1_000_000},
    {"prompt": "x", "cfg": "c" * 1_000_000},
    {"prompt": "x", "tau": [1.0] * 100_000},
    {"prompt": "x", "k" * 1_000_000: 1},
    {"prompt": "x", **{f"field{i}": i for i in range(10_000)}},
    {"prompt": "x" * 1_000_000},
])
def test_error_messages_do_not_echo_megabytes_of_input(fields):
    """Bug guarded against: a refusal that quotes the client's value whole (a 1 MB plan gave a
    1 MB error body)."""
    with pytest.raises(StagevarError) as info:
        parse_fields(fields)
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)
