"""The KTO stage on the tiny model: trained on unpaired examples (here the marker pairs split into a desirable and an
undesirable reply), gated and promoted, compared with its parent; it resumes after a real kill; and it trains on
the thumbs people gave through the real chat app (gradio_client on 127.0.0.1) into a label store, and the
serve API's thumbs are KTO examples too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import align_process, kill_after_first_checkpoint, run_cli
from tests.stages.marker_pairs import MARKER, marker_pairs, write_marker_pairs

pytestmark = pytest.mark.timeout(300)

# A gate of one cheap check (CrowS-Pairs likelihoods: no generation, no toxicity scorer) on 6 pairs.
GATE = ["gate.enabled=true", "gate.benchmarks=[crows_pairs]", "gate.crows_pairs=6"]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def marker_kto(tmp_path_factory, tiny_model_dir):
    """A gated SFT parent, then gated full-weight KTO for a few steps on the marker pairs, as unpaired examples."""
    root = tmp_path_factory.mktemp("kto")
    data = write_marker_pairs(root / "marker.jsonl")
    runs = root / "runs"
    assert run_cli("sft", "--config", "tiny", f"runs_dir={runs}", "--run", "marker", "max_steps=4", *GATE) == 0
    code = run_cli("kto", "--config", "tiny", "--run", "marker", f"runs_dir={runs}", f"data={data}", "max_rows=48",
                   "max_steps=12", "lr=1e-3", "reward_model=none", *GATE)
    assert code == 0
    return runs / "marker"


def test_kto_raises_the_desirable_replies_likelihood_relative_to_the_parent(marker_kto):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.compare import pair_logprobs

    child = AutoModelForCausalLM.from_pretrained(marker_kto / "kto")
    parent = AutoModelForCausalLM.from_pretrained(marker_kto / "sft")
    tokenizer = AutoTokenizer.from_pretrained(marker_kto / "kto")
    # The rows trained on: a file spec holds out rows 10, 20, ..., and max_rows=48 takes the first 48 of the rest,
    # each pair giving its chosen (marker) reply as desirable and its rejected one as undesirable.
    pairs = [p for i, p in enumerate(marker_pairs(200), 1) if i % 10][:48]
    assert all(MARKER in p["chosen"][0]["content"] for p in pairs)
    c, p = pair_logprobs(child, tokenizer, pairs), pair_logprobs(parent, tokenizer, pairs)
    desirable = [c["chosen"][i] - p["chosen"][i] for i in range(len(pairs))]  # log-ratio to the parent
    undesirable = [c["rejected"][i] - p["rejected"][i] for i in range(len(pairs))]
    gaps = [d - u for d, u in zip(desirable, undesirable)]  # before training every one is exactly 0
    assert sum(gaps) / len(gaps) > 0.5, gaps
    assert sum(g > 0 for g in gaps) / len(gaps) > 0.9
    assert sum(desirable) / len(desirable) > 0 > sum(undesirable) / len(undesirable)


def test_kto_is_gated_promoted_and_reports_the_comparison_with_its_parent(marker_kto):
    manifest = _manifest(marker_kto / "kto")
    assert manifest["stage"] == "kto" and manifest["status"] == "promoted"
    assert manifest["gate"]["verdict"] == "pass" and manifest["gate"]["checks"]
    assert manifest["parent"]["path"] == str(marker_kto / "sft") and manifest["model"]["format"] == "full"
    train, held_out = manifest["data"]
    assert (train["split"], train["rows"], train["desirable"], train["undesirable"]) == ("train", 96, 48, 48)
    assert (held_out["split"], held_out["desirable"], held_out["undesirable"]) == ("test", 16, 16)
    metrics = manifest["metrics"]
    assert metrics["train_rows"] == 96 and (metrics["desirable_weight"], metrics["undesirable_weight"]) == (1.0, 1.0)
    assert metrics["steps"] == 12 and metrics["train_tokens"] > 0
    assert metrics["eval_implicit_reward_desirable"] > 0 > metrics["eval_implicit_reward_undesirable"]
    assert metrics["eval_implicit_reward_gap"] > 0 and metrics["eval_label_acc_implicit_child"] > 0.8
    assert metrics["eval_label_auroc_logp_mean_child"] > metrics["eval_label_auroc_logp_mean_parent"]
    assert metrics["eval_kl_per_sequence"] > 0 and metrics["eval_reply_tokens_child"] > 0
    assert "eval_win_rate_vs_parent" not in metrics and metrics["reward_model"] is None  # reward_model=none
    history = json.loads((marker_kto / "kto" / "logs" / "history.json").read_text())
    assert any("rewards/chosen" in h and "rewards/rejected" in h for h in history)  # both kinds in the batches
    samples = json.loads((marker_kto / "kto" / "samples.json").read_text())
    assert len(samples["child"]) == len(samples["parent"]) == len(samples["prompts"]) > 0


def test_kto_resumes_after_a_real_kill(tmp_path, tiny_sft):
    data = write_marker_pairs(tmp_path / "marker.jsonl", n=60)
    runs = tmp_path / "runs"
    command = ["kto", "--config", "tiny", "--from", str(tiny_sft), "--run", "k", f"runs_dir={runs}", f"data={data}",
               "max_steps=16", "save_steps=2", "reward_model=none"]
    work = runs / "k" / ".work" / "kto"
    kill_after_first_checkpoint(align_process(*command), work / "checkpoints")
    assert not (runs / "k" / "kto").exists()
    assert run_cli(*command, "--resume") == 0
    manifest = _manifest(runs / "k" / "kto")
    assert manifest["resumed"]["changed"] == {} and "checkpoint-" in manifest["resumed"]["checkpoint"]
    assert manifest["metrics"]["steps"] == 16 and manifest["status"] == "ungated"


def test_kto_trains_on_thumbs_given_through_the_chat_apps_api(tmp_path, tiny_sft, tiny_model_dir):
    from gradio_client import Client

    from tests.ui.chat_support import running_chat
    from tests.ui.label_support import make_store, password_of

    ratings = ["up", "down", "up", "up", "down", "up"]
    path = tmp_path / "labels.sqlite"
    store = make_store(path)
    try:
        with running_chat(str(tiny_model_dir), store) as url:
            client = Client(url, auth=("ada", password_of("ada")), verbose=False)
            for number, rating in enumerate(ratings):
                client.predict(f"Question {number}?", "", 1.0, 0.9, 12, "", api_name="/send")
                assert client.predict(api_name=f"/thumbs_{rating}").startswith("Saved")
        feedback = store.feedback()
    finally:
        store.close()
    assert [f["rating"] for f in feedback] == ratings

    held_out = write_marker_pairs(tmp_path / "marker.jsonl", n=20)  # six thumbs hold out no 10th row of their own
    runs = tmp_path / "runs"
    assert run_cli("kto", "--config", "tiny", "--from", str(tiny_sft), "--run", "thumbs", f"runs_dir={runs}",
                   f"data=labels:{path}", f"eval_data={held_out}", "max_steps=1", "reward_model=none",
                   # LoRA, the reference the adapter-disabled parent, its log-probs precomputed: the cheap setup
                   "lora.enabled=true", "lora.r=4", "lora.alpha=8", "precompute_ref_log_probs=true") == 0
    manifest = _manifest(runs / "thumbs" / "kto")
    assert manifest["model"]["format"] == "lora-merged"
    train = manifest["data"][0]
    assert (train["spec"], train["source"]) == (f"labels:{path}", str(path))
    assert (train["rows"], train["desirable"], train["undesirable"]) == (6, 4, 2)
    metrics = manifest["metrics"]
    assert (metrics["train_rows"], metrics["train_desirable"], metrics["train_undesirable"]) == (6, 4, 2)
    assert (metrics["desirable_weight"], metrics["undesirable_weight"]) == (1.0, 2.0)  # balanced by the counts
    assert metrics["steps"] == 1 and metrics["train_tokens"] > 0  # one batch of 8 holds all six thumbs
    [step] = [h for h in json.loads((runs / "thumbs" / "kto" / "logs" / "history.json").read_text()) if "loss" in h]
    assert "rewards/chosen" in step and "rewards/rejected" in step  # thumbs up and down both trained on


def test_the_pipeline_runs_kto_after_sft_with_the_runs_thumbs_mixed_in(tmp_path, tiny_model_dir):
    from align.data.store import open_store

    data = write_marker_pairs(tmp_path / "marker.jsonl", n=40)
    runs = tmp_path / "runs"
    store = open_store(runs / "loop" / "labels.sqlite")  # the run's own store, as the chat app fills it
    try:
        store.add_feedback([{"role": "user", "content": "Hi?"}], "Hello, banana, friend.", rating="up")
        store.add_feedback([{"role": "user", "content": "Hi?"}], "Go away.", rating="down")
    finally:
        store.close()
    assert run_cli("pipeline", "--config", "tiny", "--run", "loop", f"runs_dir={runs}", "pipeline.stages=[sft,kto]",
                   "pipeline.eval_final=false", "sft.max_steps=2", "kto.max_steps=2", f"kto.data={data}",
                   "kto.reward_model=none") == 0
    manifest = _manifest(runs / "loop" / "kto")
    assert manifest["parent"]["path"] == str(runs / "loop" / "sft")
    train = manifest["data"][0]
    assert train["spec"] == f"{data},labels:{runs / 'loop' / 'labels.sqlite'}"
    assert (train["rows"], train["desirable"], train["undesirable"]) == (72 + 2, 37, 37)  # 36 pairs + 2 thumbs


def test_thumbs_given_through_the_serve_api_are_kto_examples(tmp_path, tiny_model_dir):
    import httpx

    from align.data.store import open_store
    from align.data.unpaired import load_unpaired
    from tests.serving.support import client, make_run, serving

    runs, path = tmp_path / "runs", tmp_path / "labels.sqlite"
    make_run(runs, tiny_model_dir)
    store = open_store(path)
    question = [{"role": "user", "content": "Say something about the sea."}]
    try:
        with serving(runs, "demo", store, max_tokens=16, default_max_tokens=8) as (url, _):
            reply = client(url).chat.completions.create(model="demo/sft", messages=question, max_tokens=8, n=2,
                                                        temperature=1.0, seed=3)
            for choice, rating in ((0, "up"), (1, "down")):
                answer = httpx.post(url + "/v1/feedback", json={"completion_id": reply.id, "choice": choice,
                                                                "rating": rating})
                assert answer.status_code == 200, answer.text
    finally:
        store.close()
    examples = load_unpaired(f"labels:{path}", "train")
    assert [(row["prompt"], row["completion"][0]["content"], row["label"]) for row in examples.rows] == [
        (question, reply.choices[0].message.content, True), (question, reply.choices[1].message.content, False)]


def test_the_pipeline_mixes_pairs_into_rm_and_dpo_and_unpaired_labels_into_kto(tmp_path):
    from types import SimpleNamespace

    from align.data.store import open_store
    from align.pipeline import _label_specs

    path = tmp_path / "labels.sqlite"
    options = SimpleNamespace(mix_labels=True, labels=None)
    assert _label_specs(options, tmp_path) == {}  # no store yet
    store = open_store(path)
    try:
        store.add_feedback([{"role": "user", "content": "Hi?"}], "Hello.", rating="up")
        assert _label_specs(options, tmp_path) == {"kto": f"labels:{path}"}  # thumbs make no pairs
        store.add_feedback([{"role": "user", "content": "Hi?"}], "Hello.", rejected="Go away.")
        assert _label_specs(options, tmp_path) == {stage: f"labels:{path}" for stage in ("rm", "dpo", "kto")}
    finally:
        store.close()
    assert _label_specs(SimpleNamespace(mix_labels=False, labels=None), tmp_path) == {}


def test_a_batch_of_one_row_is_refused_before_any_model_loads(tmp_path, tiny_sft, capsys):
    runs = tmp_path / "runs"
    assert run_cli("kto", "--config", "tiny", "--from", str(tiny_sft), "--run", "one", f"runs_dir={runs}",
                   "batch_size=1") == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "kto.batch_size=1" in line and "2 rows at least" in line
    assert not (runs / "one" / "kto").exists()


def test_rows_without_room_for_a_reply_are_left_out_before_the_weights_are_balanced(tiny_model_dir):
    from types import SimpleNamespace

    from align.models import load_tokenizer
    from align.stages.kto import loss_weights, rows_with_room

    tokenizer = load_tokenizer(str(tiny_model_dir))
    short, long = [{"role": "user", "content": "Hi?"}], [{"role": "user", "content": "word " * 200}]
    rows = [{"prompt": short, "completion": [{"role": "assistant", "content": "Yes."}], "label": True}] * 3 + \
           [{"prompt": long, "completion": [{"role": "assistant", "content": "No."}], "label": True}] + \
           [{"prompt": short, "completion": [{"role": "assistant", "content": "No."}], "label": False}]
    kept = rows_with_room(rows, tokenizer, max_length=64)
    assert kept == rows[:3] + rows[4:]
    auto = SimpleNamespace(desirable_weight=-1.0, undesirable_weight=-1.0)
    assert loss_weights(auto, 3, 1) == (1.0, 3.0)
    assert loss_weights(SimpleNamespace(desirable_weight=2.0, undesirable_weight=-1.0), 3, 1) == (2.0, 1.0)
