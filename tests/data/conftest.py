import pytest


@pytest.fixture(scope="session")
def sp_tok():
    from lcirc_fast.assets import llama_sp_tokenizer

    return llama_sp_tokenizer()
