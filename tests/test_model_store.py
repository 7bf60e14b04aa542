"""The model store on disk, boot selection and `edgewatch models` without a daemon."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from device.bundle.reader import read_bundle
from device.cli import main
from device.config import load_config
from device.errors import ModelStoreError
from device.modelstore.boot import boot_pipelines
from device.modelstore.store import ModelStore, version_key
from tests.helpers_modelstore import variant, write_device_config

NAME = "tiny-shapes"


@pytest.fixture
def versions(int8_bundle: Path, tmp_path: Path) -> list[Path]:
    """Four real bundles of the same model: 0.1.0 (the original) to 0.4.0."""
    out = [int8_bundle]
    for minor in (2, 3, 4):
        out.append(variant(int8_bundle, tmp_path / f"v{minor}.ewm", version=f"0.{minor}.0"))
    return out


def install(store: ModelStore, path: Path, origin: str = "push") -> str:
    state = store.install(NAME, path.read_bytes(), read_bundle(path).manifest, origin)  # type: ignore[arg-type]
    assert state.active is not None
    return state.active


def test_install_activate_rollback_and_history(tmp_path: Path, versions: list[Path]) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=3).open()
    first = install(store, versions[0], "config")
    second = install(store, versions[1])
    state = store.read(NAME)
    assert state is not None
    assert state.active == second and state.previous == (first,) and state.origin == "push"
    assert second == version_key("0.2.0", state.active_record.bundle_sha256)  # type: ignore[union-attr]
    assert [h.action for h in state.history] == ["installed", "activated"] * 2
    generation = state.generation

    rolled = store.rollback(NAME, reason="operator said so")
    assert rolled.active == first and rolled.origin == "rollback" and rolled.previous == ()
    assert rolled.generation == generation + 1
    assert rolled.history[-1].action == "rolled-back"
    assert "operator said so" in rolled.history[-1].reason
    with pytest.raises(ModelStoreError, match="no previous version"):
        store.rollback(NAME)

    assert store.resolve(NAME, "0.2.0").key == second
    again = store.activate(NAME, second)
    assert again.active == second and again.previous == (first,) and again.origin == "activate"
    with pytest.raises(ModelStoreError, match="has no version"):
        store.resolve(NAME, "9.9.9")
    with pytest.raises(ModelStoreError, match="holds no model"):
        store.resolve("other", "0.1.0")


def test_keeps_n_versions_and_never_the_active_or_previous(
    tmp_path: Path, versions: list[Path]
) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=2).open()
    keys = [install(store, path) for path in versions]
    state = store.read(NAME)
    assert state is not None
    assert {v.key for v in state.versions} == {keys[-1], keys[-2]}
    assert state.previous == (keys[-2],)
    files = sorted(p.name for p in (tmp_path / "models" / NAME).glob("*.ewm"))
    assert files == sorted(f"{k}.ewm" for k in keys[-2:])


def test_open_removes_what_an_interrupted_write_left(tmp_path: Path, versions: list[Path]) -> None:
    store = ModelStore(tmp_path / "models").open()
    install(store, versions[0])
    folder = tmp_path / "models" / NAME
    (folder / ".incoming-0.2.0-aaaaaaaaaaaa.ewm").write_bytes(b"half a bundle")
    (folder / ".state.json.tmp-123").write_bytes(b"{")
    (folder / "0.3.0-bbbbbbbbbbbb.ewm").write_bytes(versions[2].read_bytes())  # no state names it
    store = ModelStore(tmp_path / "models").open()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["state.json", f"{store.read(NAME).active}.ewm"]  # type: ignore[union-attr]
    )


def _hold_lock(root: str, held: multiprocessing.synchronize.Event, release: float) -> None:
    with ModelStore(Path(root)).lock():
        held.set()
        time.sleep(release)


def test_the_lock_serialises_processes(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    held = multiprocessing.get_context("spawn").Event()
    other = multiprocessing.get_context("spawn").Process(
        target=_hold_lock, args=(str(root), held, 1.0)
    )
    other.start()
    try:
        assert held.wait(30)
        started = time.monotonic()
        with ModelStore(root).lock():
            waited = time.monotonic() - started
    finally:
        other.join(10)
    assert waited >= 0.5


def test_boot_prefers_the_store_and_falls_back_past_a_broken_version(
    tmp_path: Path, versions: list[Path], scene_video_path: Path
) -> None:
    config_path = write_device_config(tmp_path, 1883, scene_video_path, versions[0])
    config = load_config(config_path)
    store = ModelStore(config.device.state_dir / "models").open()
    # First boot: the config's bundle is imported as the active version.
    [loaded] = boot_pipelines(config, store)
    assert loaded.model.version == "0.1.0"
    state = store.read(NAME)
    assert state is not None and state.origin == "config" and len(state.versions) == 1

    second = install(store, versions[1])
    third = install(store, versions[2])
    [loaded] = boot_pipelines(config, store)
    assert loaded.model.version == "0.3.0"

    # The active file is damaged on disk: boot takes the previous one and records why.
    active_file = store.path_of(NAME, store.read(NAME).active_record)  # type: ignore[arg-type, union-attr]
    active_file.write_bytes(active_file.read_bytes()[:-100])
    [loaded] = boot_pipelines(config, store)
    assert loaded.model.version == "0.2.0"
    state = store.read(NAME)
    assert state is not None and state.active == second and state.origin == "rollback"
    assert third in state.history[-1].reason

    # Every stored version damaged: the config's file serves, and is active again.
    for record in state.versions:
        store.path_of(NAME, record).write_bytes(b"PK\x03\x04 not really")
    [loaded] = boot_pipelines(config, store)
    assert loaded.model.version == "0.1.0"
    assert store.read(NAME).origin == "config"  # type: ignore[union-attr]


@pytest.fixture
def scene_video_path(tmp_path: Path) -> Path:
    """Boot never opens the source; any path will do."""
    return tmp_path / "unused.mp4"


def test_models_commands_without_a_daemon(
    tmp_path: Path,
    versions: list[Path],
    scene_video_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_path = write_device_config(tmp_path, 1883, scene_video_path, versions[0])
    config = load_config(config_path)
    store = ModelStore(config.device.state_dir / "models").open()
    boot_pipelines(config, store)
    second = install(store, versions[1])

    assert main(["models", "list", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "no daemon running" in out and f"* {second}" in out and "0.1.0-" in out

    assert main(["models", "rollback", NAME, "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "rolled back" in out and "applies at next start" in out
    assert store.read(NAME).active.startswith("0.1.0-")  # type: ignore[union-attr]

    assert main(["models", "activate", NAME, "0.2.0", "--config", str(config_path)]) == 0
    assert "applies at next start" in capsys.readouterr().out
    assert store.read(NAME).active == second  # type: ignore[union-attr]
    [loaded] = boot_pipelines(config, store)
    assert loaded.model.version == "0.2.0"

    assert main(["models", "list", "--json", "--config", str(config_path)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["daemon_pid"] is None
    assert document["models"][0]["active"] == second

    assert main(["models", "activate", NAME, "7.0.0", "--config", str(config_path)]) == 2
    assert "has no version '7.0.0'" in capsys.readouterr().err
