"""Shared plumbing: user-facing errors, argument types, seeding, logging, device choice, atomic files and
checkpoints."""
import argparse
import logging
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch


class UserError(Exception):
    """A problem with the user's input (paths, flags, data). Printed as one line, exit code 2."""


def first_line(err):
    """The first line of an exception's message (its type name when the message is empty): enough for a
    one-line error, where library messages run to several lines."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Stopped(Exception):
    """A signal (SIGTERM from a scheduler, `kill`) asked the process to stop: raised where the program is, so the
    run can log one line and leave its files intact; exit code 128 + the signal's number."""

    def __init__(self, signum):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def raise_stopped(signum, frame):
    raise Stopped(signum)


def run_cli(main, *args):
    """Call main(*args) with SIGTERM raising Stopped; turn a UserError, Ctrl-C or SIGTERM into one line on stderr and
    a non-zero exit. Under torchrun only rank 0 prints (every process meets the same error)."""
    signal.signal(signal.SIGTERM, raise_stopped)
    speaks = os.environ.get("RANK", "0") == "0"
    try:
        return main(*args)
    except UserError as err:
        if speaks:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Stopped as err:
        if speaks:
            print(str(err), file=sys.stderr)
        sys.exit(128 + err.signum)
    except KeyboardInterrupt:
        if speaks:
            print("interrupted", file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------------------------------------- arguments

class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is reported in one line (no usage block), with exit code 2."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def number(kind, low=None, high=None, low_open=False):
    """An argparse type: a number of `kind` (int or float) in [low, high] ((low, high] with low_open), so a
    flag's range is stated where the flag is declared."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            lo = "(-inf" if low is None else ("(" if low_open else "[") + str(low)
            raise argparse.ArgumentTypeError(f"{value} is out of range {lo}, {'inf)' if high is None else f'{high}]'}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def number_list(kind):
    """An argparse type: comma-separated numbers of `kind`, e.g. '30,40' -> [30, 40]."""
    def parse(text):
        try:
            return [kind(value) for value in text.split(",") if value.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


def preprocessing_parser(description, data_path):
    """The flags both pre_process scripts share."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--data_path", default=data_path, help="dataset root; the arrays are written into it")
    parser.add_argument("--img_h", type=number(int, 1), default=288, help="image height of the arrays")
    parser.add_argument("--img_w", type=number(int, 1), default=144, help="image width of the arrays")
    parser.add_argument("--workers", type=number(int, 0), default=4, help="decoding threads (0: the main thread)")
    return parser


# ---------------------------------------------------------------------------------------------- files

def current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_all(writers):
    """Write several files, all or nothing: writers maps each target path to write_fn(tmp_path). Every file is
    written to a temporary file beside its target before any is renamed into place, so a crash or an error
    leaves neither a half-written file nor a mix of old and new ones; the previous files stay as they were.

    The files get the mode a plain open() would give (0666 minus the umask), not mkstemp's private 0600, so
    teammates on a shared server can read results and checkpoints. A failed write (a full disk, a read-only
    folder) is a one-line UserError naming the file and the cause.
    """
    mode = 0o666 & ~current_umask()
    tmp_paths = {}
    path = None
    try:
        for path, write_fn in writers.items():
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            fd, tmp_paths[path] = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
            os.close(fd)
            write_fn(tmp_paths[path])
            os.chmod(tmp_paths[path], mode)
        for path, tmp_path in tmp_paths.items():
            os.replace(tmp_path, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or first_line(err)}") from None
    finally:
        for tmp_path in tmp_paths.values():
            if os.path.exists(tmp_path):
                os.remove(tmp_path)


def check_writable(folder):
    """Create folder if needed and write a file into it; a one-line UserError if either fails (a read-only or
    full file system, a path under a regular file; file permissions alone do not stop root)."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"cannot write to {folder}: {err.strerror or first_line(err)}") from None


def atomic_write(path, write_fn):
    """Write one file through write_fn(tmp_path), then rename it into place (see atomic_write_all)."""
    atomic_write_all({path: write_fn})


def save_arrays_together(arrays_by_path):
    """np.save every {path: array}, all or nothing (atomic_write_all)."""
    def saver(array):
        def write(tmp_path):
            with open(tmp_path, "wb") as f:  # np.save would append .npy to a name lacking it
                np.save(f, array)
        return write
    atomic_write_all({path: saver(array) for path, array in arrays_by_path.items()})


# ---------------------------------------------------------------------------------------------- runs

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
    """'cpu' -> CPU; a CUDA index -> that GPU, or the CPU when CUDA is absent (device_note says so)."""
    if str(gpu).lower() == "cpu":
        return torch.device("cpu")
    if not str(gpu).isdigit():
        raise UserError(f"--gpu must be a CUDA device index or 'cpu', got {gpu!r}")
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if int(gpu) >= torch.cuda.device_count():
        raise UserError(f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(f"cuda:{gpu}")


def device_note(gpu, device):
    """The warning a run logs when it asked for a GPU and runs on the CPU, else None."""
    if str(gpu).lower() != "cpu" and torch.device(device).type == "cpu":
        return f"--gpu {gpu} asked for, but CUDA is not available: running on the CPU"
    return None


def setup_logger(log_file=None, append=True, enabled=True):
    """Logger 'cpl' writing to the console and, if given, to log_file (appended to, or started anew).
    Idempotent per process. enabled=False: silent (the processes other than rank 0 under torchrun)."""
    logger = logging.getLogger("cpl")
    logger.disabled = not enabled
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
        file_handler = logging.FileHandler(log_file, mode="a" if append else "w")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


CHECKPOINT_FORMAT = "cpl-checkpoint-v1"


def save_checkpoint(path, state):
    """torch.save through a temporary file + rename; tagged so --resume can tell our checkpoints apart."""
    state = dict(state, format=CHECKPOINT_FORMAT)

    def write(tmp_path):
        with open(tmp_path, "wb") as f:  # a Python file, so a full disk raises OSError, not torch's stream error
            torch.save(state, f)
    atomic_write(path, write)


def load_checkpoint(path, required_keys=()):
    """Load a checkpoint of this repo with weights_only=True; any problem is a one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/foreign files
        raise UserError(f"cannot read checkpoint {path}: {first_line(err)}") from None
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
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:3])
        raise UserError(f"checkpoint {path}: {what} does not match this configuration ({detail[:300]})") from None


# ---------------------------------------------------------------------------------------------- run record

GIT_TIMEOUT_S = 10


def git_state(folder):
    """(commit hash, whether tracked or untracked-but-not-ignored files differ from it) of the repository
    holding `folder`; (None, None) when git is missing, slow, or the folder is not in a repository."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                              check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):  # no git binary, not a repository, no commit yet, timeout
        return None, None


def device_description(device):
    """The GPU's name for a CUDA device, else the CPU model; never raises."""
    try:
        if torch.device(device).type == "cuda":
            return torch.cuda.get_device_name(torch.device(device))
    except Exception:  # whatever torch raises (a bad device string, no CUDA, a driver error): use the CPU's
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def run_record(device):
    """What a result needs beside its arguments to be reproduced: the code's git commit and whether the tree
    differed from it (None outside a repository), the versions of Python, torch (and its CUDA), torchvision,
    NumPy, and the device's name. The caller adds what only it knows (world size, wall time)."""
    try:
        import torchvision
        torchvision_version = torchvision.__version__
    except ImportError:
        torchvision_version = None
    commit, dirty = git_state(os.path.dirname(os.path.abspath(__file__)))
    return {"git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "torchvision": torchvision_version,
            "numpy": np.__version__, "device": device_description(device)}


# ---------------------------------------------------------------------------------------------- distributed

def init_distributed(gpu):
    """Join the process group when torchrun started several processes (WORLD_SIZE > 1): NCCL with one GPU per
    process (LOCAL_RANK), or gloo on the CPU (--gpu cpu, or no CUDA). Returns (rank, world_size, device); a plain
    `python train_mine.py` is rank 0 of 1 on choose_device(gpu)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, choose_device(gpu)
    use_cuda = str(gpu).lower() != "cpu" and torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    return torch.distributed.get_rank(), world_size, device


def world_size():
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank():
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def gather_rows(tensor):
    """(world_size, *tensor.shape): every process's tensor (all the same shape), with autograd: the gradient that
    reaches a process's rows is the sum of the gradients every process computes for them."""
    from torch.distributed.nn.functional import all_gather
    with warnings.catch_warnings():  # deprecated for torch's private functional collectives; public and working
        warnings.simplefilter("ignore", FutureWarning)
        return torch.stack(all_gather(tensor))


def gather_uneven_rows(tensor):
    """[each process's tensor] (without autograd), whose first dimensions may differ between processes."""
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world_size())]
    torch.distributed.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
    longest = int(max(sizes).item())
    padded = torch.zeros(longest, *tensor.shape[1:], dtype=tensor.dtype, device=tensor.device)
    padded[:len(tensor)] = tensor
    gathered = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(gathered, padded)
    return [rows[:int(size.item())] for rows, size in zip(gathered, sizes)]


def broadcast_buffers(module):
    """rank 0's buffers (BatchNorm running statistics) on every process. DistributedDataParallel broadcasts them
    before each forward, then every process updates its own from its share of the batch; after an epoch they differ,
    and rounds, evaluations and checkpoints must all use one model."""
    if world_size() > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)


def broadcast_from_main(value):
    """rank 0's value on every process (any picklable object)."""
    if world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def on_main_process(fn):
    """fn() run by rank 0 only; its result, or its UserError, reaches every process (a decision about files is
    made once, and a refusal stops all processes, not just the one that made it)."""
    result, error = None, None
    if rank() == 0:
        try:
            result = fn()
        except UserError as err:
            error = str(err)
    result, error = broadcast_from_main((result, error))
    if error is not None:
        raise UserError(error)
    return result
