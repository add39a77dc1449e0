"""FHIR validation, the type mapping and the opaque on-chain labels."""

from __future__ import annotations

import json
import re

import pytest
from fhir.resources.R4B.observation import Observation
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.demo import imaging_study, lab_observation, medication_request
from ehrshare.fhir import (
    FhirValidationError,
    TypeLabels,
    TypeMapping,
    TypeRule,
    UnknownRecordType,
    parse_resource,
    resource_bytes,
)

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def test_parse_accepts_dict_json_and_model() -> None:
    as_dict = parse_resource(lab_observation())
    as_json = parse_resource(json.dumps(lab_observation()))
    as_bytes = parse_resource(json.dumps(lab_observation()).encode())
    as_model = parse_resource(Observation.model_validate(lab_observation()))
    assert resource_bytes(as_dict) == resource_bytes(as_json)
    assert resource_bytes(as_bytes) == resource_bytes(as_model)
    assert as_dict.get_resource_type() == "Observation"


def test_missing_required_field_is_named() -> None:
    bad = lab_observation()
    del bad["status"]
    with pytest.raises(FhirValidationError, match=r"invalid FHIR Observation: status"):
        parse_resource(bad)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"status": "final"}, "has no resourceType"),
        ({"resourceType": "Spaceship"}, "'Spaceship' is not a FHIR R4 resource"),
        (42, "must be a fhir.resources model, dict or JSON"),
    ],
)
def test_bad_input_names_the_problem(data: object, message: str) -> None:
    with pytest.raises(FhirValidationError, match=re.escape(message)):
        parse_resource(data)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_model_construct_cannot_skip_validation() -> None:
    sneaky = Observation.model_construct(code={"text": "x"})  # no status: invalid
    with pytest.raises(FhirValidationError, match="status"):
        parse_resource(sneaky)


def test_default_mapping_types_the_demo_records() -> None:
    m = TypeMapping()
    assert m.resolve(parse_resource(lab_observation())) == "lab"
    assert m.resolve(parse_resource(imaging_study())) == "imaging"
    assert m.resolve(parse_resource(medication_request())) == "medication"
    patient = parse_resource({"resourceType": "Patient", "name": [{"family": "X"}]})
    assert m.resolve(patient) == "general"


def test_security_label_wins_over_category() -> None:
    obs = lab_observation()
    obs["meta"] = {"security": [{"system": ACT, "code": "HIV"}]}
    m = TypeMapping()
    assert m.resolve(parse_resource(obs)) == "sensitive"


def test_explicit_type_may_not_contradict_labels() -> None:
    m = TypeMapping()
    lab = parse_resource(lab_observation())
    assert m.resolve(lab, "lab") == "lab"
    with pytest.raises(UnknownRecordType, match="contradicts the resource's labels"):
        m.resolve(lab, "general")
    binary = parse_resource({"resourceType": "Binary", "contentType": "text/plain"})
    assert m.resolve(binary, "imaging") == "imaging"
    with pytest.raises(UnknownRecordType, match="'dental' is not configured"):
        m.resolve(binary, "dental")


def test_rules_from_profile_syntax() -> None:
    rule = TypeRule.from_dict(
        {"type": "psych", "security": [f"{ACT}|PSY"], "resource": "Observation"}
    )
    assert rule.security == ((ACT, "PSY"),)
    m = TypeMapping(rules=(rule,))
    obs = lab_observation()
    obs["meta"] = {"security": [{"system": ACT, "code": "PSY"}]}
    assert m.resolve(parse_resource(obs)) == "psych"
    assert m.resolve(parse_resource(lab_observation())) == "general"
    with pytest.raises(ValueError, match="unknown keys: colour"):
        TypeRule.from_dict({"type": "x", "colour": "red"})
    with pytest.raises(ValueError, match="has no condition"):
        TypeRule.from_dict({"type": "x"})


def test_labels_are_opaque_keyed_and_reversible() -> None:
    a = TypeLabels(b"\x01" * 32, ["lab", "imaging"])
    b = TypeLabels(b"\x02" * 32, ["lab"])
    assert a.opaque("lab") != a.opaque("imaging")
    assert a.opaque("lab") != b.opaque("lab")
    assert "lab" not in a.opaque("lab")
    assert a.reveal(a.opaque("lab")) == "lab"
    assert a.reveal(b.opaque("lab")) is None
    assert a.reveal("lab") is None
    assert "01" not in repr(a)
    with pytest.raises(ValueError, match="32 bytes"):
        TypeLabels(b"short")


@given(st.from_regex(r"[a-z0-9][a-z0-9-]{0,31}", fullmatch=True))
def test_label_roundtrip_and_chaincode_syntax(name: str) -> None:
    labels = TypeLabels(b"k" * 32, [name])
    opaque = labels.opaque(name)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", opaque)  # the chaincode's rule
    assert labels.reveal(opaque) == name


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"resourceType": st.sampled_from(["Observation", "Patient", "Binary", "X"])},
            optional={"status": json_values, "code": json_values, "category": json_values},
        ),
    )
)
def test_parser_only_raises_its_own_error(data: object) -> None:
    try:
        model = parse_resource(json.dumps(data))
    except FhirValidationError:
        return
    assert json.loads(resource_bytes(model))["resourceType"] == model.get_resource_type()


@pytest.mark.parametrize("as_json", [True, False])
def test_a_resource_nested_past_the_limit_is_refused(as_json: bool) -> None:
    nested: list[object] = []
    for _ in range(5000):
        nested = [nested]
    resource = {"resourceType": "Observation", "status": "final", "extension": nested}
    # The JSON text is built by hand: json.dumps itself cannot encode that deep.
    text = '{"resourceType": "Observation", "status": "final", "extension": ' + (
        "[" * 5001 + "]" * 5001 + "}"
    )
    with pytest.raises(FhirValidationError, match="nested more than 100 levels"):
        parse_resource(text if as_json else resource)


def test_deep_json_text_is_refused_before_the_c_decoder_recurses() -> None:
    """The C JSON decoder recurses per level; with a high recursion limit (another library may
    raise it) a deep enough document overflows the C stack: a segfault, not a RecursionError.
    Run in a subprocess, so the old behaviour fails this test instead of killing the suite."""
    import subprocess
    import sys

    program = (
        "import sys\n"
        "sys.setrecursionlimit(10**7)\n"
        "from ehrshare.fhir import FhirValidationError, parse_resource\n"
        "try:\n"
        '    parse_resource(\'{"resourceType": "Basic", "x": \' + \'[\' * 400000)\n'
        "except FhirValidationError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "refused:" in done.stdout and "deep" in done.stdout
