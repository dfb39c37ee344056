"""docs/suite-format.md is the schema's own reference (medssl/suite/reference.py): committed as generated, and every
key the schema checks, every method setting and every loader parameter is in it."""

import dataclasses

import pytest
from conftest import ROOT

from datasets.base import dataset_names, loader_function
from medssl.suite.checks import Problems, function_defaults, mapping, number
from medssl.suite.config import load_suite
from medssl.suite.reference import reference, schema_rows
from medssl.suite.schema import check_suite, ct_suite_schema, suite_schema
from methods import REGISTRY, resolve_config


def test_the_committed_page_is_the_generated_one():
    committed = (ROOT / "docs" / "suite-format.md").read_text()
    assert committed == reference(), "run: python -m medssl.suite.reference > docs/suite-format.md"


def test_every_key_of_every_shipped_suite_is_in_the_reference():
    rows = {key for schema in (suite_schema(), ct_suite_schema()) for key, _, _ in schema_rows(schema)}

    def keys(node, path=""):
        """Every key path of a loaded suite, not descending where the keys are names or a loader's parameters."""
        dynamic = path in {"method_params", "encoders", "pretrain.datasets"} or path.endswith((".dataset", ".params"))
        if isinstance(node, dict) and not dynamic:
            for key, value in node.items():
                where = f"{path}.{key}" if path else key
                yield where
                yield from keys(value, where)
        elif isinstance(node, list) and node and isinstance(node[0], dict):
            for item in node:
                yield from keys(item, f"{path}[]")

    for name in sorted(p.stem for p in (ROOT / "benchmarks" / "suites").glob("*.yaml")):
        found = set(keys(load_suite(name)))
        assert "tasks[].protocols" in found
        missing = found - rows
        assert not missing, f"{name}: {sorted(missing)}"
    text = reference()
    for method in REGISTRY:
        for setting in dataclasses.asdict(resolve_config(method)):
            assert f"`{setting}`" in text, f"{method}.{setting}"
    for dataset in dataset_names():
        for parameter in function_defaults(loader_function(dataset)):
            assert f"`{parameter}`" in text, f"{dataset}.{parameter}"


@pytest.mark.parametrize(
    "check, value, described",
    [
        (number(low=0, high=1, low_open=True), 0.0, "number in (0, 1]"),
        (number(low=8, integer=True), 7, "integer >= 8"),
        (number(low=0, high=2**32 - 1, integer=True), -1, "integer in [0, 4294967295]"),
    ],
)
def test_what_the_reference_says_is_what_the_check_refuses(check, value, described):
    schema = mapping({"key": check}, required=("key",))
    assert list(schema_rows(schema)) == [("key", described, True)]
    problems = Problems()
    schema({"key": value}, "", problems)
    assert len(problems.lines) == 1
    assert check_suite(load_suite("smoke")) == []
