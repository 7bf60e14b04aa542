"""A pipeline ready to serve: the pipeline object and what the wire says about it.

Built at boot and again for every hot swap (device/modelstore), always the same way:
the bundle is loaded through the runtime, its tensors checked against its manifest and
its golden pair run, before the pipeline object exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeAlias

from device.bundle.reader import Bundle
from device.config import ClassificationPipeline as ClassificationConfig
from device.config import FramePipelineConfig, RuntimeSection
from device.errors import ConfigError
from device.mqtt.payloads import ModelRef, PipelineState
from device.pipelines.chain_config import ChainedClassificationConfig
from device.pipelines.chained_frames import ChainedPipeline
from device.pipelines.classification import ClassificationPipeline
from device.pipelines.detection import DetectionPipeline
from device.pipelines.detection_config import DetectionPipelineConfig
from device.runtime import ModelRuntime, load_for_manifest

log = logging.getLogger(__name__)


#: The pipelines of the camera path.
FramePipeline: TypeAlias = ClassificationPipeline | DetectionPipeline | ChainedPipeline


@dataclass(frozen=True)
class LoadedPipeline:
    name: str
    source: str
    pipeline: FramePipeline
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
        pipeline=_pipeline_for(name, config, bundle, loaded.runtime),
        model=loaded.model,
        state=loaded.state,
    )


def _pipeline_for(
    name: str, config: FramePipelineConfig, bundle: Bundle, runtime: ModelRuntime
) -> FramePipeline:
    if isinstance(config, DetectionPipelineConfig):
        return DetectionPipeline(name, config, bundle, runtime)
    if isinstance(config, ChainedClassificationConfig):
        return ChainedPipeline(name, config, bundle, runtime)
    return ClassificationPipeline(name, config, bundle, runtime)


def hand_over_events(new: LoadedPipeline, old: LoadedPipeline, *, detach: bool) -> None:
    """``new`` continues ``old``'s open events. With ``detach``, ``old`` gets fresh,
    unshared ones (a hung pipeline: should its call return late, it publishes nothing
    shared); without, both share them (a swap under watch, where the old model may
    answer a frame the new one failed, or be switched back). A model swap never changes
    a pipeline's task, so both are of one kind."""
    a, b = new.pipeline, old.pipeline
    if type(a) is not type(b):
        raise TypeError(f"pipeline {new.name}: cannot hand events between different tasks")
    a.adopt_events(b)  # type: ignore[arg-type]  # the same class: checked above
    if detach:
        b.detach_events()


#: The config class each frame pipeline is reconfigured with.
_CONFIG_OF: dict[type, type] = {
    ClassificationPipeline: ClassificationConfig,
    DetectionPipeline: DetectionPipelineConfig,
    ChainedPipeline: ChainedClassificationConfig,
}


def reconfigure(pipeline: FramePipeline, config: FramePipelineConfig) -> None:
    """``pipeline.reconfigure(config)`` for a config of the pipeline's own kind;
    ConfigError for another (a task changed in the file needs a restart)."""
    if not isinstance(config, _CONFIG_OF[type(pipeline)]):
        raise ConfigError(
            f"pipelines.{pipeline.name}: its kind changed ({config.task}); restart the daemon"
        )
    pipeline.reconfigure(config)  # type: ignore[arg-type]  # its own kind: checked above
