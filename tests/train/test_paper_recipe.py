"""The paper's recipe (train/configs/llama2_7b_*.yaml): exact parameter counts, the dry run's
memory estimate against a run on the CPU, a config that cannot fit, and the shipped configs
trained for two optimizer steps on a stand-in (tiny random Llama, small files in the FineWeb
layouts, small sizes) under the DeepSpeed launcher on 2 CPU ranks and as 2 nodes x 1 rank."""
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ROOT / "train/configs/llama2_7b_stage1_fineweb_edu_long.yaml"
STAGE2 = ROOT / "train/configs/llama2_7b_stage2_fineweb_lqa.yaml"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(path, overrides=()):
    from lcirc_fast.training import load_config

    return load_config(path, list(overrides))


# ---------------------------------------------------------------- parameter counts (§1's table)
@pytest.mark.parametrize("path, trainable, mixer", [(STAGE1, 2_533_924_888, 0),
                                                    (STAGE2, 2_691_227_674, 157_302_786)])
def test_paper_parameter_counts_exact(path, trainable, mixer):
    from lcirc_fast.training.dry_run import dry_run, format_report

    cfg = _load(path)
    r = dry_run(cfg, gpus=8, gpu_memory="80GB")
    t, f = r.params["trainable"], r.params["frozen"]
    assert sum(t.values()) == trainable
    assert t["compressor"] == 646_029_312 and t["gca"] == 1_887_633_432 and t["latents"] == 262_144
    assert t.get("mixer", 0) == mixer
    assert sum(f.values()) == 6_738_415_616              # Llama-2-7B, untied head, all frozen
    text = format_report(r, cfg)
    assert text.splitlines()[-1].startswith("fits: yes") and r.plan.zero_stage == 2 and r.plan.bf16


# ---------------------------------------------------------------- memory estimate vs a CPU run
SMALL = ["base.name=tiny_random", "base.dtype=float32", "distributed.engine=plain",
         "distributed.deepspeed_config=null", "data.source=synthetic_tokens",
         "base.tiny={vocab_size: 512, hidden_size: 64, intermediate_size: 176, num_hidden_layers: 4, "
         "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 512}",
         "lcirc.num_latents=8", "lcirc.compressor_layers=2", "lcirc.max_segment_len=128",
         "lcirc.segment_len=32", "lcirc.gca_layers=[1, 3]", "data.window=96", "data.segmenting=fixed",
         "data.segment_min=48", "data.segment_max=48", "data.val_context=192", "train.max_steps=2",
         "train.warmup_steps=1"]


class SavedTensors:
    """Live bytes of the tensors autograd saves (parameters' storages excluded), by storage."""

    def __init__(self, model):
        self.skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        self.refs, self.size = collections.Counter(), {}
        tracker = self

        class Handle:
            def __init__(self, t):
                self.t, self.key = t, t.untyped_storage().data_ptr()
                if self.key in tracker.skip:
                    self.key = None
                    return
                tracker.refs[self.key] += 1
                tracker.size[self.key] = t.untyped_storage().nbytes()

            def __del__(self):
                if self.key is not None:
                    tracker.refs[self.key] -= 1
                    if not tracker.refs[self.key]:
                        del tracker.refs[self.key]

        self.hooks = torch.autograd.graph.saved_tensors_hooks(Handle, lambda h: h.t)

    @property
    def live(self) -> int:
        return sum(self.size[k] for k in self.refs)


def _measure(cfg, ms):
    """Bytes one micro-step of `ms`'s shape allocates on the CPU: weights, gradients and AdamW
    states (tensor sizes after one step) and the activations saved at the end of the forward."""
    from lcirc_fast import bptt
    from lcirc_fast.training.builders import build_base, build_model
    from lcirc_fast.training.engine import _optimizer

    torch.manual_seed(0)
    base, _ = build_base(cfg, torch.device("cpu"))
    model = build_model(cfg, base)
    vocab = model.config.vocab_size
    n = ms.steps * ms.segment
    ids = torch.randint(4, vocab, (ms.batch, n + ms.window))
    query = torch.randint(4, vocab, (ms.batch, ms.query)) if ms.query else None
    policy = bptt.Truncated(1) if cfg.stage == 1 else \
        bptt.Selective(ms.graph_steps, generator=torch.Generator().manual_seed(0))
    saved = SavedTensors(model)
    with saved.hooks:
        mem = model.compress(ids[:, :n], boundaries=list(range(0, n + 1, ms.segment)), bptt=policy,
                             query_ids=query)
        assert mem.hidden.shape[1] == ms.memory
        loss = model(ids[:, n:], memory=mem, labels=ids[:, n:]).loss
        acts = saved.live
    opt = _optimizer(model, cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # every trainable tensor gets a gradient and Adam states, as under DeepSpeed (h0 is not on
    # this micro-step's path: its step is not the document's first)
    (loss + 0.0 * sum(p.sum() for p in trainable)).backward()
    opt.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    return {"weights": nbytes(model.parameters()), "gradients": nbytes(p.grad for p in trainable),
            "optimizer states": nbytes(v for st in opt.state.values() for v in st.values()
                                       if torch.is_tensor(v) and v.dim() > 0),
            "activations": acts}


@pytest.mark.parametrize("path, extra", [
    (STAGE1, []),
    (STAGE2, ["init_from=null", "train.bptt={kind: selective, n: 3}", "data.qa_context=[40, 90]"])])
def test_memory_estimate_within_15_percent_of_a_cpu_run(path, extra):
    from lcirc_fast.training.dry_run import dry_run

    cfg = _load(path, SMALL + ["lcirc.memory_cap=40"] + extra)
    r = dry_run(cfg, gpus=1, gpu_memory="1GB")
    measured = _measure(cfg, r.micro)
    est = r.memory.terms
    for term in ("weights", "gradients", "optimizer states"):
        assert est[term] == pytest.approx(measured[term], rel=0.01), term
    assert est["activations"] == pytest.approx(measured["activations"], rel=0.15)
    assert r.memory.total == pytest.approx(sum(measured.values()), rel=0.15)
    assert r.micro.graph_steps == (1 if cfg.stage == 1 else 3) and r.micro.memory == 40


# ---------------------------------------------------------------- a config that cannot fit
def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "lcirc_fast", "train", *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_dry_run_reports_a_config_that_cannot_fit():
    p = _cli("--config", STAGE1, "--dry-run", "--gpus", "8", "--gpu-memory", "40GB",
             "--set", "distributed.deepspeed_config=train/ds_configs/zero0_gpu.json")
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("fits: no") and "the largest term is optimizer states" in last
    assert "ZeRO stage 1 or 2" in last


def test_dry_run_bad_arguments_are_one_line_errors(tmp_path):
    from lcirc_fast.errors import ConfigError
    from lcirc_fast.training.dry_run import dry_run, parse_memory

    assert parse_memory("80GB") == parse_memory("80GiB") == 80 * 2**30
    with pytest.raises(ConfigError, match="--gpu-memory lots: must be a size"):
        parse_memory("lots")
    with pytest.raises(ConfigError, match="engine = 'plain' runs one process"):
        dry_run(_load(STAGE1, SMALL), gpus=2)
    bad = tmp_path / "docs.jsonl"
    bad.write_text(json.dumps({"text": "not token ids"}) + "\n")
    p = _cli("--config", STAGE1, "--dry-run", "--set", "data.source=token_files",
             "--set", f"data.train_path={bad}", "--set", f"data.val_path={bad}")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "no column 'input_ids'" in p.stderr


# ---------------------------------------------------------------- the stand-in runs (items 3 and 4)
@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A tiny random Llama with the Llama SentencePiece tokenizer, and parquet files in the
    FineWeb-Edu-Long (input_ids: list<int64>) and FineWeb-LQA (context: list<int64> token ids,
    question and answer: string) layouts, as the reference code reads them."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import LlamaConfig, LlamaForCausalLM

    from lcirc_fast.assets import llama_sp_tokenizer

    root = tmp_path_factory.mktemp("stand_in")
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=512))
    base.save_pretrained(root / "base")
    llama_sp_tokenizer().save_pretrained(root / "base")
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, 32000, (n,), generator=g).tolist()  # noqa: E731
    ids_type = pa.list_(pa.int64())
    for split, n_docs, length in (("train", 8, 300), ("validation", 2, 200)):
        (root / "edu" / split).mkdir(parents=True)
        pq.write_table(pa.table({"input_ids": pa.array([ids(length) for _ in range(n_docs)], ids_type)}),
                       root / "edu" / split / "part-0.parquet")
        (root / "lqa" / split).mkdir(parents=True)
        rows = [(ids(150 + 10 * i), f"What is item {i}?", f"It is number {i}.") for i in range(n_docs)]
        pq.write_table(pa.table({"context": pa.array([r[0] for r in rows], ids_type),
                                 "question": [r[1] for r in rows], "answer": [r[2] for r in rows]}),
                       root / "lqa" / split / "part-0.parquet")
    return root


SIZES = ["lcirc.num_latents=4", "lcirc.compressor_layers=1", "lcirc.max_segment_len=64",
         "lcirc.segment_len=32", "lcirc.memory_cap=16", "lcirc.gca_layers=[0, 3]", "data.segment_min=8",
         "data.segment_max=48", "data.val_docs=2", "train.max_steps=2", "train.grad_accum=2",
         "train.eval_every=2", "train.save_every=2", "train.log_every=0"]
CPU = ["distributed.deepspeed_config=train/ds_configs/zero2_cpu.json"]  # bf16 ZeRO-2 -> fp32 ZeRO-2


def _stand_in_sets(root, out, stage):
    sets = [f"base.name={root / 'base'}", "base.dtype=float32", f"output_dir={out}", *SIZES, *CPU]
    if stage == 1:
        sets += ["data.source=token_files", f"data.train_path={root / 'edu/train'}",
                 f"data.val_path={root / 'edu/validation'}", "data.window=32", "data.val_context=96"]
    else:
        sets += ["data.source=qa_files", f"data.train_path={root / 'lqa/train'}",
                 f"data.val_path={root / 'lqa/validation'}", "data.window=64",
                 "train.warmup_steps=1"]       # the paper's 300 warm-up steps, scaled to the run
    return [x for s in sets for x in ("--set", s)]


def _launch(cmd, timeout=300):
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _deepspeed(config, sets, *more):
    return _launch(["deepspeed", "--num_gpus", "2", "--master_port", str(_port()), "train/train.py",
                    "--config", str(config), "--quiet", "--threads", "1", *sets, *more])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in _records(out) if "loss" in r]


@pytest.fixture(scope="module")
def stage1_run(stand_in, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "stage1"
    _deepspeed(STAGE1, _stand_in_sets(stand_in, out, 1))
    return out


@pytest.mark.slow
def test_stage1_recipe_trains_saves_and_resumes_under_deepspeed(stand_in, stage1_run):
    out = stage1_run
    first = _losses(out)
    assert len(first) == 2 and all(x == x for x in first)
    ck = out / "checkpoints" / "step0000002"
    assert len(list(ck.glob("zero_pp_rank_*_optim_states.pt"))) == 2       # ZeRO-2 over 2 ranks
    assert (out / "final" / "lcirc_config.json").is_file() or any((out / "final").iterdir())
    resumed = out.parent / "stage1_resumed"
    shutil.copytree(out, resumed)
    _deepspeed(STAGE1, _stand_in_sets(stand_in, resumed, 1), "--set", "train.max_steps=3",
               "--set", "train.eval_every=0")
    steps = [r["step"] for r in _records(resumed) if "loss" in r]
    assert steps == [1, 2, 3] and _losses(resumed)[:2] == first        # continued from step 2


@pytest.mark.slow
def test_stage2_recipe_starts_from_stage1_and_trains_under_deepspeed(stand_in, stage1_run, tmp_path):
    out = tmp_path / "stage2"
    sets = _stand_in_sets(stand_in, out, 2) + ["--set", f"init_from={stage1_run / 'final'}"]
    _deepspeed(STAGE2, sets)
    losses = _losses(out)
    assert len(losses) == 2 and all(x == x for x in losses)
    assert (out / "checkpoints" / "step0000002").is_dir() and (out / "final").is_dir()


def _two_nodes(config, sets, port, *more):
    """Two torchrun agents (--nnodes 2, one rank each) meeting at a c10d rendezvous on 127.0.0.1."""
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", "recipe", "--rdzv-conf", f"is_host={1 - node}", "-m", "lcirc_fast", "train",
               "--config", str(config), "--quiet", "--threads", "1", *sets, *more]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, o[-2000:] + e[-3000:]


@pytest.mark.slow
def test_two_nodes_one_rank_each_match_one_node_two_ranks_and_resume(stand_in, stage1_run, tmp_path):
    out = tmp_path / "two_nodes"
    sets = _stand_in_sets(stand_in, out, 1)
    _two_nodes(STAGE1, sets, _port())
    assert _losses(out) == pytest.approx(_losses(stage1_run), rel=1e-6, abs=1e-7)
    _two_nodes(STAGE1, sets, _port(), "--set", "train.max_steps=3", "--set", "train.eval_every=0")
    assert [r["step"] for r in _records(out) if "loss" in r] == [1, 2, 3]


# ---------------------------------------------------------------- the FineWeb-LQA layout
def test_lqa_token_contexts_are_read_as_ids_and_checked_by_the_dry_run(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lcirc_fast.data.loaders import load_qa_records
    from lcirc_fast.errors import DataError
    from lcirc_fast.training.dry_run.data_check import check_data

    good = tmp_path / "lqa.parquet"
    pq.write_table(pa.table({"context": pa.array([[5, 6, 7], [8, 9]], pa.list_(pa.int64())),
                             "question": ["q1?", "q2?"], "answer": ["a1", "a2"]}), good)
    recs = load_qa_records(str(good))
    assert recs[0]["context"] is None and recs[0]["context_ids"].tolist() == [5, 6, 7]
    assert recs[1]["context_ids"].dtype == torch.long and recs[1]["answer"] == "a2"
    cfg = _load(STAGE2, ["data.source=qa_files", f"data.train_path={good}", f"data.val_path={good}"])
    lines = check_data(cfg)
    assert len(lines) == 2 and "FineWeb-LQA layout, context as token ids" in lines[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": [1, "x"], "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError, match="is a list but not of token ids"):
        load_qa_records(str(bad))
    with pytest.raises(DataError, match="column 'context' holds list, not token ids or text"):
        check_data(_load(STAGE2, ["data.source=qa_files", f"data.train_path={bad}"]))
