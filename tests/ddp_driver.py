"""Run by torchrun in tests/test_training_ddp.py: ``train(cfg, [], out)`` with cfg from a JSON file."""
import json
import sys
from pathlib import Path

import torch

from training.train import train

if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    train(json.loads(Path(sys.argv[1]).read_text()), [], Path(sys.argv[2]), progress=False)
