"""What a deployed run may ask for: a trusted recipe by name and a bounded thread count, nothing that reaches out."""

from __future__ import annotations

import os
import shutil

import pytest
from prefect.exceptions import ParameterTypeError

from flows import serve, trusted
from flows.build_plantmix import build_plantmix
from flows.fit_mixing_law import fit_mixing_law
from tests.conftest import DEMO_RECIPE, REPO

BUNDLED = REPO / "manifests" / "recipes"


@pytest.fixture
def operator_dir(tmp_path, monkeypatch):
    """A folder the operator trusts (as ``flows.serve --recipe-dir`` would), holding a copy of the demo recipe."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    shutil.copy(DEMO_RECIPE, folder / "mine.yaml")
    monkeypatch.setenv(trusted.RECIPE_DIRS_ENV, str(folder))
    return folder


def test_the_deployed_flows_take_only_a_recipe_name_and_workers():
    for flow in (build_plantmix, fit_mixing_law):
        assert set(flow.parameters.properties) == {"recipe", "workers"}
        workers = flow.parameters.properties["workers"]
        assert (workers["minimum"], workers["maximum"]) == (1, trusted.MAX_WORKERS)
        deployment = flow.to_deployment(name="demo", parameters={"recipe": "demo"})
        assert set(deployment._parameter_openapi_schema.properties) == {"recipe", "workers"}
        assert deployment.enforce_parameter_schema
        for extra in ({"output_dir": "/tmp/anywhere"}, {"dask_address": "tcp://203.0.113.1:8786"}):
            with pytest.raises(TypeError, match=next(iter(extra))):
                flow(recipe="demo", **extra)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path.yaml", "demo/../demo", ".hidden", "", "a" * 200])
def test_a_path_like_recipe_name_is_refused_naming_the_trusted_folders(name, operator_dir):
    for flow in (build_plantmix, fit_mixing_law):
        with pytest.raises(ValueError, match="not a path") as refused:
            flow(recipe=name)
        assert f"trusted recipe folders: {operator_dir}, {BUNDLED}" in str(refused.value)


def test_an_existing_recipe_file_outside_the_trusted_folders_is_not_read(tmp_path, operator_dir):
    outside = tmp_path / "outside.yaml"
    shutil.copy(DEMO_RECIPE, outside)
    for name in (str(outside), str(outside.with_suffix("")), "outside"):
        with pytest.raises(ValueError, match="trusted recipe folders") as refused:
            build_plantmix(recipe=name)
    assert "no outside.yaml" in str(refused.value) and "recipes there: demo, mine, plantmix-13m" in str(refused.value)


def test_an_unknown_recipe_name_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="no nope.yaml in the trusted recipe folders") as refused:
        fit_mixing_law(recipe="nope")
    assert str(BUNDLED) in str(refused.value) and "demo, plantmix-13m" in str(refused.value)


def test_workers_is_bounded():
    for workers in (0, trusted.MAX_WORKERS + 1):
        with pytest.raises(ParameterTypeError, match="workers"):
            build_plantmix(recipe="demo", workers=workers)


def test_names_resolve_in_the_operators_folders_first_then_the_bundled_one(operator_dir, tmp_path):
    shutil.copy(DEMO_RECIPE, operator_dir / "demo.yaml")
    (operator_dir / "not a name.yaml").write_text("name: x\n")
    assert trusted.resolve_recipe("demo") == operator_dir / "demo.yaml"
    assert trusted.resolve_recipe("plantmix-13m") == BUNDLED / "plantmix-13m.yaml"
    assert sorted(trusted.recipe_names()) == ["demo", "mine", "plantmix-13m"]
    # The bundled folder is found from the package, whatever the current directory.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert trusted.resolve_recipe("plantmix-13m") == BUNDLED / "plantmix-13m.yaml"
    finally:
        os.chdir(cwd)


def test_serve_trusts_its_recipe_dirs_and_dask_address_for_the_runs_it_starts(tmp_path, monkeypatch):
    monkeypatch.delenv(trusted.RECIPE_DIRS_ENV, raising=False)
    monkeypatch.delenv(trusted.DASK_ADDRESS_ENV, raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
    monkeypatch.setenv(trusted.RECIPE_DIRS_ENV, str(second))
    shutil.copy(DEMO_RECIPE, first / "mine.yaml")
    trusted.trust([first], "tls://10.0.0.1:8786")  # what `flows.serve --recipe-dir first --dask-address ...` does
    assert trusted.trusted_recipe_dirs() == [first, second, BUNDLED]
    assert trusted.dask_address() == "tls://10.0.0.1:8786"
    with pytest.raises(ValueError, match="not a folder"):
        trusted.trust([tmp_path / "missing"])
    served = list(serve.deployments(["mine"]))  # name: demo in the file; the runs ask for "mine"
    assert [(d.flow_name, d.name, d.parameters) for d in served] == [
        ("build-plantmix", "demo", {"recipe": "mine"}),
        ("fit-mixing-law", "demo", {"recipe": "mine"}),
    ]
    with pytest.raises(ValueError, match="not a path"):
        list(serve.deployments(["manifests/recipes/demo.yaml"]))
