"""Which bundle each pipeline starts with: the store's active version when it loads.

At boot a pipeline runs, in this order of preference:

1. the store's active version of its model (the model is known by the manifest ``name``
   of the config's ``model`` file), if it verifies (signature when a key is set, sha256),
   fits the pipeline and passes its smoke test;
2. else the most recent previous version that does (recorded as a rollback, with why);
3. else the config's ``model`` file itself (logged, and recorded as active).

The config's bundle is imported into the store the first time (origin ``config``), so
that it is a version like any other and the first push has something to roll back to.
When the config file later names a different bundle, it replaces the active version
only while that version also came from the config: a pushed or activated version is a
later decision than the config file and wins (the log says so at every boot).
"""

from __future__ import annotations

import hashlib
import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.bundle.reader import Bundle, read_bundle
from device.bundle.signing import load_public_key
from device.config import ClassificationPipeline, DeviceConfig, RuntimeSection
from device.config import FramePipelineConfig as PipelineConfig
from device.errors import EdgewatchError
from device.modelstore.compat import check_compatible
from device.modelstore.store import ModelStore
from device.pipelines.chain_config import ChainedClassificationConfig as ChainedConfig
from device.pipelines.detection_config import DetectionPipelineConfig
from device.pipelines.loaded import LoadedPipeline, build_pipeline

log = logging.getLogger(__name__)


def max_model_bytes(runtime: RuntimeSection) -> int:
    return int(runtime.max_model_mb * 1024 * 1024)


def public_key_of(runtime: RuntimeSection) -> Ed25519PublicKey | None:
    return load_public_key(runtime.public_key) if runtime.public_key else None


def boot_pipelines(config: DeviceConfig, store: ModelStore) -> list[LoadedPipeline]:
    key = public_key_of(config.runtime)
    return [
        boot_pipeline(name, cfg, store, config.runtime, key)
        for name, cfg in config.pipelines.items()
        # Frame pipelines; record pipelines (logs, sensors, audio) boot elsewhere.
        if isinstance(cfg, ClassificationPipeline | DetectionPipelineConfig | ChainedConfig)
    ]


def boot_pipeline(
    name: str,
    cfg: PipelineConfig,
    store: ModelStore,
    runtime_cfg: RuntimeSection,
    key: Ed25519PublicKey | None,
) -> LoadedPipeline:
    limit = max_model_bytes(runtime_cfg)
    config_bundle = read_bundle(cfg.model, public_key=key, max_model_bytes=limit)
    config_data = cfg.model.read_bytes()
    config_sha = hashlib.sha256(config_data).hexdigest()
    model = config_bundle.manifest.name
    with store.lock():
        state = store.read(model)
        fresh_config = (
            state is not None
            and state.origin == "config"
            and state.config_bundle_sha256 != config_sha
        )
        if state is None or state.active_record is None or fresh_config:
            why = "config file names a new bundle" if fresh_config else "first start"
            loaded = build_pipeline(name, cfg, config_bundle, runtime_cfg)
            store.install(model, config_data, config_bundle.manifest, "config", reason=why)
            log.info("pipeline %s: %s from the config (%s)", name, loaded.model, why)
            return loaded
        if state.config_bundle_sha256 != config_sha:
            log.info(
                "pipeline %s: the config names %s, but the store's active version %s "
                "(%s) is used; `edgewatch models list` shows the versions",
                name, config_bundle.manifest.model_ref, state.active, state.origin,
            )  # fmt: skip
        failures: list[str] = []
        for position, version in enumerate(k for k in (state.active, *state.previous) if k):
            record = state.record(version)
            if record is None:
                continue
            try:
                bundle = read_bundle(
                    store.path_of(model, record), public_key=key, max_model_bytes=limit
                )
                check_compatible(bundle.manifest, name, cfg)
                loaded = build_pipeline(name, cfg, bundle, runtime_cfg)
            except (EdgewatchError, OSError) as exc:
                log.warning("pipeline %s: stored %s %s cannot serve: %s", name, model, version, exc)
                failures.append(f"{version}: {exc}")
                continue
            if position > 0:
                store.rollback_to(model, version, f"at boot: {'; '.join(failures)}")
            log.info("pipeline %s: %s from the model store (%s)", name, loaded.model,
                     "active" if position == 0 else "previous version")  # fmt: skip
            return loaded
        log.warning(
            "pipeline %s: no stored version of %s loads (%s); using the config's %s",
            name, model, "; ".join(failures), config_bundle.manifest.model_ref,
        )  # fmt: skip
        return _from_config(
            name,
            cfg=cfg,
            bundle=config_bundle,
            data=config_data,
            store=store,
            runtime_cfg=runtime_cfg,
        )


def _from_config(
    name: str,
    *,
    cfg: PipelineConfig,
    bundle: Bundle,
    data: bytes,
    store: ModelStore,
    runtime_cfg: RuntimeSection,
) -> LoadedPipeline:
    loaded = build_pipeline(name, cfg, bundle, runtime_cfg)
    store.install(
        bundle.manifest.name, data, bundle.manifest, "config",
        reason="no stored version loads at boot",
    )  # fmt: skip
    return loaded
