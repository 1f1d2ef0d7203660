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
    r = parse_json_request(b'{"prompt": "a boat", "seed": 12, "plan": "exact", "aspect": "2:1", "cfg": 4, "tau": 1}')
    assert (r.prompt, r.seed, r.plan, r.aspect, r.cfg, r.tau) == ("a boat", 12, "exact", "2:1", 4.0, 1.0)


def test_bad_server_defaults_are_refused_at_configuration():
    with pytest.raises(StagevarError, match="Resolution '4M'"):
        RequestDefaults(resolution="4M").check()
    with pytest.raises(StagevarError, match="Plan 'nope'"):
        RequestDefaults(plan="nope").check()
