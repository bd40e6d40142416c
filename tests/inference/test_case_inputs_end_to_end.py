"""Case inputs end to end: a text-conditioned network (the toy of tests/architectures/toy_text, a new architecture
that arrives as one file) trains with stock ``nnUNetv2_train`` on text embeddings computed by ``plan-and-preprocess``
and predicts with ``nnunet-ext predict --texts``; the texts reach the network at inference; missing inputs are errors
naming the cases and the fix. (The tabular route: tests/test_stock_roundtrip.py.)"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BIN = Path(sys.executable).parent
DATASET = 905
TOY_FOLDER = Path(__file__).resolve().parents[1] / "architectures" / "toy_text"
TRAINER = "ToyTextTrainer_smoke"


def run(cmd: list[str], env: dict, expect: int = 0, timeout: int = 400) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)
    assert res.returncode == expect, f"{' '.join(cmd)} -> {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def text_model(nnunet_dirs, tmp_path_factory):
    from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset
    from nnunet_ext.paths import trainer_discovery_path
    from nnunet_ext.planners.api import plan_and_preprocess

    raw = Path(make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), DATASET, n_cases=6, name="TextCases"))
    plan_and_preprocess(DATASET, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    env = {**os.environ, "nnUNet_extTrainer": os.pathsep.join([trainer_discovery_path(), str(TOY_FOLDER)])}
    run([str(BIN / "nnUNetv2_train"), str(DATASET), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], env)
    work = tmp_path_factory.mktemp("text_inputs")
    images = work / "images"
    images.mkdir()
    for f in sorted((raw / "imagesTr").glob("case_00[01]_*.nii.gz")):
        shutil.copy(f, images / f.name)
    texts = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))["nnunet_ext"]["cases"]
    texts_csv = work / "texts.csv"
    with open(texts_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "text"])
        for case in ("case_000", "case_001"):
            w.writerow([case, texts[case]["text"]])
    model = nnunet_dirs["nnUNet_results"] / raw.name / f"{TRAINER}__nnUNetPlans__3d_fullres"
    return {"env": env, "raw": raw, "images": images, "texts_csv": texts_csv, "work": work, "model": model,
            "pre": nnunet_dirs["nnUNet_preprocessed"] / raw.name}


def test_stock_training_used_the_stored_text_embeddings(text_model):
    from nnunet_ext.data.text_embeddings import active_text_encoder

    plans = json.loads((text_model["model"] / "plans.json").read_text(encoding="utf-8"))
    recorded = plans["nnunet_ext"]["text_encoder"]
    info = active_text_encoder(str(text_model["pre"]))
    assert recorded == info.to_json() and recorded["dim"] == 384  # all-MiniLM-L6-v2, offline
    fold = text_model["model"] / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "case inputs of the network: ['text']" in log and "film" in log  # the auxiliary term is logged
    assert "loss_film_train" in torch.load(fold / "checkpoint_final.pth", weights_only=False)["logging"]


def test_predict_with_texts_from_the_command_line(text_model):
    out = text_model["work"] / "pred"
    args = [str(BIN / "nnunet-ext"), "predict", "-i", str(text_model["images"]), "-o", str(out), "-d", str(DATASET),
            "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"]
    run(args + ["--texts", str(text_model["texts_csv"])], text_model["env"])
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_000.nii.gz", "case_001.nii.gz"]
    refused = run(args, text_model["env"], expect=2)
    assert "--texts FILE" in refused.stderr and "--allow-missing-text" in refused.stderr
    partial = text_model["work"] / "one_text.json"
    partial.write_text(json.dumps({"case_000": "a 20 mm lesion"}), encoding="utf-8")
    refused = run(args + ["--texts", str(partial)], text_model["env"], expect=2)
    assert "case_001" in refused.stderr and "add them to the --texts file" in refused.stderr
    allowed = run(args + ["--texts", str(partial), "--allow-missing-text"], text_model["env"])
    assert "predicted without text" in allowed.stdout and "case_001" in allowed.stdout


def test_the_text_reaches_the_network_at_inference(text_model, monkeypatch):
    """Same image, two texts: the logits differ; an all-False mask is the learned "no text" embedding."""
    from nnunet_ext.architectures.case_binding import unwrap
    from nnunet_ext.data.case_inputs import CaseInputs
    from nnunet_ext.inference.predict import embed_texts
    from nnunet_ext.inference.predictor import ClassifyingPredictor
    from nnunet_ext.paths import ensure_trainer_path

    monkeypatch.setenv("nnUNet_extTrainer", text_model["env"]["nnUNet_extTrainer"])
    ensure_trainer_path()
    predictor = ClassifyingPredictor(tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False,
                                     device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(text_model["model"]), (0,), "checkpoint_final.pth")
    assert predictor.uses == ("text",) and predictor.optional_inputs == ("text",)
    net = unwrap(predictor.network)
    with torch.no_grad():  # a trained FiLM layer is tiny after two smoke iterations: make the text's effect large
        net.film.weight.normal_(0, 1.0)
    predictor.list_of_parameters = [net.state_dict()]
    data = torch.from_numpy(_preprocessed(text_model, "case_000"))
    texts = {"a": "a 30 mm hypervascular lesion with washout", "b": "no focal lesion, normal liver"}
    embedded = embed_texts(predictor.settings, texts)
    logits = {}
    for key in ("a", "b"):
        predictor.case_inputs = CaseInputs(text={"case_000": embedded[key]})
        predictor.start_case("case_000")
        logits[key] = predictor.predict_logits_from_preprocessed_data(data)
    predictor.case_inputs = CaseInputs(text={"other": embedded["a"]})  # case_000 without text
    predictor.start_case("case_000")
    no_text = predictor.predict_logits_from_preprocessed_data(data)
    assert not torch.allclose(logits["a"], logits["b"], atol=1e-3)
    predictor.binding.bind("case_000", {})  # no text argument at all: forward(x)'s own "no text" path
    torch.testing.assert_close(no_text, predictor.predict_logits_from_preprocessed_data(data), rtol=0, atol=0)
    assert not torch.allclose(no_text, logits["a"], atol=1e-3)


def _preprocessed(text_model, case: str) -> np.ndarray:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = str(text_model["pre"] / "nnUNetPlans_3d_fullres")
    dataset = infer_dataset_class(folder)(folder, [case])
    return np.asarray(dataset.load_case(case)[0][:], dtype=np.float32)


def test_plan_and_preprocess_embeds_only_changed_texts(text_model, capsys):
    from nnunet_ext.data.metadata import load_dataset_json, save_json_atomic
    from nnunet_ext.planners.api import plan_and_preprocess

    dj_path = text_model["raw"] / "dataset.json"
    original = load_dataset_json(str(dj_path))
    changed = json.loads(json.dumps(original))
    changed["nnunet_ext"]["cases"]["case_003"]["text"] = "a new description of case 3"
    try:
        save_json_atomic(changed, str(dj_path))
        plan_and_preprocess(DATASET, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
        assert "text embeddings: 1 computed" in capsys.readouterr().out
    finally:
        save_json_atomic(original, str(dj_path))
        plan_and_preprocess(DATASET, "ExperimentPlanner", ("3d_fullres",), num_processes=1)


def test_text_trainer_without_embeddings_says_to_run_plan_and_preprocess(text_model, monkeypatch):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.data.text_embeddings import STORE_DIRNAME

    spec = importlib.util.spec_from_file_location("toy_text_trainer", TOY_FOLDER / "toy_text_trainer.py")
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    pre = text_model["pre"]
    plans = PlansManager(str(pre / "nnUNetPlans.json")).plans
    plans["continue_training"] = False
    dj = json.loads((pre / "dataset.json").read_text(encoding="utf-8"))
    store = pre / STORE_DIRNAME
    moved = pre.parent / "moved_text_embeddings"
    shutil.move(store, moved)
    try:
        monkeypatch.setattr(toy.ToyTextUNet, "optional_case_inputs", ())
        with pytest.raises(RuntimeError, match="holds no text embeddings.*nnunet-ext plan-and-preprocess"):
            toy.ToyTextTrainer(plans, "3d_fullres", 0, dj, torch.device("cpu"))
    finally:
        shutil.move(moved, store)
