"""Shared plumbing: user-facing errors, seeding, logging, device choice, atomic files, meters."""
import logging
import os
import random
import sys
import tempfile

import numpy as np
import torch


class UserError(Exception):
    """A problem with the user's input (paths, flags, data). Printed as one line, exit code 2."""


def run_cli(main, *args):
    """Call main(*args); turn a UserError (or Ctrl-C) into one line on stderr and a non-zero exit."""
    try:
        return main(*args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def check_range(name, value, low=None, high=None, low_open=False, high_open=False):
    """Raise UserError unless low <(=) value <(=) high; names the flag in the message."""
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        raise UserError(f"{name}={value} is out of range {lo or '(-inf'}, {hi or 'inf)'}")


def atomic_write(path, write_fn):
    """Write a file through write_fn(tmp_path), then rename it into place: a crash never leaves a half file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write_fn(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_save_npy(path, array):
    """np.save through a temporary file (np.save appends .npy to names lacking it, so keep the suffix)."""
    def write(tmp_path):
        with open(tmp_path, "wb") as f:
            np.save(f, array)
    atomic_write(path, write)


def set_seed(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states():
    """The global RNG states as plain types and tensors, so a checkpoint loads with weights_only=True."""
    np_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Inverse of rng_states()."""
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def choose_device(gpu):
    """'cpu' -> CPU; a CUDA index -> that GPU, or the CPU with a warning when CUDA is absent."""
    if str(gpu).lower() == "cpu":
        return torch.device("cpu")
    if not str(gpu).isdigit():
        raise UserError(f"--gpu must be a CUDA device index or 'cpu', got {gpu!r}")
    if not torch.cuda.is_available():
        logging.getLogger("cpl").warning("--gpu %s asked for, but CUDA is not available: running on the CPU", gpu)
        return torch.device("cpu")
    if int(gpu) >= torch.cuda.device_count():
        raise UserError(f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(f"cuda:{gpu}")


def setup_logger(log_file=None):
    """Logger 'cpl' writing to the console and, if given, appending to log_file. Idempotent per process."""
    logger = logging.getLogger("cpl")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


CHECKPOINT_FORMAT = "cpl-checkpoint-v1"


def save_checkpoint(path, state):
    """torch.save through a temporary file + rename; tagged so --resume can tell our checkpoints apart."""
    state = dict(state, format=CHECKPOINT_FORMAT)
    atomic_write(path, lambda tmp_path: torch.save(state, tmp_path))


def load_checkpoint(path, required_keys=()):
    """Load a checkpoint of this repo with weights_only=True; any problem is a one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/foreign files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read checkpoint {path}: {first_line}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint of this repo")
    missing = [key for key in required_keys if key not in state]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}")
    return state


def load_state_strict(module, state_dict, what, path):
    """load_state_dict(strict=True), with a missing/unexpected/mis-shaped key reported in one line."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, ValueError) as err:
        first_line = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first_line[:3])
        raise UserError(f"checkpoint {path}: {what} does not match this configuration ({detail[:300]})") from None
