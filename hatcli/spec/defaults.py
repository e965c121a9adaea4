"""What a spec means where it leaves a key out, in one place.

Code reads these constants; ``schemas/hat.schema.json`` states the same values as
``"default"`` (what editors and ``hat schema`` show), and a test checks that every
``"default"`` there equals the constant named for it in ``IN_SCHEMA``.
"""

from __future__ import annotations

from typing import Any

WORK_DIR = "runs/{name}"
SEED = 0
DEVICE = "auto"

# Data loader keys, next to each data split's dataset parameters.
BATCH_SIZE = 32
SHUFFLE = False
DROP_LAST = False
NUM_WORKERS = 0
PIN_MEMORY = False
PERSISTENT_WORKERS = False

# Stage keys.
TRAINER = "Trainer"
QAT_MODE = "fuse_bn"
LOSS = "CrossEntropyLoss"
BATCH_PROCESSOR = "BasicBatchProcessor"
RESUME_OPTIMIZER = False
RESUME_EPOCH_OR_STEP = False
LOG_INTERVAL = 10
AMP = "off"
CHANNELS_LAST = False

# Each default by its JSON pointer in schemas/hat.schema.json.
IN_SCHEMA: dict[str, Any] = {
    "/properties/work_dir": WORK_DIR,
    "/properties/seed": SEED,
    "/$defs/device": DEVICE,
    "/$defs/data_loader/x-hat-common/batch_size": BATCH_SIZE,
    "/$defs/data_loader/x-hat-common/shuffle": SHUFFLE,
    "/$defs/data_loader/x-hat-common/drop_last": DROP_LAST,
    "/$defs/data_loader/x-hat-common/num_workers": NUM_WORKERS,
    "/$defs/data_loader/x-hat-common/pin_memory": PIN_MEMORY,
    "/$defs/data_loader/x-hat-common/persistent_workers": PERSISTENT_WORKERS,
    "/$defs/stage/properties/trainer": TRAINER,
    "/$defs/stage/properties/model_convert_pipeline/properties/qat_mode": QAT_MODE,
    "/$defs/stage/properties/loss": LOSS,
    "/$defs/stage/properties/batch_processor": BATCH_PROCESSOR,
    "/$defs/stage/properties/resume_optimizer": RESUME_OPTIMIZER,
    "/$defs/stage/properties/resume_epoch_or_step": RESUME_EPOCH_OR_STEP,
    "/$defs/stage/properties/log_interval": LOG_INTERVAL,
    "/$defs/stage/properties/amp": AMP,
    "/$defs/stage/properties/channels_last": CHANNELS_LAST,
}
