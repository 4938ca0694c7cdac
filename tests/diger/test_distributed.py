"""Multi-process (DDP, gloo on CPU) training through `diger run --nproc=2` (issue #7).

* FrqUD's usage EMA is all-reduced: two ranks that see different codes end with identical EMAs,
  equal to one process observing both batches; SDUD's sigma (a parameter) stays identical under DDP.
* A 2-process DIGER run has the same SID table, parameters and decay state on both ranks after every
  SID refresh, writes its files from rank 0 only, and its test metrics match a 1-process run of the
  same seed within the tolerance measured below; its checkpoint re-evaluates in one process to the
  gathered metrics.
* RecBole's own SASRec runs with `--nproc=2` through the CLI.

Each spawned process imports torch and RecBole (a few seconds each on a busy 2-core machine).
"""
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from diger.testing import small_config, write_dataset

#: Measured on the toy dataset (40 test users, 2 epochs, per-rank batch = half of the 1-process batch),
#: seeds 2020 / 1 / 2, 1 process vs 2 processes: largest |difference| of a test metric was 0.10 on
#: recall@10 (4 users of 40; 0 / 0.10 / 0.05 per seed), 0.020 on ndcg@10 (0.0074 / 0.019 / 0.020),
#: 0.013 on mrr@10. Seed-to-seed spread of the 1-process run is as large (ndcg@10 0.211-0.261).
#: Since issue 13 (toy vectors keyed by item id, so items got other vectors; exact time order) seed 2020
#: differs by 0.125 on recall@10 (5 users of 40) and 0.065 on ndcg@10; seed 1's 2-process ndcg@10 is 0.2816.
#: The test runs seed 2020 and allows those maxima with a little margin.
METRIC_TOL = 0.15
NDCG10_TOL = 0.08


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----- workers (module level: torch.multiprocessing.spawn pickles them by reference) ------------------
def _init(rank: int, port: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")


def _probe_worker(rank: int, port: int) -> None:
    import torch.distributed as dist

    _init(rank, port)
    dist.barrier()
    dist.destroy_process_group()


def _decay_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from diger.decay import SDUD, FrqUD
    from diger.quantizer import VectorQuantizer

    _init(rank, port)
    try:
        # FrqUD: rank 0 sees only code 0 and 1, rank 1 only code 3; uneven batch sizes; then an empty batch.
        frq = FrqUD(2, 4, rho=1.5, momentum=0.5)
        batches = {0: [torch.tensor([0, 0, 1]), torch.tensor([1, 1])], 1: [torch.tensor([3]), torch.tensor([3, 3, 3, 0])]}
        for step in range(2):
            for level in range(2):
                frq.observe(level, batches[rank][step])
        frq.observe(0, torch.zeros(0, dtype=torch.long))  # collective even when this rank's batch is empty

        # SDUD under DDP: different data and Gumbel noise per rank, sigma must stay identical.
        class Toy(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.vq = VectorQuantizer(4, 3)
                self.decay = SDUD(1, 4, sigma0=1.0, lam=0.5)

            def forward(self, r, gen):
                out = self.vq.assign(r, mode="sdud", tau=1.0, level=0, decay=self.decay, generator=gen)
                return (out.q - r).pow(2).mean() + out.p_soft[:, 0].mean()

        torch.manual_seed(0)
        toy = Toy()
        ddp = DistributedDataParallel(toy)
        opt = torch.optim.SGD(toy.parameters(), lr=0.5)
        gen = torch.Generator().manual_seed(100 + rank)
        sigma0 = toy.decay.sigma.detach().clone()
        for _ in range(3):
            opt.zero_grad()
            ddp(torch.randn(8, 3, generator=gen) * (1 + rank), gen).backward()
            opt.step()
        torch.save({"usage": frq.usage_ema.clone(), "sigma": toy.decay.sigma.detach().clone(), "sigma0": sigma0},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes():
    """Skip the module when two gloo processes cannot start on this machine (probe: init + barrier)."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    try:
        mp.spawn(_probe_worker, args=(_free_port(),), nprocs=2, join=True)
    except Exception as exc:  # noqa: BLE001 - any failure to start means the environment cannot run DDP
        pytest.skip(f"two gloo processes could not start here: {type(exc).__name__}: {str(exc)[:200]}")


def test_frqud_usage_is_all_reduced_and_sdud_sigma_stays_identical(two_processes, tmp_path):
    import torch.multiprocessing as mp

    from diger.decay import FrqUD

    mp.spawn(_decay_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # One process observing the union of both ranks' batches gives the same EMA.
    ref = FrqUD(2, 4, rho=1.5, momentum=0.5)
    for step_codes in ([0, 0, 1, 3], [1, 1, 3, 3, 3, 0]):
        for level in range(2):
            ref.observe(level, torch.tensor(step_codes))
    assert torch.equal(r0["usage"], r1["usage"])
    assert torch.allclose(r0["usage"], ref.usage_ema, atol=1e-7, rtol=0)
    assert not torch.allclose(r0["usage"], torch.full_like(r0["usage"], 0.25))  # it did move
    assert torch.equal(r0["sigma"], r1["sigma"]) and not torch.equal(r0["sigma"], r0["sigma0"])


def _run_args(root: Path, name: str, **extra) -> dict:
    out = root / name
    return small_config(root, output_dir=str(out), checkpoint_dir=str(out), epochs=2, stopping_step=10,
                        assign_mode="sdud_frqud", **extra)


def test_two_process_diger_matches_single_process(two_processes, toy_root):
    from diger.quick_start import evaluate_checkpoint, run

    single = run("DIGER", "toy", None, _run_args(toy_root, "one"))
    logs_before = set((toy_root / "log").rglob("*.log"))
    tb_before = set((toy_root / "log_tensorboard").iterdir())

    multi = run("DIGER", "toy", None, _run_args(toy_root, "two", nproc=2, ip="127.0.0.1", port=_free_port()))
    assert multi["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert multi["config"]["train_batch_size"] == single["config"]["train_batch_size"] == 64  # 32 per rank

    # Identical state on both ranks after every epoch's SID refresh (hashes gathered from each rank).
    history = multi["codebook"]["history"]
    assert [h["epoch"] for h in history] == [-1, 0, 1]
    for rec in history[1:]:
        ranks = rec["ranks"]
        for key in ("sid_table", "parameters", "decay_state"):
            assert len(ranks[key]) == 2 and ranks[key][0] == ranks[key][1], (rec["epoch"], key, ranks[key])
        assert "sid_table_repaired" not in ranks
    # Tokenizer pre-training (k-means init included) ran on rank 0 only and was broadcast: same
    # starting codebooks and SID table as the single-process run of the same seed.
    assert history[0]["hash"] == single["codebook"]["history"][0]["hash"]

    # Test metrics agree with the single-process run within the measured tolerance.
    a, b = single["test_result"], multi["test_result"]
    assert set(a) == set(b)
    diffs = {k: abs(a[k] - b[k]) for k in a}
    assert max(diffs.values()) <= METRIC_TOL, diffs
    assert diffs["ndcg@10"] <= NDCG10_TOL, diffs

    # Rank 0 alone wrote files: one log, one TensorBoard folder, one checkpoint, run/result JSON.
    out = toy_root / "two"
    assert len(set((toy_root / "log").rglob("*.log")) - logs_before) == 1
    assert len(set((toy_root / "log_tensorboard").iterdir()) - tb_before) == 1
    assert sorted(p.name for p in out.glob("*.pth")) == sorted(["last.pth", Path(multi["checkpoint"]).name])
    run_json = json.loads((out / "run.json").read_text())
    assert "local_rank" not in run_json["run_config"] and run_json["run_config"]["nproc"] == 2
    ckpt = torch.load(multi["checkpoint"], weights_only=True)
    assert "local_rank" not in ckpt["run_config"]
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # the unwrapped model
    assert len(torch.load(out / "last.pth", weights_only=True)["rng_by_rank"]) == 2

    # The gathered metrics are the all-users metrics: one process re-evaluates the checkpoint to them exactly.
    again = evaluate_checkpoint(multi["checkpoint"])["test_result"]
    assert again == b, (again, b)


def test_recbole_model_runs_with_two_processes_from_the_cli(two_processes, toy_root):
    """41 users on 2 processes: the sampler pads rank 1 with a repeat of user 0, which must not count."""
    from diger.cli import main
    from diger.quick_start import evaluate_checkpoint

    write_dataset(toy_root, "odd", n_users=41)
    out = toy_root / "sasrec2"
    cfg = small_config(toy_root, output_dir=str(out), checkpoint_dir=str(out), hidden_size=16, inner_size=32,
                       n_layers=1, n_heads=1, loss_type="CE", train_neg_sample_args=None, ip="127.0.0.1",
                       port=_free_port(), eval_batch_size=8)
    cfg.pop("item_emb_file")
    args = [f"--{k}={json.dumps(v)}" for k, v in cfg.items()]
    assert main(["run", "--model", "SASRec", "--dataset", "odd", "--nproc=2", *args]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert 0 <= result["test_result"]["ndcg@10"] <= result["test_result"]["recall@10"] <= 1
    # The 2-process metrics are exactly those of one process on the same checkpoint (RecBole's
    # map-reduce counted the padded user twice and weighted the ranks by their number of batches).
    again = evaluate_checkpoint(result["checkpoint"])["test_result"]
    assert again == result["test_result"], (again, result["test_result"])
