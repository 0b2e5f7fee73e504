"""trajscope.producer: configs, datasets, the model, the training loop and the recorder pipeline."""

from trajscope.producer.config import RunConfig, load_config
from trajscope.producer.recorder import Recorder
from trajscope.producer.train import RunResult, produce, recording_schedule, resume

__all__ = ["Recorder", "RunConfig", "RunResult", "load_config", "produce", "recording_schedule", "resume"]
