"""Schemathesis fuzzes the server's OpenAPI spec in process: no input gives a 5xx, and every
error is an OpenAI-style error object."""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from lcirc_fast.serving import Engine, EngineSettings
from lcirc_fast.serving.app import create_app


@pytest.fixture(scope="module")
def app(load_tiny, tmp_path_factory):
    model, tok = load_tiny("lcirc")
    engine = Engine(model, tok, str(tmp_path_factory.mktemp("fuzzstore")),
                    EngineSettings(max_batch=4, max_tokens_limit=4))
    yield create_app(engine, max_body_bytes=4096)
    engine.close()


schema = schemathesis.pytest.from_fixture("openapi")


@pytest.fixture(scope="module")
def openapi(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_breaks_the_server(case):
    response = case.call()
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        err = response.json()["error"]
        assert set(err) == {"message", "type", "code"} and err["message"]
