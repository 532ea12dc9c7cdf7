"""Fault injection on generate.py's side: impossible flags, hostile checkpoint files, bytes that are not
text. The promise for each: one line on stderr naming the flag or file, exit code 2, nothing generated,
no traceback (or, where stated, a normal run)."""

import json
import os
import pickle
import shutil
import struct

import pytest
from conftest import FIXTURE, run_cli, train_micro_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The micro run with a context of 32 positions, shared by the module."""
    return train_micro_run(tmp_path_factory, n_positions=32)


def _clean_error(proc, *needles):
    """One line on stderr containing every needle, exit 2, no traceback, nothing on stdout."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert proc.stdout.strip() == "", proc.stdout


# --- flags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--max-new-tokens", "0"),
        ("--max-new-tokens", "-1"),
        ("--temperature", "0"),
        ("--temperature", "-1"),
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--top-p", "2"),
        ("--top-p", "0"),
        ("--top-p", "-0.5"),
        ("--top-p", "nan"),
        ("--top-k", "-1"),
        ("--thoughts", "-1"),
        ("--show-thoughts", "0"),
        ("--seed", "-1"),
        ("--seed", str(2**64)),
    ],
)
def test_impossible_flag_values(run_dir, flag, value):
    """Fault: a sampling or length flag outside its range (a seed past int64 once overflowed inside
    jax.random.key). Promise: one line naming the flag, exit 2, before the model loads."""
    _clean_error(run_cli("generate.py", "--checkpoint", run_dir, "--prompt", "12*3=", flag, value), flag)


@pytest.mark.parametrize("mode", [["--prompt", "12*3="], ["--prompt", "12*3=", "--json"], ["--score", "12*3=36"], []])
def test_more_thoughts_than_the_context(run_dir, mode):
    """Fault: --thoughts 1000 on a model with a 32-position context (one-shot, JSON, scoring and the
    prompt loop). Promise: the only line says the thoughts do not fit the context (the model
    description used to come first, and an older build said 'keeping the newest -971 tokens')."""
    proc = run_cli("generate.py", "--checkpoint", run_dir, "--thoughts", "1000", *mode)
    _clean_error(proc, "1000 thoughts per token do not fit the model's context of 32 positions", "use at most 28")


def test_more_thoughts_than_the_context_init_from():
    """Fault: --thoughts 1000 with fresh thinking heads on an HF model (64 positions). Promise: the
    context error is the only line (the untrained-heads warning used to precede it)."""
    proc = run_cli("generate.py", "--init-from", FIXTURE, "--prompt", "hi", "--thoughts", "1000")
    _clean_error(proc, "do not fit the model's context of 64 positions")


def test_show_thoughts_beyond_the_vocabulary(run_dir):
    """Fault: --show-thoughts larger than the vocabulary (top_k used to fail inside JAX).
    Promise: it shows the whole vocabulary, ranked, and generates normally."""
    proc = run_cli(
        "generate.py",
        "--checkpoint",
        run_dir,
        "--prompt",
        "12*3=",
        "--json",
        "--max-new-tokens",
        "1",
        "--show-thoughts",
        "100000",
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rec = json.loads(proc.stdout.splitlines()[0])
    assert len(rec["thoughts"]) == 2 and all(len(th["top"]) == 260 for th in rec["thoughts"])


# --- bytes that are not text ---------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--prompt", "--score"])
def test_invalid_utf8_argument(run_dir, flag):
    """Fault: --prompt / --score bytes that are not UTF-8 (they reach Python as lone surrogates, which
    no tokenizer encodes). Promise: one line naming the flag, exit 2."""
    _clean_error(run_cli("generate.py", "--checkpoint", run_dir, flag, b"\xff\xfe12*3="), flag, "UTF-8")


def test_control_characters_in_the_prompt(run_dir):
    """Fault: a prompt holding ESC sequences (clear screen, set title), BEL, DEL, CR and a tab.
    Promise: it generates, and the echo shows them escaped instead of sending them to the terminal."""
    proc = run_cli(
        "generate.py",
        "--checkpoint",
        run_dir,
        "--prompt",
        "a\x1b[2J\x07\x7f\r\tb\x1b]0;pwned\x07",
        "--max-new-tokens",
        "3",
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "\\x1b[2J" in proc.stdout and "\\x1b]0;pwned" in proc.stdout
    assert "\x1b" not in proc.stdout and "\x7f" not in proc.stdout


# --- hostile checkpoint files --------------------------------------------------------------------


def _hf_copy(tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(FIXTURE, d)
    return d


def _set_config(**fields):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(fields)
        (d / "config.json").write_text(json.dumps(cfg))

    return edit


def _write(name, data: bytes):
    def edit(d):
        (d / name).write_bytes(data)

    return edit


def _header_length(n):
    def edit(d):
        body = (d / "model.safetensors").read_bytes()[8:]
        (d / "model.safetensors").write_bytes(struct.pack("<Q", n) + body)

    return edit


@pytest.mark.parametrize(
    "edit,needles",
    [
        (_header_length(2**60), ["model.safetensors", "header too large"]),
        (
            _write("model.safetensors", struct.pack("<Q", 16) + b"not json at all!" + bytes(64)),
            ["model.safetensors", "invalid JSON in header"],
        ),
        (_write("model.safetensors", b"\x01\x02"), ["model.safetensors", "cannot read"]),
        (_write("config.json", b'{"n_embd": '), ["config.json", "not valid JSON"]),
        (_write("config.json", b"\xff\xfe{}"), ["config.json", "not valid JSON"]),
        (_write("config.json", b"[1, 2]"), ["config.json", "expected a JSON object"]),
        (_set_config(n_head=0), ["config.json", "n_head must be a positive integer, got 0"]),
        (_set_config(n_embd=-5), ["config.json", "n_embd must be a positive integer, got -5"]),
        (_set_config(n_layer="x"), ["config.json", 'n_layer must be a positive integer, got "x"']),
        (_set_config(vocab_size=None), ["config.json", "vocab_size must be a positive integer, got null"]),
        (_set_config(n_head=True), ["config.json", "n_head must be a positive integer"]),
        (_set_config(n_embd=32.5), ["config.json", "n_embd must be a positive integer"]),
        (_set_config(n_head=5), ["config.json", "n_embd (32) must be divisible by n_head (5)"]),
        (_set_config(layer_norm_epsilon="x"), ["config.json", "layer_norm_epsilon"]),
        (_set_config(n_layer=10**9), ["missing tensor", "does not match the weights"]),
        (_set_config(n_layer=1), ["2 layers", "n_layer=1", "does not match the weights"]),
        (_set_config(n_positions=10**12), ["wpe", "does not match the weights"]),
    ],
    ids=[
        "st-header-2**60",
        "st-header-not-json",
        "st-truncated",
        "cfg-not-json",
        "cfg-not-utf8",
        "cfg-list",
        "n_head-0",
        "n_embd-neg",
        "n_layer-str",
        "vocab-null",
        "n_head-bool",
        "n_embd-float",
        "indivisible",
        "eps-str",
        "n_layer-huge",
        "n_layer-fewer",
        "n_positions-huge",
    ],
)
def test_hostile_hf_directory(tmp_path, edit, needles):
    """Fault: a model.safetensors with an absurd or non-JSON header, a config.json that is not a JSON
    object or has absurd / zero / negative / string / null / inconsistent sizes (each used to crash
    with a ZeroDivisionError, TypeError or a JAX shape error, or drop layers silently).
    Promise: one line naming the file and the field, exit 2, nothing generated."""
    d = _hf_copy(tmp_path)
    edit(d)
    _clean_error(run_cli("generate.py", "--init-from", str(d), "--prompt", "hi", "--max-new-tokens", "2"), *needles)


class _TouchOnLoad:
    """A pickle whose loading creates a file: the stand-in for code a hostile checkpoint would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickle_is_refused_unread(tmp_path):
    """Fault: a directory with only pytorch_model.bin (a pickle that runs code when loaded) and no
    --allow-pickle. Promise: refused in one line naming --allow-pickle; the pickle is never loaded."""
    armed = tmp_path / "proof"
    pickle.loads(pickle.dumps(_TouchOnLoad(str(armed))))
    assert armed.exists()  # the payload is live: loading it runs code
    d = _hf_copy(tmp_path)
    os.remove(d / "model.safetensors")
    marker = tmp_path / "pwned"
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_TouchOnLoad(str(marker))))
    _clean_error(run_cli("generate.py", "--init-from", str(d), "--prompt", "hi"), "pytorch_model.bin", "--allow-pickle")
    assert not marker.exists()


def test_hf_directory_without_tokenizer_files(tmp_path):
    """Fault: an HF directory whose tokenizer files are missing (transformers then quietly builds a
    tokenizer holding only <|endoftext|>, and every prompt 'encodes to no tokens').
    Promise: one line saying which files are missing, exit 2."""
    d = _hf_copy(tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(d / f)
    _clean_error(
        run_cli("generate.py", "--init-from", str(d), "--prompt", "hi"), str(d), "no tokenizer files", "tokenizer.json"
    )


def test_tokenizer_of_another_model(tmp_path):
    """Fault: an HF directory whose tokenizer (384 tokens) is larger than the model's vocabulary (300):
    ids past the embedding would be clamped silently inside the gather. Promise: one line, exit 2."""
    from flax import nnx

    from silentstar_jax.config import ModelConfig
    from silentstar_jax.gpt2 import GPT2
    from silentstar_jax.hf import export_gpt2

    d = _hf_copy(tmp_path)
    model = GPT2(ModelConfig(vocab_size=300, n_positions=64, n_embd=32, n_layer=1, n_head=4), rngs=nnx.Rngs(0))
    export_gpt2(model, str(d))  # config.json + weights of vocab 300; the tokenizer stays
    _clean_error(run_cli("generate.py", "--init-from", str(d), "--prompt", "hi"), "384 tokens", "vocab_size 300")


# --- which checkpoint a path names -----------------------------------------------------------------


def _copy_run(run_dir, dst):
    shutil.copytree(run_dir, dst)
    return str(dst)


def _load_error(path) -> str:
    from silentstar_jax.errors import UserError
    from silentstar_jax.loading import load_run

    with pytest.raises(UserError) as e:
        load_run(str(path))
    return str(e.value)


def test_a_path_means_what_it_names(run_dir, tmp_path):
    """Fault: paths whose last part is a number but that are not RUN/checkpoints/<N> (a damaged step
    moved aside, a run directory named 42), a regular file, a half-written step. Promise: a damaged
    or half-written checkpoint is refused, never swapped for the healthy step of the same number (it
    used to be: RUN/damaged-checkpoints/3 loaded RUN/checkpoints/3); a run named by a number loads."""
    from silentstar_jax.loading import load_run, resolve_checkpoint

    run = _copy_run(run_dir, tmp_path / "42")  # a run directory named by a number
    step = int(os.listdir(os.path.join(run, "checkpoints"))[0])
    assert resolve_checkpoint(run) == (run, None) and load_run(run)[3] == step
    assert resolve_checkpoint(os.path.join(run, "checkpoints", str(step)) + "/") == (run, step)
    damaged = os.path.join(run, "damaged-checkpoints", str(step))
    shutil.copytree(os.path.join(run, "checkpoints", str(step)), damaged)
    assert "set aside as damaged" in _load_error(damaged)
    half = os.path.join(run, "checkpoints", f"{step + 1}.orbax-checkpoint-tmp")
    os.makedirs(half)
    assert "half-written" in _load_error(half)
    other = tmp_path / "other" / "7"  # a number, in no run
    other.mkdir(parents=True)
    assert "not a training run" in _load_error(other)
    assert "is a file" in _load_error(os.path.join(run, "config.yaml"))


def test_export_of_a_damaged_checkpoint_is_refused(run_dir, tmp_path, capsys):
    """The case as reported: export.py --checkpoint RUN/damaged-checkpoints/<N> exported the healthy
    RUN/checkpoints/<N> and exited 0. Promise: one line, exit 2, nothing written."""
    from silentstar_jax import export_cli

    run = _copy_run(run_dir, tmp_path / "run")
    step = os.listdir(os.path.join(run, "checkpoints"))[0]
    shutil.copytree(os.path.join(run, "checkpoints", step), os.path.join(run, "damaged-checkpoints", step))
    with pytest.raises(SystemExit) as e:
        export_cli.main(["--checkpoint", os.path.join(run, "damaged-checkpoints", step), "--out", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "set aside as damaged" in err, err
    assert not (tmp_path / "hf").exists()


def test_a_damaged_step_says_why(run_dir, tmp_path):
    """Fault: RUN/checkpoints/<N> with its parameter file truncated. Promise: the message gives the
    reason, not the repr of an Orbax internal (`<bound method pybind11_detail_function_record_v1 ...>`)."""
    import glob

    run = _copy_run(run_dir, tmp_path / "run")
    step = os.listdir(os.path.join(run, "checkpoints"))[0]
    files = [
        f
        for f in glob.glob(os.path.join(run, "checkpoints", step, "params", "**", "*"), recursive=True)
        if os.path.isfile(f)
    ]
    big = max(files, key=os.path.getsize)
    with open(big, "r+b") as f:
        f.truncate(os.path.getsize(big) // 2)
    msg = _load_error(os.path.join(run, "checkpoints", step))
    assert "checkpoint is damaged" in msg and "bound method" not in msg and "pybind11" not in msg, msg


def test_disk_full_during_export_keeps_the_out_directory(run_dir, tmp_path, capsys, monkeypatch):
    """Fault: the disk fills up while model.safetensors is written (ENOSPC after part of it). Promise:
    one line naming the disk and --out, exit 4; --out as it was (an earlier export kept whole), no
    partial file left."""
    import errno

    import safetensors.numpy

    from silentstar_jax import export_cli

    def full(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the earlier export")
    with pytest.raises(SystemExit) as e:
        export_cli.main(["--checkpoint", run_dir, "--out", str(out), "--force"])
    err = capsys.readouterr().err
    assert e.value.code == 4 and err.count("\n") == 1 and "disk full on /" in err and str(out) in err, err
    assert (
        os.listdir(out) == ["model.safetensors"] and (out / "model.safetensors").read_bytes() == b"the earlier export"
    )
    assert sorted(os.listdir(tmp_path)) == ["hf"]
