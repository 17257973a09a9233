"""The typed run spec changes nothing a user has: every parameter string the rules receive is
byte-identical to what was planned before it (tests/data/params_golden.json.gz), specs survive
the round trip through their JSON form, and model.pt files written before it load and compute
the same logits."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import InputError
from pipeline.models import RunModel
from pipeline.spec import Method, RunSpec, TrainSettings
from plan_params import all_params, golden, golden_configs

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["default", "extended", "tiny"])
def test_rule_parameters_are_byte_identical_to_before_the_typed_spec(name):
    expected = golden()[name]
    planned = all_params(golden_configs()[name])
    # tables and methods added since are new jobs; every job recorded then is planned, unchanged
    assert sorted(set(expected) - set(planned)) == []
    changed = [job for job in expected if planned[job] != expected[job]]
    assert not changed, (
        f"{len(changed)} jobs changed, e.g. {changed[0]}:\n{planned[changed[0]]}\n{expected[changed[0]]}"
    )


def test_run_specs_round_trip_through_their_json_form():
    import json

    for job, text in golden()["extended"].items():
        if job.startswith("fit "):
            spec = RunSpec.from_dict(json.loads(text))
            assert spec.to_json() == text and RunSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("method", ["nes", "kmeans", "nes_star"])
def test_a_model_written_before_the_typed_spec_loads_and_computes_the_same_logits(method):
    model = RunModel.load(DATA / f"model_{method}_v0.pt")
    reference = np.load(DATA / "model_v0_logits.npz")
    assert model.method is Method(method) and model.spec.run.startswith(f"{method}-lite0-K8")
    logits = model.token_logits(torch.from_numpy(reference["high"]), torch.from_numpy(reference["input"]))
    np.testing.assert_allclose(logits.numpy(), reference[method], rtol=1e-5, atol=1e-6)


def test_bad_settings_name_the_key_and_what_was_expected():
    import json

    text = next(v for k, v in golden()["tiny"].items() if k.startswith("fit camvid/nes-"))
    data = json.loads(text)
    data["train"]["epochs"] = "3"
    with pytest.raises(InputError, match=r"run spec\.train\.epochs: expected int, got '3'"):
        RunSpec.from_dict(data)
    data["train"]["epochs"], data["method"] = 3, "kmeans++"
    with pytest.raises(InputError, match="unknown method 'kmeans\\+\\+'"):
        RunSpec.from_dict(data)


def test_beta_is_resolved_once_and_null_equals_its_published_value():
    base = {
        "K": 256,
        "alpha": 0.3,
        "epochs": 1,
        "batch_size": 2,
        "lr": 1e-3,
        "lr_min": 0,
        "tau_max": 1,
        "tau_min": 0.3,
        "t": 0.01,
        "knn_k": 8,
        "pixel_knn": [[10, 2]],
        "depth": 1,
        "heads": 1,
        "dim_head": 8,
        "mlp_ratio": 0.5,
    }
    null, given = TrainSettings.from_dict({**base, "beta": None}), TrainSettings.from_dict({**base, "beta": 0.08})
    assert null == given and null.beta == 0.08
    assert null.to_dict()["pixel_knn"] == [[10, 2]] and null.to_dict()["tau_max"] == 1  # numbers as given


def test_the_schema_offers_every_method_and_tables_name_each_once():
    import yaml

    from pipeline.tables import METHOD_NAMES

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml").read_text())
    table = schema["$defs"]["table"]["properties"]["methods"]["items"]["enum"]
    assert sorted(table) == sorted(str(m) for m in Method)
    assert len(set(METHOD_NAMES.values())) == len(Method)
    # segmentations take the methods that can segment new images: not those that label one split
    segmentable = schema["properties"]["segmentations"]["additionalProperties"]["properties"]["methods"]["items"][
        "enum"
    ]
    assert sorted(segmentable) == sorted(str(m) for m in Method if not m.traits.evaluated_split)
    # every training key of the schema is a typed setting, and every setting can be swept
    settings = {f.name for f in dataclasses.fields(TrainSettings) if f.name != "given"}
    assert set(schema["$defs"]["train"]["properties"]) == settings
    assert set(schema["$defs"]["sweep"]["propertyNames"]["enum"]) == settings


def test_a_model_file_never_chooses_paths_and_must_agree_with_its_config(tmp_path, monkeypatch):
    """An untrusted model.pt: its weights_dir is ignored (converted weights go to the local
    folder), tensors that disagree with its settings are refused naming the file, and a file
    holding code objects is refused without advice to load it unsafely."""
    from pipeline.predict import backbone_spec_for

    ckpt = torch.load(DATA / "model_nes_v0.pt", weights_only=True)
    ckpt["config"]["backbone_spec"]["weights_dir"] = "/somewhere/else"
    torch.save(ckpt, tmp_path / "evil.pt")
    model = RunModel.load(tmp_path / "evil.pt")
    monkeypatch.delenv("NES_WEIGHTS_DIR", raising=False)
    assert backbone_spec_for(model).weights_dir == "weights"
    assert backbone_spec_for(model, tmp_path / "w").weights_dir == str(tmp_path / "w")
    ckpt["config"]["train"]["K"] = 9  # psi has 8 outputs
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(InputError, match=r"mismatch\.pt: psi's weights do not match its config \(K=9"):
        RunModel.load(tmp_path / "mismatch.pt")
    kmeans = torch.load(DATA / "model_kmeans_v0.pt", weights_only=True)
    kmeans["centres"] = kmeans["centres"][:5]
    torch.save(kmeans, tmp_path / "centres.pt")
    with pytest.raises(InputError, match=r"centres\.pt: 5 centres, its config says K=8"):
        RunModel.load(tmp_path / "centres.pt")
    torch.save({"method": "nes", "config": {}, "hook": print}, tmp_path / "code.pt")
    with pytest.raises(InputError, match=r"code\.pt: holds objects other than tensors") as refused:
        RunModel.load(tmp_path / "code.pt")
    assert "weights_only" not in str(refused.value)
