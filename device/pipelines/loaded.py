"""A pipeline ready to serve: the pipeline object and what the wire says about it.

Built at boot and again for every hot swap (device/modelstore), always the same way:
the bundle is loaded through the runtime, its tensors checked against its manifest and
its golden pair run, before the pipeline object exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from device.bundle.reader import Bundle
from device.config import FramePipelineConfig, RuntimeSection
from device.mqtt.payloads import ModelRef, PipelineState
from device.pipelines.classification import ClassificationPipeline
from device.pipelines.detection import DetectionPipeline
from device.pipelines.detection_config import DetectionPipelineConfig
from device.runtime import ModelRuntime, load_for_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedPipeline:
    name: str
    source: str
    pipeline: ClassificationPipeline | DetectionPipeline
    model: ModelRef
    state: PipelineState


@dataclass(frozen=True)
class LoadedModel:
    """A bundle's interpreter, checked and smoke-tested, and what the state topic says
    of the pipeline that runs it: the same for every task."""

    runtime: ModelRuntime
    state: PipelineState

    @property
    def model(self) -> ModelRef:
        return self.state.model


def load_model(
    name: str, source: str, task: str, bundle: Bundle, runtime_cfg: RuntimeSection
) -> LoadedModel:
    """Load ``bundle`` for pipeline ``name`` (BundleError subclasses for a wrong task,
    tensors that disagree with the manifest, a failed smoke test)."""
    bundle.require_task(task)
    manifest = bundle.manifest
    runtime = load_for_manifest(
        manifest, bundle.model_bytes, runtime_cfg.threads, runtime_cfg.edgetpu
    )
    model = ModelRef(name=manifest.name, version=manifest.version, sha256=manifest.model.sha256)
    state = PipelineState(
        name=name,
        source=source,
        task=manifest.task,
        model=model,
        runtime=runtime.backend.name,
        edgetpu=runtime.on_edgetpu,
        threads=runtime_cfg.threads,
    )
    return LoadedModel(runtime, state)


def build_pipeline(
    name: str, config: FramePipelineConfig, bundle: Bundle, runtime_cfg: RuntimeSection
) -> LoadedPipeline:
    """Load and smoke-test ``bundle`` for pipeline ``name``; raises BundleError subclasses
    (task, tensors, smoke test) and ConfigError (labels the model lacks)."""
    loaded = load_model(name, config.source, config.task, bundle, runtime_cfg)
    return LoadedPipeline(
        name=name,
        source=config.source,
        pipeline=(
            DetectionPipeline(name, config, bundle, loaded.runtime)
            if isinstance(config, DetectionPipelineConfig)
            else ClassificationPipeline(name, config, bundle, loaded.runtime)
        ),
        model=loaded.model,
        state=loaded.state,
    )


def hand_over_events(new: LoadedPipeline, old: LoadedPipeline, *, detach: bool) -> None:
    """``new`` continues ``old``'s open events. With ``detach``, ``old`` gets fresh,
    unshared ones (a hung pipeline: should its call return late, it publishes nothing
    shared); without, both share them (a swap under watch, where the old model may
    answer a frame the new one failed, or be switched back). A model swap never changes
    a pipeline's task, so both are of one kind."""
    if isinstance(new.pipeline, DetectionPipeline) and isinstance(old.pipeline, DetectionPipeline):
        new.pipeline.adopt_events(old.pipeline)
        if detach:
            old.pipeline.detach_events()
    elif isinstance(new.pipeline, ClassificationPipeline) and isinstance(
        old.pipeline, ClassificationPipeline
    ):
        new.pipeline.adopt_events(old.pipeline)
        if detach:
            old.pipeline.detach_events()
    else:
        raise TypeError(f"pipeline {new.name}: cannot hand events between different tasks")
