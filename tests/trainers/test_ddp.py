"""DDP with 2 CPU processes on the gloo backend: every head's gradients are synchronised and case-level
predictions/metrics are gathered across ranks."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, dataset_id: int, env: dict, out_file: str, trainer: str, plans: str):
    os.environ.update(env)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different data/augmentation per rank
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()
    tr = get_trainer_from_args(str(dataset_id), "3d_fullres", 3, trainer, plans, device=torch.device("cpu"))
    tr.on_train_start()
    assert isinstance(tr.network, torch.nn.parallel.DistributedDataParallel)
    head0 = [p.detach().clone() for p in tr.network.module.cls_head.parameters()]
    batch = next(tr.dataloader_train)
    out = tr.train_step(batch)
    head1 = [p.detach().clone() for p in tr.network.module.cls_head.parameters()]
    # gather parameters from both ranks: identical after the step iff gradients were all-reduced
    gathered = [None] * world
    dist.all_gather_object(gathered, [p.numpy() for p in head1])
    # validation outputs are gathered too
    tr.on_validation_epoch_start()
    with torch.no_grad():
        vals = [tr.validation_step(next(tr.dataloader_val))]
    n_local = len(vals[0].get("cls_target", []))
    n_all = len(tr._gather([t for v in vals for t in v.get("cls_target", [])]))
    tr.on_validation_epoch_end(vals)
    tr.current_epoch += 1
    tr.on_train_end()
    tr.perform_actual_validation()
    if rank == 0:
        same = all((a == b).all() for a, b in zip(gathered[0], gathered[1]))
        changed = any(not torch.equal(a, b) for a, b in zip(head0, head1))
        json.dump({"same": bool(same), "changed": bool(changed), "n_local": n_local, "n_all": n_all,
                   "cls_loss": float(out.get("cls_loss", -1))}, open(out_file, "w", encoding="utf-8"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("trainer,plans", [("EarlyFusionTrainer_smoke", "nnUNetPlans"),
                                           ("STDNetTrainer_smoke", "STDNetPlansCPU")])
def test_ddp_gloo_two_cpu_processes(tiny_multiphase, tmp_path, trainer, plans):
    if plans != "nnUNetPlans":
        from nnunet_ext.planners.api import plan_and_preprocess

        plan_and_preprocess(tiny_multiphase["id"], "STDNetPlannerCPU", ("3d_fullres",), num_processes=1)
    env = {k: v for k, v in os.environ.items() if k.startswith(("nnUNet", "OMP", "MPL"))}
    env["OMP_NUM_THREADS"] = "1"
    out_file = str(tmp_path / "ddp.json")
    mp.spawn(_worker, args=(2, _free_port(), tiny_multiphase["id"], env, out_file, trainer, plans), nprocs=2,
             join=True)
    res = json.load(open(out_file, encoding="utf-8"))
    assert res["changed"], "the classification head did not train"
    assert res["same"], "head parameters differ across ranks: gradients were not synchronised"
    assert res["n_all"] == 2 * res["n_local"] > 0
    fold = tiny_multiphase["results"] / f"{trainer}__{plans}__3d_fullres" / "fold_3"
    summary = json.load(open(fold / "validation" / "summary_classification.json", encoding="utf-8"))
    split = json.load(open(tiny_multiphase["preprocessed"] / "splits_final.json", encoding="utf-8"))[3]["val"]
    labeled = [c for c in split if c != "case_009"]  # case_009 is the explicitly unlabeled one
    assert summary["n_cases"] == len(labeled)  # both ranks' cases gathered on rank 0
    rows = (fold / "validation" / "classification.csv").read_text(encoding="utf-8").strip().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == sorted(split)
