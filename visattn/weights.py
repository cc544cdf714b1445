"""One checkpoint loader for every way weights reach a model.

``load_pretrained(model, source)`` serves timm's ``pretrained=True`` (through the ``custom_load`` hook: the
model's ``load_pretrained`` method), OpenMMLab's ``init_cfg``, ``tools/convert.py`` and the tools' ``--resume`` and
evaluation. It reads the source (a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file, an http(s) URL,
``visattn://<model>`` for a model's official weights, or a state dict), unwraps it (``state_dict`` / ``model``
containers, a DDP ``module.`` prefix), maps it onto the model's keys with its family's filter
(:func:`checkpoint_filter`), adapts the stem to the model's input channels as timm does, and checks it: a missing
or reshaped backbone key is a one-line :class:`~visattn.errors.UserError` naming the keys (never a silent start
from random weights), while a classifier head that is absent or sized for other classes keeps its
initialisation, with a warning. So do the modules a family adds to a pretrained backbone (Sparsifiner's
connectivity predictors, TCPA's prompts), named by the model's ``addon_keys`` pattern, when a plain backbone
checkpoint lacks them. Published weights that cannot be fetched (no network, a dead URL, a bad hash) are a
one-line :class:`WeightsUnavailable` naming the model, the URL or hub file, the file they are looked up at first and
a way to load a local file instead.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg

from .errors import UserError, first_line

__all__ = ["LoadResult", "PretrainedMixin", "WeightsUnavailable", "checkpoint_classes", "checkpoint_filter",
           "load_pretrained", "match_classifier", "published_weights", "read_state_dict", "read_file",
           "weights_unavailable"]

SCHEME = "visattn://"
_logger = logging.getLogger(__name__)
_FILTERS: dict[type, Callable[[dict, nn.Module], dict]] = {}
_CONTAINERS = ("state_dict", "model", "module")
_COUNTERS = ("num_batches_tracked",)
FROZEN = "frozen"  # a training checkpoint's reference to the source of the frozen weights it leaves out


def checkpoint_filter(*model_classes: type):
    """Decorator: register ``fn(state_dict, model) -> state_dict`` as the key mapping of ``model_classes`` (and of
    their subclasses) from their official checkpoint layout."""
    def register(fn):
        for cls in model_classes:
            _FILTERS[cls] = fn
        return fn

    return register


def _register_timm_families() -> None:
    """The families visattn serves from timm's own models map their official layouts with timm's filters."""
    from timm.models import mambaout

    checkpoint_filter(mambaout.MambaOut)(mambaout.checkpoint_filter_fn)


_register_timm_families()


def family_filter(model: nn.Module) -> Callable[[dict, nn.Module], dict] | None:
    """The registered key mapping of ``model``'s family (the nearest registered base class), or None."""
    return next((_FILTERS[cls] for cls in type(model).__mro__ if cls in _FILTERS), None)


def has_published_weights(name: str) -> bool:
    """Whether the timm model ``name`` [.tag] has weights ``pretrained=True`` can fetch (a URL, a Hugging Face hub
    id or a file in its pretrained cfg)."""
    cfg = get_pretrained_cfg(name)
    return cfg is not None and bool(cfg.url or cfg.hf_hub_id or cfg.file)


def _official_weights(name: str) -> dict:
    """``visattn://<model>[.<tag>]``: the model's official weights as its pretrained cfg names them (a URL,
    downloaded once to a name of its own, or a Hugging Face hub id); a failed download is a
    :class:`WeightsUnavailable`."""
    import timm

    model, _, tag = name.partition(".")
    if not timm.is_model(model):
        raise UserError(f"{SCHEME}{name}: unknown model {model!r}; see visattn.list_models()")
    cfg = get_pretrained_cfg(f"{model}.{tag}" if tag else model)
    if cfg is None or not (cfg.url or cfg.hf_hub_id):  # what this scheme fetches (a cfg's local file is not)
        raise UserError(f"{SCHEME}{name}: {model} has no published weights{f' tagged {tag}' if tag else ''}")
    try:
        if cfg.url:
            return read_file(pretrained_file(model, cfg.tag, cfg.url))
        from timm.models import load_state_dict_from_hf

        return load_state_dict_from_hf(cfg.hf_hub_id)
    except Exception as err:
        failure = weights_unavailable(name, err, local=f"a file path in place of {SCHEME}{name}")
        if failure is None:
            raise
        raise failure from None


def pretrained_file(variant: str, tag: str, url: str | None = None) -> str:
    """Local path of a model's official checkpoint, downloaded once to a name of its own.

    Official checkpoints served from share links all end in the same path segment (``.../content``), so a
    URL-named cache would store every variant under one file name. The file is
    ``$TORCH_HOME/hub/checkpoints/<variant>_<tag>.pth``; ``url`` defaults to the pretrained cfg's. A failed download
    is a :class:`WeightsUnavailable` naming the URL and this path.
    """
    cached = _variant_file(variant, tag)
    if not os.path.exists(cached):
        cfg = get_pretrained_cfg(f"{variant}.{tag}")
        url = url or (cfg.url if cfg is not None else None)
        if not url:
            raise ValueError(f"{variant}.{tag} has no official checkpoint URL")
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, cached, progress=True)
        except Exception as err:
            if not is_download_failure(err):
                raise
            raise WeightsUnavailable(variant, url, cached, _why(err)) from None
    return cached


def _variant_file(variant: str, tag: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", f"{variant}_{tag}.pth")


# ------------------------------------------------------------------------------------------ failed downloads

PYTHON_LOCAL = "pretrained_cfg_overlay=dict(file=FILE)"


class WeightsUnavailable(UserError):
    """The published weights of a model could not be fetched (no network, a dead URL, a bad hash): the message names
    the model, where the weights come from, the local path where they are looked up first (put the file there) and
    ``local``, the way to load a local file instead."""

    def __init__(self, model: str, source: str, cache: str, reason: str, local: str = PYTHON_LOCAL):
        self.model, self.source, self.cache, self.reason, self.local = model, source, cache, reason, local
        super().__init__(f"cannot fetch the pretrained weights of {model} from {source} ({reason}); put the file "
                         f"at {cache}, or load a local file instead: {local}")

    def instead(self, local: str) -> WeightsUnavailable:
        """The same failure with another way to load a local file (a tool's option)."""
        return WeightsUnavailable(self.model, self.source, self.cache, self.reason, local)

    def unless_named(self, local: str) -> WeightsUnavailable:
        """:meth:`instead` ``local``, unless a caller already named its own way (a teacher's option)."""
        return self if self.local != PYTHON_LOCAL else self.instead(local)


def is_download_failure(err: BaseException) -> bool:
    """Whether ``err`` is what torch.hub, urllib or huggingface_hub raise for a download that failed: no network,
    an HTTP error, a file missing on the hub, a hash that does not match."""
    if isinstance(err, RuntimeError):
        return "hash" in str(err)
    try:
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a timm dependency
        EntryNotFoundError = OSError  # noqa: N806
    return isinstance(err, OSError | EntryNotFoundError) and not isinstance(err, UserError)


def _why(err: BaseException) -> str:
    """A short reason for a failed download."""
    from urllib.error import HTTPError, URLError

    if isinstance(err, HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, URLError):
        return f"no connection: {err.reason}"
    if type(err).__name__ == "LocalEntryNotFoundError":
        return "the hub cannot be reached and the file is not in its cache"
    return first_line(err, with_type=True)


def published_weights(name: str) -> tuple[str, str] | None:
    """(where the published weights of the timm model ``name`` [.tag] are fetched from, the local file they are looked
    up at first), as ``pretrained=True`` fetches them; None when the model has none. A visattn model's URL file is
    ``$TORCH_HOME/hub/checkpoints/<variant>_<tag>.pth``; a Hugging Face hub file is in huggingface_hub's cache layout
    (``snapshots/<revision>/<file>`` with ``refs/main`` naming the revision); another URL (timm's) is
    ``$TORCH_HOME/hub/checkpoints/<its file name>``."""
    import importlib.util

    import timm

    arch = name.partition(".")[0]
    cfg = get_pretrained_cfg(name) if timm.is_model(arch) else None
    if cfg is None:
        return None
    ours = timm.models.model_entrypoint(arch).__module__.startswith(f"{__package__}.")
    if cfg.url and ours:
        return cfg.url, _variant_file(arch, cfg.tag)
    if cfg.hf_hub_id and importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub import constants

        repo, _, revision = cfg.hf_hub_id.partition("@")
        filename = cfg.hf_hub_filename or "model.safetensors"
        folder = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"))
        ref = os.path.join(folder, "refs", revision or "main")
        return (f"the Hugging Face hub ({repo}, {filename})",
                f"{os.path.join(folder, 'snapshots', 'local', filename)} with the line 'local' in {ref}")
    if cfg.url:
        from urllib.parse import urlparse

        return cfg.url, os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(cfg.url).path))
    return None


def weights_unavailable(name: str, err: BaseException, local: str = PYTHON_LOCAL) -> WeightsUnavailable | None:
    """The :class:`WeightsUnavailable` for ``err`` raised while fetching the published weights of the model ``name``,
    or None when ``err`` is not a failed download (or the model has no published weights)."""
    if isinstance(err, WeightsUnavailable):
        return err.instead(local)
    where = published_weights(name) if is_download_failure(err) else None
    if where is None:
        return None
    return WeightsUnavailable(name, where[0], where[1], _why(err), local)


def read_file(path: str, mmap: bool = False):
    """``path`` loaded on the CPU (tensors and plain containers only; safetensors by extension), with one-line
    errors for a missing, empty, cut-off or foreign file: visattn's one checkpoint reader. ``mmap``: map a torch zip
    file instead of reading it, to look at its fields without loading its tensors (other files are read)."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes): its write was cut off; use another checkpoint")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except Exception as err:  # torch and safetensors raise many types for a damaged file
        raise UserError(f"cannot read checkpoint {path}: {_read_failure(path, err)}") from None


def _read_failure(path: str, err: Exception) -> str:
    """Why a checkpoint file could not be read, in words a user can act on."""
    with open(path, "rb") as f:
        head = f.read(4)
    text = str(err)
    if path.endswith(".safetensors"):
        return f"not a complete safetensors file ({first_line(err)})"
    if head == b"PK\x03\x04" and "zip archive" in text:
        return "the file is cut off or damaged (an incomplete torch.save archive)"
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsupported or (head[:1] == b"\x80" and isinstance(err, pickle.UnpicklingError)):
        what = f" ({unsupported.group(1)})" if unsupported else ""
        return (f"it holds Python objects{what} beyond tensors and plain containers, which visattn does not "
                f"unpickle; save the weights alone with torch.save(model.state_dict(), path)")
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        return "not a PyTorch (torch.save) or safetensors file"
    return first_line(err)


def read_state_dict(source: str | os.PathLike | Mapping) -> dict:
    """The state dict held by ``source`` (a file, a URL, ``visattn://<model>[.<tag>]`` or a dict), on the CPU, with
    training containers (``state_dict``, ``model``, ``module``) and a DDP ``module.`` prefix removed."""
    if isinstance(source, Mapping):
        state = source
    elif str(source).startswith(SCHEME):
        state = _official_weights(str(source)[len(SCHEME):])
    elif str(source).startswith(("https://", "http://")):
        state = _from_url(str(source))
    else:
        state = read_file(os.fspath(source))
    if isinstance(state, Mapping) and state.get(FROZEN):
        raise UserError(f"{_describe(source)} saves its frozen weights by reference to their source, so it does not "
                        "hold them; open it with visattn.tasks.opened.open_model (or the tools), or write a complete "
                        "file with tools/convert.py")
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in _CONTAINERS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise UserError(f"{_describe(source)} holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def _from_url(url: str) -> dict:
    """torch.hub's cached download of a state dict; a failed download is a :class:`WeightsUnavailable`."""
    from urllib.parse import urlparse

    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except Exception as err:
        if not is_download_failure(err):
            raise
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
        raise WeightsUnavailable(url, url, cache, _why(err), local="a local file path instead of the URL") from None


def _describe(source) -> str:
    return "the given state dict" if isinstance(source, Mapping) else f"checkpoint {source}"


def _preview(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def _names(cfg_value) -> tuple[str, ...]:
    if not cfg_value:
        return ()
    return (cfg_value,) if isinstance(cfg_value, str) else tuple(cfg_value)


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier: the modules the pretrained cfg names ``classifier``, else the module
    ``get_classifier()`` returns."""
    names = _names((getattr(model, "pretrained_cfg", None) or {}).get("classifier"))
    if not names and hasattr(model, "get_classifier"):
        classifier = model.get_classifier()
        names = tuple(name for name, module in model.named_modules() if module is classifier and name)
    prefixes = tuple(f"{name}." for name in names)
    return {k for k in model.state_dict() if prefixes and k.startswith(prefixes)}


def checkpoint_classes(model: nn.Module, state: Mapping) -> int | None:
    """Classes the linear classifier of ``state`` (a state dict in ``model``'s layout) predicts; None when the model
    has no linear classifier (``get_classifier``) or the checkpoint lacks it."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(classifier, nn.Linear):
        return None
    name = next((n for n, m in model.named_modules() if m is classifier and n), None)
    weight = state.get(f"{name}.weight") if name else None
    return weight.shape[0] if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def match_classifier(model: nn.Module, source: str | os.PathLike | Mapping) -> dict:
    """The state dict of ``source`` in ``model``'s layout (family filter applied), with ``model``'s classifier reset
    to the checkpoint's classes where they differ (converting or evaluating a fine-tuned checkpoint)."""
    state = read_state_dict(source)
    fn = family_filter(model)
    state = fn(state, model) if fn is not None else state
    classes = checkpoint_classes(model, state)
    if classes is not None and classes != getattr(model, "num_classes", classes):
        model.reset_classifier(classes)
    return state


def as_is(state: dict, model: nn.Module) -> dict:
    """The key mapping of a state dict already in the model's layout (after :func:`match_classifier`)."""
    return state


def addon_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the modules ``model`` adds to a pretrained backbone: those matching its ``addon_keys``
    regular expression (a class attribute; none when absent)."""
    pattern = getattr(model, "addon_keys", None)
    return {k for k in model.state_dict() if re.search(pattern, k)} if pattern else set()


def _adapt_stem(state: dict, model: nn.Module, own: dict) -> None:
    """Sum or repeat the pretrained stem's input channels to the model's (timm's ``adapt_input_conv``)."""
    from timm.models import adapt_input_conv

    for conv in _names((getattr(model, "pretrained_cfg", None) or {}).get("first_conv")):
        key = f"{conv}.weight"
        if key in state and key in own and state[key].dim() == 4 and state[key].shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(own[key].shape[1], state[key], base_chans=state[key].shape[1])


@dataclass
class LoadResult:
    """What :func:`load_pretrained` did: tensors loaded, head and add-on keys left as initialised, checkpoint keys
    unused."""

    loaded: int
    head_kept: list[str] = field(default_factory=list)
    addons_kept: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def load_pretrained(model: nn.Module, source: str | os.PathLike | Mapping, *, strict: bool = False,
                    filter_fn: Callable[[dict, nn.Module], dict] | None = None, name: str | None = None) -> LoadResult:
    """Load ``source`` into ``model`` (in place) and return what was loaded.

    Keys are mapped by ``filter_fn`` or the family's registered filter. With ``strict=False`` (pretrained
    weights) the classifier may be absent or sized for other classes and the family's add-on modules
    (``addon_keys``) may be absent (they stay as initialised, with a warning), and checkpoint keys the model lacks
    (a pruned head or stage) are left unused; with ``strict=True`` (resuming, evaluating, converting) every key
    must match. Any other missing or reshaped key raises a one-line
    :class:`UserError` naming the keys; ``name`` describes the source in messages.
    """
    if not isinstance(source, str | os.PathLike | Mapping):
        raise TypeError(f"load_pretrained takes a file path, a URL, 'visattn://<model>' or a state dict, got "
                        f"{type(source).__name__}")
    name = name or _describe(source)
    state = read_state_dict(source)
    fn = filter_fn or family_filter(model)
    if fn is not None:
        state = fn(state, model)
    own = model.state_dict()
    _adapt_stem(state, model, own)
    head = set() if strict else head_keys(model)
    missing = [k for k in own if k not in state and not k.endswith(_COUNTERS)]
    reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    unused = [k for k in state if k not in own]
    head_kept = [k for k in missing + reshaped if k in head]
    missing = [k for k in missing if k not in head]
    addons = set() if strict else addon_keys(model)
    addons_kept = [k for k in missing if k in addons]
    missing = [k for k in missing if k not in addons]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped if k not in head]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_preview(missing)})")
    if reshaped:
        problems.append(f"{len(reshaped)} with other shapes ({_preview(reshaped)})")
    if strict and unused:
        problems.append(f"{len(unused)} unexpected ({_preview(unused)})")
    if problems:
        raise UserError(f"{name} does not match the model: {'; '.join(problems)}")
    loadable = {k: v for k, v in state.items() if k in own and k not in head_kept}
    model.load_state_dict(loadable, strict=False)
    if head_kept:
        warnings.warn(f"{name}: the classifier ({_preview(head_kept)}) is absent or sized for other "
                      f"classes; it keeps its initialisation", stacklevel=2)
    if addons_kept:
        warnings.warn(f"{name}: {len(addons_kept)} tensors of the modules {type(model).__name__} adds to its backbone "
                      f"({_preview(addons_kept)}) are absent; they keep their initialisation", stacklevel=2)
    if unused:
        _logger.info("%s: %d checkpoint tensors unused by the model (%s)", name, len(unused),
                     _preview(unused))
    return LoadResult(len(loadable), head_kept, addons_kept, unused)


class PretrainedMixin:
    """timm's ``custom_load`` hook: ``timm.create_model(name, pretrained=True)`` loads through
    :func:`load_pretrained` (family filter, stem adaptation, head handling, one-line errors)."""

    def load_pretrained(self, checkpoint_path: str, prefix: str = "") -> None:
        if prefix:
            raise ValueError(f"{type(self).__name__} checkpoints take no key prefix, got {prefix!r}")
        load_pretrained(self, checkpoint_path)
