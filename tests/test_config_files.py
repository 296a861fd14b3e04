"""The one ``${VAR}`` / ``${VAR:-default}`` expander (service.config_files) of both YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config_files import ConfigFileError, expand_env, load_yaml_file
from service.store.subscribers import SubscriberError, load_subscribers_file


def test_env_expansion() -> None:
    """${VAR} is replaced, ${VAR:-default} falls back, and an unset ${VAR} is an error."""
    env = {"A": "x"}
    assert expand_env({"k": ["${A}-${B:-y}"]}, env) == {"k": ["x-y"]}
    with pytest.raises(ConfigFileError, match="MISSING"):
        expand_env({"k": "${MISSING}"}, env)


def test_plain_reference_is_replaced_inside_a_string() -> None:
    """${NAME} takes the variable's value, also in the middle of a longer string."""
    assert expand_env("https://${HOST}/hooks", {"HOST": "ledger.internal"}) == (
        "https://ledger.internal/hooks"
    )


def test_default_is_used_only_when_the_variable_is_unset() -> None:
    """${NAME:-default} gives the default when NAME is unset, and NAME's value when set."""
    assert expand_env("${PORT:-8080}", {}) == "8080"
    assert expand_env("${PORT:-8080}", {"PORT": "9000"}) == "9000"
    assert expand_env("${PORT:-8080}", {"PORT": ""}) == ""


def test_empty_default_gives_an_empty_string() -> None:
    """${NAME:-} with NAME unset is an empty string, not an error."""
    assert expand_env("a${OPTIONAL:-}b", {}) == "ab"


def test_missing_variable_error_names_it_and_where_it_was() -> None:
    """An unset ${NAME} without default is an error naming the variable and its place."""
    with pytest.raises(ConfigFileError) as caught:
        expand_env({"sources": {"kp": {"secrets": ["${KP_SECRET}"]}}}, {})
    assert "KP_SECRET" in str(caught.value)
    assert "sources.kp.secrets[0]" in str(caught.value)


def test_nested_lists_and_dicts_are_expanded_and_other_values_kept() -> None:
    """Strings at any depth of lists and dicts are expanded; numbers, bools, None stay."""
    value = {"a": [{"b": "${X}"}, ["${Y:-y}", 3]], "c": True, "d": None, "e": 1.5}
    assert expand_env(value, {"X": "x"}) == {
        "a": [{"b": "x"}, ["y", 3]],
        "c": True,
        "d": None,
        "e": 1.5,
    }


@pytest.mark.parametrize("text", ["$5", "$HOME", "price: $ 3", "${", "${1BAD}", "$${", "a$b$"])
def test_dollar_literals_are_left_alone(text: str) -> None:
    """A ``$`` that is not a ``${NAME}`` reference stays as written, even with HOME set."""
    assert expand_env(text, {"HOME": "/root", "1BAD": "x"}) == text


def test_load_yaml_file_expands_and_names_the_file_on_error(tmp_path: Path) -> None:
    """A YAML file loads with references expanded; an unset variable names file and variable."""
    path = tmp_path / "conf.yaml"
    path.write_text('a: ["${A}", "${B:-b}"]\n')
    assert load_yaml_file(path, {"A": "x"}) == {"a": ["x", "b"]}
    with pytest.raises(ConfigFileError) as caught:
        load_yaml_file(path, {})
    assert str(path) in str(caught.value) and "A" in str(caught.value)


def test_subscribers_file_uses_the_same_expander(tmp_path: Path) -> None:
    """The subscribers file knows ${VAR:-default} too, and names file and variable when unset."""
    path = tmp_path / "subscribers.yaml"
    path.write_text(
        "subscribers:\n  - {id: a, url: '${URL:-http://127.0.0.1:9/hooks}', secret: '${SECRET}'}\n"
    )
    secret = "whsec_" + "A" * 43 + "="
    (subscriber,) = load_subscribers_file(path, ["127.0.0.1"], env={"SECRET": secret})
    assert subscriber.url == "http://127.0.0.1:9/hooks"
    with pytest.raises(SubscriberError) as caught:
        load_subscribers_file(path, ["127.0.0.1"], env={})
    assert caught.value.code == "missing_env"
    assert str(path) in caught.value.message and "SECRET" in caught.value.message
