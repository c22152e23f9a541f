"""Reading and writing :class:`~hybridrl.data.dataset.Dataset` as Minari 0.5 dataset directories.

On disk a hybridrl dataset *is* a Minari dataset directory (``<root>/<id>/data/`` with ``metadata.json`` and
``main_data.hdf5``), so ``minari.load_dataset`` reads what :func:`save_dataset` writes and :func:`load_dataset`
reads datasets written by other tools. hybridrl adds:

* ``infos["behavior_log_prob"]`` per episode, float64, Minari's ``T+1`` alignment: index 0 is the
  reset info (NaN), index ``t+1`` is ``log pi_b(a_t | s_t)`` (natural log);
* a sidecar ``hybridrl.json`` next to ``data/`` with what Minari's metadata does not model
  (``behavior_policy``, ``mean_return``, ``hybridrl_version``, ``env_id``). Minari ignores the file.

Dataset ids: :func:`minari_root` and :func:`dataset_id_for_path`; a path or an id is resolved by ``_resolve``.
Errors name the file at fault: ``metadata.json`` (its fields and spaces), ``main_data.hdf5`` (episode data),
``hybridrl.json`` (the sidecar).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from hybridrl.errors import DatasetError

__all__ = ["LOG_PROB_KEY", "SIDECAR", "dataset_id_for_path", "load_dataset", "minari_root", "save_dataset"]

SIDECAR = "hybridrl.json"
LOG_PROB_KEY = "behavior_log_prob"
_ID_RE = re.compile(r"^(?:(?P<ns>[-_\w][-_\w/]*[-_\w]+)/)?(?P<name>[-_\w]+?)-v(?P<version>\d+)$")
# Metadata keys Minari itself writes or understands; everything else goes into the sidecar.
_MINARI_KEYS = {"dataset_id", "minari_version", "total_episodes", "total_steps", "data_format", "jpeg_encoding",
                "observation_space", "action_space", "env_spec", "eval_env_spec", "dataset_size", "algorithm_name",
                "description", "author", "author_email", "code_permalink", "ref_min_score", "ref_max_score",
                "num_episodes_average_score", "requirements", "combined_datasets"}
_ENV_LOCK = threading.Lock()


def minari_root() -> Path:
    """Directory Minari resolves dataset ids under: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser() if env else Path.home() / ".minari" / "datasets"


def dataset_id_for_path(path: str | Path) -> str:
    """The Minari id a dataset directory at ``path`` gets.

    Under :func:`minari_root` the id is the relative path (``ns/name-v0``), elsewhere the directory name.
    Minari 0.5.4 ids must read ``name-v<int>`` (letters, digits, ``_`` and ``-`` only; the version is
    required although its regex marks it optional).

    Raises:
        DatasetError: the name is not a valid id; the message suggests one.
    """
    path = Path(path).expanduser().absolute()
    with contextlib.suppress(ValueError):
        rel = path.resolve().relative_to(minari_root().resolve())
        if rel.parts:
            ds_id = rel.as_posix()
            if _ID_RE.fullmatch(ds_id):
                return ds_id
    if _ID_RE.fullmatch(path.name):
        return path.name
    base = re.sub(r"-v\d+$", "", path.name)
    suggestion = (re.sub(r"[^-\w]", "_", base).strip("-") or "dataset") + "-v0"
    raise DatasetError(
        f"{path}: the directory name {path.name!r} is not a valid Minari dataset id (expected 'name-v<version>' "
        f"with letters, digits, '_' or '-', e.g. {suggestion!r}); save to {path.with_name(suggestion)} instead"
    )


@contextlib.contextmanager
def _minari_datasets_path(root: Path):
    """Point ``MINARI_DATASETS_PATH`` at ``root`` for the block (process-wide; serialised by a lock)."""
    with _ENV_LOCK:
        old = os.environ.get("MINARI_DATASETS_PATH")
        os.environ["MINARI_DATASETS_PATH"] = str(root)
        try:
            yield
        finally:
            if old is None:
                del os.environ["MINARI_DATASETS_PATH"]
            else:
                os.environ["MINARI_DATASETS_PATH"] = old


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic, np.ndarray, set, frozenset, Path)):
        return str(x) if isinstance(x, Path) else sorted(x) if isinstance(x, (set, frozenset)) else x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def load_dataset(cls: type, path_or_id: str | Path):
    """Load a Minari dataset as ``cls`` (:class:`~hybridrl.data.dataset.Dataset`).

    ``path_or_id``: a directory (the dataset root or its ``data/``) or an id under :func:`minari_root`.

    Works for datasets made by any tool: without ``infos["behavior_log_prob"]`` the field is ``None``;
    without an env spec (and no sidecar) ``env_id`` is ``None``. Minari keeps one HDF5 group per
    episode, so loading costs about 1 ms per episode on top of the data (1M steps in 1000 episodes: ~2 s).

    Raises:
        DatasetError: path/id not found, missing or unreadable ``metadata.json`` / ``main_data.hdf5``
            (truncated or corrupt HDF5), unsupported spaces or format, inconsistent lengths,
            non-finite observations/rewards/actions (naming file, field, episode and step).
    """
    from hybridrl.data.dataset import check_spaces

    root, data_dir = _resolve(path_or_id)
    meta_file = data_dir / "metadata.json"
    if not meta_file.is_file():
        raise DatasetError(f"{meta_file} is missing; a Minari dataset has data/metadata.json")
    raw = _read_json(meta_file)
    fmt = raw.get("data_format", "hdf5")
    main = data_dir / "main_data.hdf5"
    if fmt == "hdf5" and not main.is_file():
        raise DatasetError(f"{main} is missing (metadata.json says data_format 'hdf5')")
    sidecar = _read_json(root / SIDECAR) if (root / SIDECAR).is_file() else {}
    data_file = main if fmt == "hdf5" else data_dir
    n_eps = raw.get("total_episodes")
    if not (isinstance(n_eps, int) and not isinstance(n_eps, bool) and n_eps >= 0):
        raise DatasetError(f"{meta_file}: field 'total_episodes' is {n_eps!r}; expected an integer >= 0")
    from minari.dataset.minari_storage import MinariStorage

    try:  # reads metadata.json only: the spaces (or the env spec they come from) and the storage format
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = MinariStorage.read(data_dir)
    except ImportError as e:
        raise DatasetError(f"{meta_file}: data_format {fmt!r} needs a package that is not installed: {e}") from None
    except Exception as e:  # Minari raises AssertionError, KeyError, ValueError, gym errors, ...
        raise DatasetError(f"{meta_file}: fields 'observation_space'/'action_space' (or 'env_spec', "
                           f"'data_format') could not be read: {type(e).__name__}: {e}") from None
    check_spaces(storage.observation_space, storage.action_space, str(meta_file))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            episodes = list(storage.get_episodes(range(n_eps)))
    except Exception as e:  # h5py/pyarrow/Minari raise OSError, KeyError, ValueError, AssertionError, ...
        raise DatasetError(f"{data_file} could not be read (truncated or corrupt?): {type(e).__name__}: {e}") from None
    source = str(data_file)
    eps = []
    for e, ep in enumerate(episodes):
        d = {k: ep[k] for k in ("observations", "actions", "rewards", "terminations", "truncations")}
        lp = (ep.get("infos") or {}).get(LOG_PROB_KEY)
        if lp is not None:  # Minari's T+1 alignment: drop the reset info at index 0
            if len(lp) != len(d["rewards"]) + 1:
                raise DatasetError(f"{source}: episode_{e}/infos/{LOG_PROB_KEY} has {len(lp)} entries; "
                                   f"expected {len(d['rewards']) + 1} (reset info + one per step)")
            d[LOG_PROB_KEY] = np.asarray(lp, dtype=np.float64)[1:]
        eps.append(d)
    metadata = {k: v for k, v in raw.items()
                if k not in ("observation_space", "action_space", "env_spec", "eval_env_spec")}
    metadata.update({k: v for k, v in sidecar.items() if k not in ("format", "env_id")})
    ds = cls.from_episodes(eps, storage.observation_space, storage.action_space,
                           env_id=_env_id_from(raw, sidecar), metadata=metadata, source=source)
    ds.path = root
    return ds


def save_dataset(dataset, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``dataset`` as a Minari dataset directory at ``path`` (plus the ``hybridrl.json`` sidecar).

    The Minari id is :func:`dataset_id_for_path` (``path.name``, or the path relative to
    ``MINARI_DATASETS_PATH``), so ``minari.load_dataset(path.name)`` works when ``path.parent`` is the
    Minari root. Written into a hidden temporary sibling and moved into place; an existing dataset is
    replaced only with ``overwrite=True`` and only after the new one is complete.

    Returns:
        ``path``.
    Raises:
        DatasetError: invalid id, ``path`` exists (without ``overwrite``, or it is not a dataset), or
            Minari fails to write.
    """
    path = Path(path).expanduser().absolute()
    ds_id = dataset_id_for_path(path)
    if path.exists():
        if not overwrite:
            raise DatasetError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        if not (path.is_dir() and ((path / "data" / "metadata.json").exists() or not any(path.iterdir()))):
            raise DatasetError(f"{path} exists and is not a Minari dataset directory; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        built = tmp_root / ds_id
        _write_minari(dataset, tmp_root, ds_id)
        from hybridrl import __version__

        side = {k: v for k, v in dataset.metadata.items() if k not in _MINARI_KEYS}
        side.update(format="hybridrl-dataset", hybridrl_version=__version__, env_id=dataset.env_id,
                    mean_return=float(dataset.episode_returns().mean()), n_episodes=dataset.n_episodes,
                    n_steps=dataset.n_steps, has_behavior_log_prob=dataset.behavior_log_prob is not None)
        try:  # inside the temporary directory, so it appears atomically with the data
            (built / SIDECAR).write_text(json.dumps(side, indent=2, default=_jsonable, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise DatasetError(f"metadata cannot be written to {SIDECAR}: {e}") from None
        if path.exists():
            os.replace(path, tmp_root / ".replaced")  # removed with tmp_root below
        os.replace(built, path)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    dataset.path = path
    return path


def _write_minari(dataset, tmp_root: Path, ds_id: str) -> None:
    import minari
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    buffers = []
    for e in range(dataset.n_episodes):
        a, b = int(dataset.episode_starts[e]), int(dataset.episode_starts[e + 1])
        obs = np.concatenate([dataset.observations[a:b], dataset.next_observations[b - 1:b]])
        infos: dict[str, np.ndarray] = {}
        if dataset.behavior_log_prob is not None:
            infos[LOG_PROB_KEY] = np.concatenate([[np.nan], dataset.behavior_log_prob[a:b]])
        buffers.append(EpisodeBuffer(observations=obs, actions=dataset.actions[a:b], rewards=dataset.rewards[a:b],
                                     terminations=dataset.terminations[a:b], truncations=dataset.truncations[a:b],
                                     infos=infos))
    env_spec = gym.spec(dataset.env_id) if dataset.env_id is not None and dataset.env_id in gym.registry else None
    bp = dataset.metadata.get("behavior_policy")
    algorithm = str((bp.get("description") if isinstance(bp, dict) else None)
                    or dataset.metadata.get("algorithm_name") or "unknown")
    description = dataset.metadata.get("description") or f"Written by hybridrl. Behaviour policy: {algorithm}." + (
        f" infos['{LOG_PROB_KEY}'][t+1] = log pi_b(a_t|s_t) (index 0 = reset info, NaN)."
        if dataset.behavior_log_prob is not None else "")
    kwargs = {k: dataset.metadata[k] for k in ("author", "author_email", "code_permalink", "requirements")
              if dataset.metadata.get(k) is not None}
    kwargs.update({k: set(kwargs[k]) for k in ("author", "author_email") if isinstance(kwargs.get(k), list)})
    try:
        with _minari_datasets_path(tmp_root), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            common = dict(observation_space=dataset.observation_space, action_space=dataset.action_space,
                          algorithm_name=algorithm, description=str(description), **kwargs)
            try:
                minari.create_dataset_from_buffers(ds_id, buffers, env=env_spec, **common)
            except (gym.error.Error, ImportError):  # the env cannot be made here: store no env spec
                if env_spec is None:
                    raise
                shutil.rmtree(tmp_root / ds_id, ignore_errors=True)
                minari.create_dataset_from_buffers(ds_id, buffers, env=None, **common)
            ref = dataset.reference_scores()
            if ref is not None:
                MinariStorage.read(tmp_root / ds_id / "data").update_metadata(
                    {"ref_min_score": float(ref[0]), "ref_max_score": float(ref[1])})
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"Minari could not write dataset {ds_id!r}: {type(e).__name__}: {e}") from None


def _read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(out, dict):
        raise DatasetError(f"{path}: expected a JSON object, found {type(out).__name__}")
    return out


def _env_id_from(raw: dict, sidecar: dict) -> str | None:
    spec = raw.get("env_spec")
    if isinstance(spec, str):
        with contextlib.suppress(json.JSONDecodeError, TypeError, AttributeError):
            env_id = json.loads(spec).get("id")
            if isinstance(env_id, str):
                return env_id
    env_id = sidecar.get("env_id")
    return env_id if isinstance(env_id, str) else None


def _resolve(path_or_id: str | Path) -> tuple[Path, Path]:
    """``(dataset root, data dir)`` for a directory path or a Minari id."""
    p = Path(path_or_id).expanduser().absolute()
    if p.is_dir():
        if (p / "data").is_dir():
            return p, p / "data"
        if (p / "metadata.json").exists() or (p / "main_data.hdf5").exists() or p.name == "data":
            return p.parent, p
        raise DatasetError(f"{p} is not a Minari dataset directory: expected {p / 'data' / 'metadata.json'}")
    if p.exists():
        raise DatasetError(f"{p} is a file; expected a Minari dataset directory (holding data/metadata.json) or an id")
    root, ds_id = minari_root(), str(path_or_id)
    if not Path(ds_id).is_absolute() and _ID_RE.fullmatch(ds_id) and (root / ds_id / "data").is_dir():
        return (root / ds_id).absolute(), (root / ds_id / "data").absolute()
    local = [d.parent.relative_to(root).as_posix() for pat in ("*/data", "*/*/data") for d in root.glob(pat)]
    close = difflib.get_close_matches(ds_id, local, n=5, cutoff=0.5)
    hint = f" Close local ids: {', '.join(close)}." if close else ""
    raise DatasetError(f"no dataset at {p}: it is not a directory, and no Minari dataset {ds_id!r} "
                       f"exists under {root} (set MINARI_DATASETS_PATH to change that root).{hint}")
