"""The commands that README.md and launch/*.sh show work against the current code.

Every `python -m qmath_jax.main ...` line of README.md's bash blocks parses with the entry
point's flags (the config file and its `:arg`, every `--config.<field>=` override naming an
existing field) and passes the checks a run makes before any compute, with its input paths
stood in by files and directories of the kind each field expects. Other `python -m` commands
name modules and flags that exist; the `--config.<field>` and `configs/<name>.py:<arg>`
mentions of the prose exist; the launch scripts pass `bash -n` and their example lines parse.
"""

import os
import pathlib
import re
import shlex
import subprocess

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np
import pytest
from conftest import load_config

from qmath_jax import config_validation
from qmath_jax import main
from qmath_jax.train import checkpoint as checkpoint_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
LAUNCH_SCRIPTS = sorted((REPO / "launch").glob("*.sh"))
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py") if p.name != "common.py")

# Path fields of the stage configs -> what a run expects to find there.
DIR_WITH_CHECKPOINT = {"init.checkpoint": "sft", "scorer.rm_checkpoint": "rm"}  # run: stage
FILES = ("tokenizer.path", "data.source", "data.eval_source")


def _bash_blocks(text: str) -> list[str]:
  return re.findall(r"```bash\n(.*?)```", text, re.S)


def _commands(block: str) -> list[list[str]]:
  """The simple commands of a bash block (split at ; && ||, comments dropped), with the
  block's `NAME=value` assignments expanded in later commands."""
  env, commands = {}, []
  for line in block.replace("\\\n", " ").splitlines():
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    tokens = list(lexer)
    comment = [i for i, t in enumerate(tokens) if t.startswith("#")]
    command = []
    for token in tokens[:comment[0] if comment else None] + [";"]:
      if token not in (";", "&&", "||", "|", "&"):
        command.append(re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: env[m.group(1)], token))
      elif command and all(re.fullmatch(r"[A-Za-z_]\w*=.*", t) for t in command):
        env.update(t.split("=", 1) for t in command)
        command = []
      elif command:
        commands.append(command)
        command = []
  return commands


def _readme_commands(module: str) -> list[list[str]]:
  """The argument lists of README's `python[3] -m <module> ...` commands."""
  found = []
  for block in _bash_blocks(README):
    for command in _commands(block):
      if command[:1] in (["python"], ["python3"]) and command[1:3] == ["-m", module]:
        found.append(command[3:])
  return found


def _parse_main_flags(args: list[str]):
  """(config, workdir) as `python -m qmath_jax.main *args` reads them (run from the repo)."""
  argv = ["qmath_jax.main", *args]
  flag_values = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file(
      "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
  workdir = flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  flag_values(argv)
  return config_flag.value, workdir.value


def _stand_in_paths(config, root: pathlib.Path):
  """Points every absolute input path of `config` into `root`, creating there what the field
  expects: a run's workdir with a checkpoint, an HF or params directory, a file."""
  def stand_in(path: str) -> str:
    return str(root / path.lstrip("/")) if path.startswith("/") else path

  def get(dotted):
    node = config
    for key in dotted.split("."):
      if key not in node:
        return None
      node = node[key]
    return node

  def set_(dotted, value):
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
      node = node[key]
    node[last] = value

  for field, stage in DIR_WITH_CHECKPOINT.items():
    if get(field):
      set_(field, stand_in(get(field)))
      checkpointer = checkpoint_lib.Checkpointer(os.path.join(get(field), "checkpoints"),
                                                 async_save=False)
      checkpointer.save(1, {"step": np.zeros((), np.int32)}, meta={"stage": stage})
      checkpointer.close()
  for field, marker in (("init.hf_dir", "config.json"), ("init.params_dir", "model_config.json")):
    if get(field):
      set_(field, stand_in(get(field)))
      os.makedirs(get(field), exist_ok=True)
      pathlib.Path(get(field), marker).write_text("{}")
  for field in FILES:
    if get(field) and get(field).startswith("/"):
      set_(field, stand_in(get(field)))
      path = pathlib.Path(get(field))
      if path.suffix in (".jsonl", ".json", ".model"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
      else:  # tokenizer.path may be an HF directory holding the tokenizer
        path.mkdir(parents=True, exist_ok=True)
  if get("data.sources"):
    set_("data.sources", tuple(stand_in(s) for s in get("data.sources")))
    for source in get("data.sources"):
      if source.endswith(".jsonl"):
        pathlib.Path(source).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(source).touch()
  for field in ("eval.data_dir", "data.data_dir"):
    if get(field):
      set_(field, stand_in(get(field)))
      os.makedirs(get(field), exist_ok=True)
  return config


MAIN_COMMANDS = _readme_commands("qmath_jax.main")


def test_readme_has_the_stage_commands():
  stages = set()
  for args in MAIN_COMMANDS:
    stages.add(next(a for a in args if a.startswith("--config=")).split("=", 1)[1])
  for name in ("demo", "sft", "rm", "sample", "rl", "eval"):
    assert any(s.startswith(f"configs/{name}") for s in stages), (name, stages)


@pytest.mark.parametrize("args", MAIN_COMMANDS, ids=lambda a: " ".join(a)[:80])
def test_readme_main_command_parses_and_validates(args, monkeypatch, tmp_path):
  monkeypatch.chdir(REPO)  # the commands name configs/ relative to the repository
  config, workdir = _parse_main_flags(args)
  assert workdir
  main.check_workdir(workdir)
  config = _stand_in_paths(config, tmp_path)
  config_validation.validate(config, main.STAGES, jax.device_count(), main.STAGE_CHECKS)


def test_readme_stage_list_is_the_registered_stages():
  listed = re.search(r"`config\.stage` picks what runs \(([^)]*)\)", README).group(1)
  assert set(re.findall(r"`(\w+)`", listed)) == set(main.STAGES)


def _defined_flags(module: str) -> set[str]:
  """The flag names a `python -m` module defines (absl DEFINE_* or argparse add_argument)."""
  path = REPO / (module.replace(".", "/") + ".py")
  if not path.exists():
    path = REPO / module.replace(".", "/") / "__main__.py"
  source = path.read_text()
  names = set(re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)[\"']", source))
  names |= {"no" + n for n in re.findall(r"DEFINE_bool(?:ean)?\(\s*[\"'](\w+)[\"']", source)}
  names |= set(re.findall(r"add_argument\(\s*[\"']--(\w+)[\"']", source))
  return names


def _module_commands():
  """(module, flag names) of every `python -m qmath_jax.<module>` in README (prose included)."""
  found = []
  for block in _bash_blocks(README):
    for command in _commands(block):
      if command[:1] in (["python"], ["python3"]) and command[1:2] == ["-m"]:
        found.append((command[2], [a[2:].split("=", 1)[0] for a in command[3:]
                                   if a.startswith("--")]))
  for text in re.findall(r"`(python3? -m qmath_jax[^`]*)`", README.replace("\n", " ")):
    words = text.split()
    found.append((words[2], [w[2:].split("=", 1)[0] for w in words[3:] if w.startswith("--")]))
  return [(m, f) for m, f in found if m.startswith("qmath_jax") and m != "qmath_jax.main"]


@pytest.mark.parametrize("module,names", _module_commands(), ids=lambda x: str(x)[:60])
def test_readme_module_command_flags_exist(module, names):
  defined = _defined_flags(module)
  assert set(names) <= defined, (module, sorted(set(names) - defined))


def _all_config_fields() -> set[str]:
  fields = set()

  def walk(node, prefix):
    for key, value in node.items():
      fields.add(prefix + key)
      if hasattr(value, "items"):
        walk(value, prefix + key + ".")

  for name in CONFIGS:
    walk(load_config(name), "")
  return fields


def test_readme_config_field_mentions_exist():
  fields = _all_config_fields()
  mentioned = set(re.findall(r"--config\.([\w.]+)", README))
  assert mentioned
  assert not {m for m in mentioned if m not in fields}


def test_readme_config_file_mentions_load():
  mentions = set(re.findall(r"configs/(\w+\.py)(?::([\w.=,$-]+))?", README))
  assert mentions
  for name, arg in mentions:
    if "$" in arg:
      continue
    load_config(name, arg or None)


def test_readme_install_extras_exist():
  setup = (REPO / "setup.py").read_text()
  for extra in set(re.findall(r"\"\.\[(\w+)\]\"", README)):
    assert f'"{extra}":' in setup, extra


@pytest.mark.parametrize("script", LAUNCH_SCRIPTS, ids=lambda p: p.name)
def test_launch_script_syntax(script):
  subprocess.run(["bash", "-n", str(script)], check=True)


def _launch_examples(script: pathlib.Path) -> list[list[str]]:
  """The qmath_jax.main flags of a launch script's example lines (`#   launch/x.sh ...`) and
  of its default arguments (`set -- ...`)."""
  text = script.read_text()
  comments = "\n".join(line[1:] for line in text.splitlines() if line.startswith("#"))
  examples = []
  for line in comments.replace("\\\n", " ").splitlines():
    words = line.split("#")[0].split()
    if "launch/" + script.name in words:
      words = words[words.index("launch/" + script.name) + 1:]
      if "--" in words:
        words = words[words.index("--") + 1:]
      examples.append([w for w in words if w.startswith("--")
                       and not w.startswith("[")])
  for line in text.splitlines():
    if line.strip().startswith("set -- "):
      examples.append(shlex.split(line.strip())[2:])
  return [e for e in examples if e]


@pytest.mark.parametrize("script", LAUNCH_SCRIPTS, ids=lambda p: p.name)
def test_launch_script_examples_parse(script, monkeypatch):
  monkeypatch.chdir(REPO)
  examples = _launch_examples(script)
  assert examples, script
  for args in examples:
    _parse_main_flags(args)
