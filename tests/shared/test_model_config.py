"""The model config file: seed format round trip, validation naming the field, locked atomic writes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import InvalidConfigError
from shared.generation import SamplingParams
from shared.model_config import ConfigStore, ModelConfig, ModelEntry, decode_config, encode_config

SEED = {
    "models": {
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0": {
            "description": "Small chat model",
            "quantization": "4bit",
            "default_parameters": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256},
        },
        "google/flan-t5-small": {
            "description": "Seq2seq",
            "quantization": "none",
            "default_parameters": {"temperature": 0.5, "top_p": 1.0, "max_new_tokens": 64},
            "model_type": "t5",
        },
    },
    "default_model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
}


def _write(path: Path, value: object) -> bytes:
    data = (value if isinstance(value, str) else json.dumps(value, indent=2)).encode()
    path.write_bytes(data)
    return data


def test_seed_file_round_trips_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    _write(path, SEED)
    store = ConfigStore(path)
    config = store.read()
    assert config.default_model == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    entry = config.models["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    assert entry.quantization == "4bit"
    assert entry.sampling_params() == SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=256)
    assert json.loads(encode_config(config)) == SEED
    store.update(lambda c: None)
    assert json.loads(path.read_bytes()) == SEED


def test_missing_file_is_created_empty(tmp_path: Path) -> None:
    path = tmp_path / "models" / "config.json"
    config = ConfigStore(path).read()
    assert config == ModelConfig()
    assert json.loads(path.read_bytes()) == {"models": {}, "default_model": None}


def test_unknown_keys_are_kept_on_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    seed = json.loads(json.dumps(SEED))
    seed["owner"] = {"team": "ml"}
    tiny = seed["models"]["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    tiny["license"] = "apache-2.0"
    tiny["default_parameters"]["typical_p"] = 0.95
    _write(path, seed)
    store = ConfigStore(path)
    store.set_entry("gpt2", ModelEntry(description="GPT-2", quantization="8bit"))
    written = json.loads(path.read_bytes())
    assert written["owner"] == {"team": "ml"}
    assert written["models"]["TinyLlama/TinyLlama-1.1B-Chat-v1.0"] == tiny
    gpt2 = {"description": "GPT-2", "quantization": "8bit", "default_parameters": {}}
    assert written["models"]["gpt2"] == gpt2


@pytest.mark.parametrize(
    ("content", "field", "reason"),
    [
        ('{"models": {}, "default_model": }', None, "line 1, column 33"),
        ('{"models": {},\n "default_model": null', None, "truncated"),
        ("[]", "top level", "expected an object, got an array"),
        ('{"models": []}', "models", "expected an object, got an array"),
        ('{"models": {}, "default_model": 3}', "default_model", "expected a string or null"),
        ('{"models": {"x": "y"}}', 'models["x"]', "expected an object, got a string"),
        ('{"models": {"x": {"quantization": "16bit"}}}', 'models["x"].quantization',
         'expected one of 4bit, 8bit, none, got "16bit"'),
        ('{"models": {"x": {"description": 5}}}', 'models["x"].description', "expected `str`, got `int`"),
        ('{"models": {"x": {"default_parameters": {"temperature": 5}}}}',
         'models["x"].default_parameters.temperature', "expected `float` <= 2.0"),
        ('{"models": {"x": {"default_parameters": {"max_new_tokens": "many"}}}}',
         'models["x"].default_parameters.max_new_tokens', "got `str`"),
        ('{"models": {"x": {"default_parameters": []}}}', 'models["x"].default_parameters',
         "expected `object`, got `array`"),
        ('{"models": {"x": {"model_type": "llama9"}}}', 'models["x"].model_type', "unknown model_type"),
    ],
)
def test_invalid_file_raises_naming_the_field_and_is_left_untouched(
    tmp_path: Path, content: str, field: str | None, reason: str
) -> None:
    path = tmp_path / "config.json"
    before = _write(path, content)
    store = ConfigStore(path)
    with pytest.raises(InvalidConfigError) as info:
        store.read()  # at start-up: the operator is told which file
    assert str(path) in info.value.message and reason in info.value.message
    if field is not None:
        assert f"{path}: {field}: " in info.value.message
        assert info.value.param == field
    with pytest.raises(InvalidConfigError) as info:
        store.set_default_model("x")  # a write may come from a client: no path
    assert str(path) not in info.value.message and str(tmp_path) not in info.value.message
    assert reason in info.value.message and "refused until the file is fixed" in info.value.message
    if field is not None:
        assert f"file: {field}: " in info.value.message
        assert info.value.param == field
    assert path.read_bytes() == before


def test_a_file_broken_by_an_edit_keeps_the_last_good_config_and_refuses_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.json"
    _write(path, SEED)
    store = ConfigStore(path)
    good = store.read()
    assert store.problem is None
    path.write_text('{"models": {')  # a half-saved edit
    assert store.read() == good and store.view().default_model == good.default_model
    assert store.problem is not None and "invalid model config file" in store.problem
    assert str(tmp_path) not in store.problem
    assert str(path) in caplog.text  # the operator's log names the file
    with pytest.raises(InvalidConfigError, match="refused until the file is fixed") as info:
        store.set_default_model("m")
    assert str(tmp_path) not in info.value.message
    assert path.read_text() == '{"models": {'
    _write(path, {"models": {}, "default_model": "fixed"})
    assert store.problem is None and store.read().default_model == "fixed"
    store.set_default_model("m")
    assert store.read().default_model == "m"


def test_an_update_that_breaks_the_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    before = _write(path, SEED)

    def break_it(config: ModelConfig) -> None:
        config.models["x"] = ModelEntry(default_parameters={"top_p": 0})

    field = r'models\["x"\]\.default_parameters\.top_p'
    with pytest.raises(InvalidConfigError, match=f"refusing to write .*{field}"):
        ConfigStore(path).update(break_it)
    assert path.read_bytes() == before


def test_convenience_methods(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path / "config.json")
    store.set_entry("a", ModelEntry(description="A", model_type="gpt"))
    store.set_default_model("a")
    assert store.get_entry("a") == ModelEntry(description="A", model_type="gpt")
    assert store.get_entry("b") is None
    assert store.remove_entry("a") is True
    assert store.remove_entry("a") is False
    assert store.read() == ModelConfig()  # removing the default model clears default_model


def test_update_may_return_a_new_config(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path / "config.json")
    result = store.update(lambda c: ModelConfig(default_model="m", extra={"note": 1}))
    assert result == store.read() == ModelConfig(default_model="m", extra={"note": 1})


def test_reads_are_copies_and_follow_external_edits(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    _write(path, SEED)
    store = ConfigStore(path)
    store.read().models.clear()  # mutating a read must not leak into the cache
    assert len(store.read().models) == 2
    edited = json.loads(json.dumps(SEED))
    edited["default_model"] = "google/flan-t5-small"
    _write(path, edited)
    assert store.read().default_model == "google/flan-t5-small"


def test_unchanged_update_does_not_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    ConfigStore(path).read()
    inode = path.stat().st_ino
    ConfigStore(path).update(lambda c: None)
    assert path.stat().st_ino == inode


def test_rewrite_keeps_file_permissions(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    _write(path, SEED)
    path.chmod(0o640)
    ConfigStore(path).set_default_model(None)
    assert path.stat().st_mode & 0o777 == 0o640


@given(
    st.dictionaries(st.text(min_size=1), st.builds(
        ModelEntry,
        description=st.text(),
        quantization=st.sampled_from([None, "4bit", "8bit", "none"]),
        default_parameters=st.fixed_dictionaries({}, optional={
            "temperature": st.floats(0, 2), "max_new_tokens": st.integers(1, 10_000),
            "note": st.text()}),
        model_type=st.sampled_from([None, "llama", "gpt", "t5"]),
        extra=st.dictionaries(st.sampled_from(["license", "tags"]), st.text()),
    )),
    st.none() | st.text(),
)
def test_encode_decode_round_trip(models: dict[str, ModelEntry], default_model: str | None) -> None:
    config = ModelConfig(models=models, default_model=default_model)
    assert decode_config(encode_config(config)) == config


def _add_models(path: str, prefix: str, count: int) -> None:
    store = ConfigStore(Path(path))
    for i in range(count):
        model_id = f"{prefix}-{i}"

        def add(config: ModelConfig, model_id: str = model_id) -> None:
            config.models[model_id] = ModelEntry(description=model_id, quantization="none")

        store.update(add)


def test_two_writer_processes_lose_no_update_and_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    ConfigStore(path).read()
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    writers = [context.Process(target=_add_models, args=(str(path), p, 50)) for p in ("a", "b")]
    for writer in writers:
        writer.start()
    reads = 0
    try:
        while any(w.is_alive() for w in writers) or reads == 0:
            json.loads(path.read_bytes())  # a torn write would fail here
            reads += 1
    finally:
        for writer in writers:
            writer.join(timeout=60)
    assert [w.exitcode for w in writers] == [0, 0]
    models = ConfigStore(path).read().models
    assert sorted(models) == sorted(f"{p}-{i}" for p in ("a", "b") for i in range(50))
    leftovers = {p.name for p in tmp_path.iterdir()} - {"config.json", "config.json.lock"}
    assert leftovers == set()


def test_failed_replace_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.json"
    before = _write(path, SEED)

    def disk_full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        ConfigStore(path).set_default_model(None)
    assert path.read_bytes() == before
    assert {p.name for p in tmp_path.iterdir()} - {"config.json.lock"} == {"config.json"}


def test_the_files_default_model_wins_over_the_setting() -> None:
    assert ModelConfig(default_model="from-file").default_or("from-setting") == "from-file"
    assert ModelConfig().default_or("from-setting") == "from-setting"
    assert ModelConfig().default_or(None) is None


def test_an_unknown_key_of_an_entry_is_a_warning_naming_the_closest_known_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.json"
    _write(path, {"models": {"m": {"description": "d", "kep_alive": "5m", "owner_note": "mine"}}})
    store = ConfigStore(path)
    entry = store.read().models["m"]  # the file still loads, the keys kept as written
    assert entry.extra == {"kep_alive": "5m", "owner_note": "mine"} and entry.keep_alive is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'kep_alive'" in w and "did you mean 'keep_alive'?" in w for w in warnings), warnings
    assert any("'owner_note'" in w and "known keys: description" in w for w in warnings), warnings
    caplog.clear()
    store.read()
    assert not caplog.records, "said once per version of the file"
