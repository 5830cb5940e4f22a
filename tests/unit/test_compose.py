"""Deployment files agree with the settings: compose, Dockerfile and README name the same variables.

stream/settings.py is the one source of truth for what the worker reads; docker-compose.yml must set
every one of those variables, README.md must document every one, and docker-compose.yml must be a
valid Compose file (checked against the vendored Compose Specification schema, and by the real
docker-compose tool where it is installed).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft201909Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from pydantic import ValidationError as SettingsValidationError
from pydantic_settings import BaseSettings

from stream.settings import KafkaSettings, Settings, TopicSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose_spec.json"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"

SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (KafkaSettings, TopicSettings, Settings)


def settings_env_vars() -> dict[str, Any]:
    """Every environment variable the settings read, mapped to its default.

    Fields that are themselves settings objects (``Settings.kafka``, ``Settings.topics``) are built
    from their own variables, not read from one, so they are skipped.
    """
    env_vars: dict[str, Any] = {}
    for cls in SETTINGS_CLASSES:
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
                continue
            if field.alias is not None or field.validation_alias is not None:
                raise AssertionError(
                    f"{cls.__name__}.{name} has an alias: teach this test about it"
                )
            env_vars[f"{prefix}{name}".upper()] = field.get_default(call_default_factory=True)
    return env_vars


def load_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return loaded


def worker_environment() -> dict[str, Any]:
    environment = load_compose()["services"]["worker"]["environment"]
    assert isinstance(environment, dict), "keep the worker environment a mapping, one key a line"
    return environment


def load_compose_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    return loaded


def compose_validator() -> Draft201909Validator:
    """A validator for the dialect the schema declares, named explicitly: jsonschema does not
    recognise the schema's ``http://...#`` spelling of the 2019-09 URI and would guess."""
    schema = load_compose_schema()
    Draft201909Validator.check_schema(schema)
    return Draft201909Validator(schema, format_checker=FormatChecker())


def readme_configuration_names() -> list[str]:
    """The backticked names in the first column of README.md's ``## Configuration`` table."""
    text = README.read_text(encoding="utf-8")
    match = re.search(
        r"^## Configuration[ \t]*\n(.*?)(?=^#{1,2} |\Z)", text, re.MULTILINE | re.DOTALL
    )
    assert match, "README.md has no '## Configuration' section"
    names = []
    for line in match.group(1).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or set(cells[0]) <= set("-: "):
            continue  # prose, or the table's separator row
        name = re.fullmatch(r"`([A-Z0-9_]+)`", cells[0])
        if name:
            names.append(name.group(1))
        else:
            assert cells[0] == "Variable", f"README table row without a backticked name: {line!r}"
    return names


def test_settings_env_vars_cover_every_class() -> None:
    names = settings_env_vars()

    assert "KAFKA_BOOTSTRAP_SERVERS" in names
    assert "SENTISTREAM_INPUT_TOPIC" in names
    assert "SENTISTREAM_WEB_PORT" in names
    assert "SENTISTREAM_KAFKA" not in names
    assert "SENTISTREAM_TOPICS" not in names


def test_compose_spec_schema_declares_draft_2019_09() -> None:
    declared = load_compose_schema()["$schema"]

    assert declared.rstrip("#").split("//", 1)[1] == "json-schema.org/draft/2019-09/schema"


def test_compose_file_matches_compose_spec_schema() -> None:
    compose = load_compose()

    errors = [error.message for error in compose_validator().iter_errors(compose)]

    assert errors == []


def _ports_as_number(compose: dict[str, Any]) -> None:
    compose["services"]["worker"]["ports"] = 6066


def _unknown_top_level_key(compose: dict[str, Any]) -> None:
    compose["servics"] = {}


def _unknown_service_key(compose: dict[str, Any]) -> None:
    compose["services"]["worker"]["restart_policy"] = "always"


def _environment_value_as_mapping(compose: dict[str, Any]) -> None:
    compose["services"]["worker"]["environment"]["SENTISTREAM_WEB_PORT"] = {"port": 6066}


@pytest.mark.parametrize(
    "break_compose",
    [_ports_as_number, _unknown_top_level_key, _unknown_service_key, _environment_value_as_mapping],
)
def test_compose_spec_schema_rejects_broken_compose_file(
    break_compose: Callable[[dict[str, Any]], None],
) -> None:
    broken = copy.deepcopy(load_compose())
    break_compose(broken)

    with pytest.raises(ValidationError):
        compose_validator().validate(broken)


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose executable not on PATH; the schema test still validates the file",
)
def test_docker_compose_config_accepts_compose_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr


def test_readme_configuration_table_lists_every_settings_variable() -> None:
    names = readme_configuration_names()

    assert len(names) == len(set(names)), "README lists a variable twice"
    assert set(names) == set(settings_env_vars())


def test_compose_worker_sets_every_settings_variable() -> None:
    assert set(worker_environment()) == set(settings_env_vars())


def test_compose_worker_passes_optional_variables_through_unset() -> None:
    """Variables without a default must be unset unless the host sets them: an empty string
    (what ``${VAR:-}`` gives) is a value, and an invalid one for e.g. an int or a Literal."""
    environment = worker_environment()
    optional = {name for name, default in settings_env_vars().items() if default is None}

    assert optional, "expected some settings without a default (SASL/SSL, model revision)"
    assert {name: environment[name] for name in optional} == dict.fromkeys(optional)


def test_compose_worker_environment_builds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in settings_env_vars():
        monkeypatch.delenv(name, raising=False)
    for name, value in worker_environment().items():
        if value is not None:
            monkeypatch.setenv(name, str(value))

    try:
        settings = Settings.from_env()
    except SettingsValidationError as error:  # pragma: no cover - the failure message is the point
        pytest.fail(f"compose worker environment is not valid settings:\n{error}")

    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert not settings.kafka.embedded
    assert settings.data_dir == Path("/data")


def _dockerfile_exec_form(instruction: str) -> list[str]:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    found = [line for line in lines if line.upper().startswith(f"{instruction} ")]
    assert len(found) == 1, f"expected one {instruction} in the Dockerfile, found {found}"
    value = json.loads(found[0][len(instruction) :].strip())
    assert isinstance(value, list), f"{instruction} should use the exec (JSON array) form"
    return value


def test_dockerfile_runs_sentistream_worker() -> None:
    command = _dockerfile_exec_form("ENTRYPOINT") + _dockerfile_exec_form("CMD")

    assert command == ["sentistream", "worker"]


def test_worker_port_matches_web_port_setting() -> None:
    web_port = int(worker_environment()["SENTISTREAM_WEB_PORT"])
    ports = load_compose()["services"]["worker"]["ports"]
    exposed = re.findall(r"^EXPOSE\s+(\d+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)

    assert len(ports) == 1
    published, target = (int(part) for part in str(ports[0]).split(":"))
    assert published == target == web_port
    assert exposed == [str(web_port)]
