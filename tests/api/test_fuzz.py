"""API fuzz in CI (issue 8): schemathesis generates requests from the app's own OpenAPI document and
sends them to a real uvicorn serving a small real run; every response must be a non-5xx whose status
is documented and whose body conforms to the published schema.

The budget is bounded (``MAX_EXAMPLES`` per operation, no shrinking, derandomized so CI is repeatable);
about half the generated path parameters are replaced by names that exist (the run, its variables,
quantities and figure kinds), so the requests reach the code behind the 404s.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from trajscope.analysis import PLOT_KINDS, QUANTITIES
from trajscope.store import StoreRoot

from .conftest import make_run, serving

MAX_EXAMPLES = 12
KNOWN = {
    "run_id": ["small", "live"],
    "name": ["W", "v", "loss", "output", "X", "y", "step", "t"],
    "quantity": sorted(QUANTITIES)[:6],
    "filename": [f"{k}.png" for k in sorted(PLOT_KINDS)[:3]] + ["loss.svg"],
    "key": ["zarr.json", "W/zarr.json", "W/c/0/0/0", "loss/c/1", "v/c/0/0"],
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    root = StoreRoot(tmp_path_factory.mktemp("fuzz"))
    make_run(root, "small", steps=16, h=3, D=2, n=4, chunk_steps=8)
    make_run(root, "live", steps=16, h=3, D=2, n=4, chunk_steps=8, finish=None, commit_to=8, seed=1)
    with serving(root, token="fuzz-token", max_response_bytes=64 * 1024) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")

    @schema.hook
    def before_generate_path_parameters(context, strategy):
        def known(params):
            if not isinstance(params, dict) or not params:
                return st.just(params)
            return st.fixed_dictionaries({k: st.sampled_from([v, *KNOWN.get(k, [])]) for k, v in params.items()})

        return strategy.flatmap(known)

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_api_fuzz_no_5xx_and_schema_conformant(case):
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance], timeout=60)
