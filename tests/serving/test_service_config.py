"""Service configuration from the environment: bad values fail at start with the variable named."""
from __future__ import annotations

import pytest

from bentos import service


@pytest.mark.parametrize("raw, message", [("many", "not an integer"), ("0", "below 1")])
def test_bad_integer_names_the_variable(monkeypatch, raw, message):
    monkeypatch.setenv("COMPRESSOR_MAX_ITEMS", raw)
    with pytest.raises(service.ServiceConfigError, match=f"COMPRESSOR_MAX_ITEMS.*{message}"):
        service.env_int("COMPRESSOR_MAX_ITEMS", 64, 1)


def test_flags_and_defaults(monkeypatch):
    monkeypatch.delenv("COMPRESSOR_BATCHING", raising=False)
    assert service.env_flag("COMPRESSOR_BATCHING", True) is True
    monkeypatch.setenv("COMPRESSOR_BATCHING", "off")
    assert service.env_flag("COMPRESSOR_BATCHING", True) is False
    monkeypatch.setenv("COMPRESSOR_BATCHING", "maybe")
    with pytest.raises(service.ServiceConfigError, match="COMPRESSOR_BATCHING"):
        service.env_flag("COMPRESSOR_BATCHING", True)


def test_missing_model_dir_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("COMPRESSOR_MODEL_DIR", raising=False)
    with pytest.raises(service.ServiceConfigError, match="COMPRESSOR_MODEL_DIR is not set"):
        service.load_classifier()


def test_task_mismatch_messages():
    assert service.task_mismatch(None, True) is None and service.task_mismatch(True, True) is None
    assert '"pairs"' in service.task_mismatch(True, False)
    assert '"texts"' in service.task_mismatch(False, True)


def test_mixed_batches_keep_order(tiny_dir):
    from runtime import Classifier

    classifier = Classifier.load(tiny_dir, backend="torch")
    items = ["a fine film", ("a film", "a movie"), "dull", ["x", "y"]]
    mixed = service.classify_mixed(classifier, items)
    assert mixed[0] == classifier(["a fine film", "dull"])[0] and mixed[2] == classifier(["a fine film", "dull"])[1]
    assert mixed[1] == classifier([("a film", "a movie"), ("x", "y")])[0]
