"""The attribute codec of opened runs: plain values out, the nested originals back, idempotent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trajscope.store.dataset_attrs import JSON_ATTRS, decode_attrs, encode_attrs, is_plain, run_attr

NESTED = {
    "config": {"train": {"lr": 0.01, "steps": 40}, "data": {"center": True, "mu": None}},
    "tags": ["a", "b"],
    "error": None,
    "finished": True,
    "note": "héllo",  # not ASCII: netCDF-3 cannot hold it as text
    "status": "complete",
    "committed_steps": 41,
    "final_loss": np.float32(0.5),
}


def test_encoded_values_are_plain_and_decode_to_the_originals():
    encoded = encode_attrs(NESTED)
    assert all(is_plain(v) for v in encoded.values())
    assert set(encoded[JSON_ATTRS].split()) == {"config", "tags", "error", "finished", "note"}
    assert json.loads(encoded["config"]) == NESTED["config"]  # the text is ordinary JSON
    assert encoded["status"] == "complete" and encoded["committed_steps"] == 41
    assert decode_attrs(encoded) == NESTED


def test_encoding_twice_changes_nothing():
    once = encode_attrs(NESTED)
    assert encode_attrs(once) == once
    assert encode_attrs({**once, "extra": {"k": 1}})[JSON_ATTRS].split()[-1] == "extra"


@pytest.mark.parametrize("source", [NESTED, encode_attrs(NESTED)])
def test_run_attr_reads_both_forms(source):
    assert run_attr(source, "config")["train"]["lr"] == 0.01
    assert run_attr(source, "tags") == ["a", "b"]
    assert run_attr(source, "status") == "complete"
    assert run_attr(source, "missing", "default") == "default"


def test_a_string_that_looks_like_json_is_not_decoded_unless_named():
    attrs = {"note": '{"not": "decoded"}'}
    assert run_attr(attrs, "note") == '{"not": "decoded"}' and decode_attrs(attrs) == attrs
